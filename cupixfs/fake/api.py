"""The fake Cupix REST API (``/api/v1``), following the published pages in shared/cupix-api.

Pure request -> :class:`Response` logic: no sockets, no faults, no stats. What it enforces is
what a client must get right against the real service: the auth header (or query) on every
call, a non-empty ``fields`` on list/get/meta/resources calls, pagination (``page``/``per_page``,
``next_page`` null on the last page), 404 for unknown ids, 400 for a group's download, and
302 redirects to short-lived signed blob URLs.

The calls the vendor's notes add (``vendor-openapi-notes.md``) are served as described there:
``GET /captures`` and ``/captures/{id}``, ``/facilities`` (whose pagination carries only
``total_entries`` and ``total_pages``, as in the Project example) and ``/facilities/{key}``,
``/levels?facility_key=``, ``/me``. Nested objects carry only ids (``{"id": 20}``) or are
empty (``{}``); errors are the ``ErrorResponse`` body with its ``message``. Pointclouds carry
``filesize`` and resources ``size``, right for most files and, where the sample data says so,
wrong, absent or not a positive integer.

Deliberate choices where the pages are silent (documented so a client author is not surprised):
``per_page`` is capped at 100; an empty list reports ``total_pages`` 0; ``GET /videos`` without
``capture_id`` is a 400, and so is ``GET /levels`` without ``facility_key``; the resources list
and downloads of a *group* are 400; unknown names in ``fields`` are ignored; ``record_id``
matches a record's uploaded scans *and* the 3d_reconstructed pointclouds of its captures
(narrow it with ``pointcloud_type``).

Two behaviours a test can switch (``POST /_fake/api``): routes that answer a fixed status
(a token without the permission, or a deployment without the endpoint), and unknown ids
that answer 200 with an empty list (or no data) instead of 404.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from .dataset import Dataset
from .responses import Headers, Response, api_error, json_response

__all__ = ["MAX_PER_PAGE", "CupixApi"]

MAX_PER_PAGE = 100
POINTCLOUD_TYPES = ("3d_reconstructed", "uploaded", "all")
VIDEO_FIELDS = ("id", "name", "state", "created_at", "updated_at")
RESOURCE_FIELDS = ("id", "name", "kind", "created_at", "updated_at")
#: Statuses a route can be made to answer: refused (401, 403), or missing (404, 405, 400).
REFUSALS = (400, 401, 403, 404, 405, 500, 503)
_ABSENT = object()

#: ``(blob_id, file name) -> absolute signed URL``; supplied by the server, which knows its
#: address, the signing key and the current URL lifetime.
SignUrl = Callable[[str, str], str]


class _HttpError(Exception):
    """Raised inside a route to answer with a JSON error and stop."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class _Route:
    template: str
    pattern: re.Pattern[str]
    handler: str


def _route(template: str, handler: str) -> _Route:
    regex = (
        re.escape(template)
        .replace(r"\{id\}", r"(?P<id>[0-9]+)")
        .replace(r"\{kind\}", r"(?P<kind>[^/]+)")
        .replace(r"\{key\}", r"(?P<key>[^/]+)")
    )
    return _Route(f"GET {template}", re.compile(f"^{regex}$"), handler)


ROUTES = (
    _route("/videos", "list_videos"),
    _route("/videos/{id}/download", "download_video"),
    _route("/pointclouds", "list_pointclouds"),
    _route("/pointclouds/{id}", "get_pointcloud"),
    _route("/pointclouds/{id}/meta", "get_meta"),
    _route("/pointclouds/{id}/download", "download_pointcloud"),
    _route("/pointclouds/{id}/resources", "list_resources"),
    _route("/pointclouds/{id}/resources/{kind}/download", "download_resource"),
    _route("/captures", "list_captures"),
    _route("/captures/{id}", "get_capture"),
    _route("/facilities", "list_facilities"),
    _route("/facilities/{key}", "get_facility"),
    _route("/levels", "list_levels"),
    _route("/me", "get_me"),
)
TEMPLATES = frozenset(route.template for route in ROUTES)


class CupixApi:
    """Routes ``/api/v1/...`` requests against a :class:`Dataset`.

    ``tokens`` is read on every request (the server swaps the set to revoke tokens);
    ``default_per_page`` plays the role of the service's page size (30 on the real one).
    """

    prefix = "/api/v1"

    def __init__(
        self,
        dataset: Dataset,
        tokens: Callable[[], frozenset[str]],
        sign_url: SignUrl,
        default_per_page: int = 30,
    ) -> None:
        self.dataset = dataset
        self.tokens = tokens
        self.sign_url = sign_url
        self.default_per_page = default_per_page
        self._lock = threading.Lock()
        self._refused: dict[str, int] = {}
        self._unknown_ids_empty = False

    # --- the switches a test turns -----------------------------------------------------------

    def behaviour(self) -> dict[str, Any]:
        """The switches, as ``GET /_fake/api`` shows them."""
        with self._lock:
            return {
                "refuse": dict(self._refused),
                "unknown_ids": "empty" if self._unknown_ids_empty else "404",
            }

    def configure(self, refuse: Any = None, unknown_ids: Any = None) -> dict[str, Any]:
        """Set the switches (all or nothing on a bad value).

        *refuse* maps route templates (``"GET /facilities"``) to the status they answer
        from now on (replacing the previous map); *unknown_ids* is ``"404"`` or ``"empty"``.
        """
        if refuse is not None:
            if not isinstance(refuse, dict):
                raise ValueError('refuse must be {"GET /route": status, ...}')
            for template, status in refuse.items():
                if template not in TEMPLATES:
                    raise ValueError(
                        f"no route {template!r} (routes: {', '.join(sorted(TEMPLATES))})"
                    )
                if status not in REFUSALS:
                    raise ValueError(f"cannot refuse with {status!r} (choose from {REFUSALS})")
        if unknown_ids is not None and unknown_ids not in ("404", "empty"):
            raise ValueError('unknown_ids must be "404" or "empty"')
        with self._lock:
            if refuse is not None:
                self._refused = dict(refuse)
            if unknown_ids is not None:
                self._unknown_ids_empty = unknown_ids == "empty"
        return self.behaviour()

    def reset(self) -> None:
        with self._lock:
            self._refused = {}
            self._unknown_ids_empty = False

    def _refusal(self, template: str) -> int | None:
        with self._lock:
            return self._refused.get(template)

    def _unknown(self, what: str) -> None:
        """An unknown id: 404, or (switched) nothing raised, and the caller answers empty."""
        with self._lock:
            empty = self._unknown_ids_empty
        if not empty:
            raise _HttpError(404, f"{what} not found")

    def _match(self, path: str) -> tuple[_Route, re.Match[str]] | None:
        if not path.startswith(self.prefix + "/"):
            return None
        sub = path[len(self.prefix) :].rstrip("/") or "/"
        for route in ROUTES:
            match = route.pattern.match(sub)
            if match is not None:
                return route, match
        return None

    def route_template(self, path: str) -> str:
        """``"GET /videos/{id}/download"`` style name of the route ``path`` hits (for stats)."""
        found = self._match(path)
        return found[0].template if found else "unknown"

    def handle(self, method: str, path: str, query: str, headers: Headers) -> tuple[str, Response]:
        """Answer one API request; returns the matched route template (for stats) too."""
        params = parse_qs(query, keep_blank_values=True)
        found = self._match(path)
        if found is not None:
            route, match = found
            if method not in ("GET", "HEAD"):
                return route.template, api_error(405, f"method {method} not allowed")
            try:
                self._authenticate(params, headers)
                refused = self._refusal(route.template)
                if refused is not None:
                    raise _HttpError(refused, f"{route.template} is not available to this token")
                handler = getattr(self, route.handler)
                return route.template, handler(params, **match.groupdict())
            except _HttpError as e:
                return route.template, api_error(e.status, e.message)
        return "unknown", api_error(404, f"no route for {method} {path}")

    # --- request helpers -----------------------------------------------------------------

    def _authenticate(self, params: dict[str, list[str]], headers: Headers) -> None:
        token = headers.get("X-CUPIX-AUTH")
        if token is None and params.get("x-cupix-auth"):
            token = params["x-cupix-auth"][0]
        if not token:
            raise _HttpError(401, "missing X-CUPIX-AUTH token")
        if token not in self.tokens():
            raise _HttpError(401, "invalid or revoked token")

    @staticmethod
    def _fields(params: dict[str, list[str]]) -> list[str]:
        """The requested attribute names: comma separated, spaces tolerated, may repeat."""
        raw = params.get("fields", []) + params.get("fields[]", [])
        names = [n.strip() for value in raw for n in value.split(",")]
        names = [n for n in names if n]
        if not names:
            raise _HttpError(400, "fields is required")
        return names

    @staticmethod
    def _int_param(params: dict[str, list[str]], name: str) -> int | None:
        values = params.get(name)
        if not values or values[0] == "":
            return None
        try:
            return int(values[0])
        except ValueError:
            raise _HttpError(400, f"{name} must be an integer") from None

    def _page(self, params: dict[str, list[str]]) -> tuple[int, int]:
        page = self._int_param(params, "page")
        per_page = self._int_param(params, "per_page")
        page = 1 if page is None else page
        per_page = self.default_per_page if per_page is None else per_page
        if page < 1 or per_page < 1:
            raise _HttpError(400, "page and per_page must be >= 1")
        return page, min(per_page, MAX_PER_PAGE)

    @staticmethod
    def _select(attributes: dict[str, Any], fields: list[str]) -> dict[str, Any]:
        """Only the requested attributes, ``id`` always first."""
        out = {"id": attributes["id"]}
        for name in fields:
            if name in attributes:
                out[name] = attributes[name]
        return out

    @staticmethod
    def _item(kind: str, attributes: dict[str, Any]) -> dict[str, Any]:
        return {"id": str(attributes["id"]), "type": kind, "attributes": attributes}

    def _list(
        self,
        params: dict[str, list[str]],
        objects: list[Any],
        item: Callable[[Any], dict[str, Any]],
        totals_only: bool = False,
    ) -> Response:
        """One page of *objects*, each made into an item by *item* (only the page's are).

        *totals_only* gives the pagination only ``total_entries`` and ``total_pages``, as
        the vendor's Project example shows.
        """
        page, per_page = self._page(params)
        total = len(objects)
        total_pages = math.ceil(total / per_page)
        data = [item(o) for o in objects[(page - 1) * per_page : page * per_page]]
        pagination: dict[str, Any] = {"total_entries": total, "total_pages": total_pages}
        if not totals_only:
            pagination.update(
                per_page=per_page,
                previous_page=page - 1 if page > 1 else None,
                current_page=page,
                next_page=page + 1 if page < total_pages else None,
            )
        return json_response(
            200, {"result": {"data": data, "pagination": pagination}, "session": None}
        )

    @staticmethod
    def _one(data: dict[str, Any] | None) -> Response:
        return json_response(200, {"result": {"data": data}, "session": None})

    def _redirect(self, blob: dict[str, Any]) -> Response:
        location = self.sign_url(blob["blob_id"], blob["name"])
        return Response(302, b"", [("Location", location)])

    def _pointcloud(self, pc_id: str) -> dict[str, Any]:
        pc = self.dataset.pointclouds.get(int(pc_id))
        if pc is None:
            raise _HttpError(404, f"pointcloud {pc_id} not found")
        return pc

    def _sub(self, pc_id: str, what: str) -> dict[str, Any]:
        pc = self._pointcloud(pc_id)
        if pc["attributes"]["kind"] != "sub":
            raise _HttpError(400, f"pointcloud {pc_id} is a group: {what} needs a sub pointcloud")
        return pc

    # --- routes ----------------------------------------------------------------------------

    def list_videos(self, params: dict[str, list[str]]) -> Response:
        fields = self._fields(params)
        capture_id = self._int_param(params, "capture_id")
        if capture_id is None:
            raise _HttpError(400, "capture_id is required")
        if capture_id not in self.dataset.captures:
            self._unknown(f"capture {capture_id}")
            return self._list(params, [], dict)
        return self._list(
            params,
            self.dataset.videos_of_capture(capture_id),
            lambda v: self._item("video", self._select(v["attributes"], fields)),
        )

    def download_video(self, params: dict[str, list[str]], id: str) -> Response:
        video = self.dataset.videos.get(int(id))
        if video is None:
            raise _HttpError(404, f"video {id} not found")
        return self._redirect(video["file"])

    def list_pointclouds(self, params: dict[str, list[str]]) -> Response:
        fields = self._fields(params)
        filters = {
            "capture_id": (self._int_param(params, "capture_id"), self.dataset.captures, "capture"),
            "cluster_id": (self._int_param(params, "cluster_id"), self.dataset.clusters, "cluster"),
            "record_id": (self._int_param(params, "record_id"), self.dataset.records, "record"),
        }
        kind = (params.get("pointcloud_type") or ["all"])[0] or "all"
        if kind not in POINTCLOUD_TYPES:
            raise _HttpError(400, f"pointcloud_type must be one of {', '.join(POINTCLOUD_TYPES)}")
        for wanted, known, label in filters.values():
            if wanted is not None and wanted not in known:
                self._unknown(f"{label} {wanted}")
                return self._list(params, [], dict)
        matching = [
            pc
            for pc in self.dataset.model["pointclouds"]
            if not any(v is not None and pc[key] != v for key, (v, _, _) in filters.items())
            and (kind == "all" or pc["attributes"]["pointcloud_type"] == kind)
        ]
        return self._list(params, matching, lambda pc: self._pointcloud_item(pc, fields))

    def _pointcloud_item(self, pc: dict[str, Any], fields: list[str]) -> dict[str, Any]:
        attrs = pc["attributes"]
        if "filesize" in fields:
            cpc = pc["files"]["cpc"]
            stated = _stated(pc, cpc["size"]) if cpc is not None else None
            attrs = dict(attrs) if stated is _ABSENT else dict(attrs, filesize=stated)
        return self._item("pointcloud", self._select(attrs, fields))

    def get_pointcloud(self, params: dict[str, list[str]], id: str) -> Response:
        fields = self._fields(params)
        return self._one(self._pointcloud_item(self._pointcloud(id), fields))

    def get_meta(self, params: dict[str, list[str]], id: str) -> Response:
        self._fields(params)
        pc = self._pointcloud(id)
        return json_response(
            200, {"result": pc["attributes"]["meta"], "session": None, "message": None}
        )

    def download_pointcloud(self, params: dict[str, list[str]], id: str) -> Response:
        pc = self._sub(id, "download")
        return self._redirect(pc["files"]["cpc"])

    def list_resources(self, params: dict[str, list[str]], id: str) -> Response:
        fields = self._fields(params)
        pc = self._sub(id, "resources")
        data = []
        for res in pc["resources"]:
            attrs = {k: res[k] for k in RESOURCE_FIELDS}
            blob = pc["files"].get(res["file"]) if res["file"] else None
            stated = _stated(pc, blob["size"] if blob is not None else 1_234)
            if stated is not _ABSENT:
                attrs["size"] = stated
            data.append(self._item("resource", self._select(attrs, fields)))
        return json_response(200, {"result": {"data": data, "pagination": None}, "session": None})

    def download_resource(self, params: dict[str, list[str]], id: str, kind: str) -> Response:
        if kind not in ("mesh", "ply"):
            raise _HttpError(400, "kind must be mesh or ply")
        pc = self._sub(id, "resource download")
        blob = pc["files"].get(kind)
        if blob is None:
            raise _HttpError(404, f"pointcloud {id} has no {kind}")
        return self._redirect(blob)

    # --- captures, projects, levels, the user ---------------------------------------------------

    def _capture_item(self, capture: dict[str, Any], fields: list[str]) -> dict[str, Any]:
        """A capture as the API shows it: its project, level and record as bare ids."""

        def ref(value: int | None) -> dict[str, Any]:
            return {"id": value} if value is not None else {}

        attrs = {
            "id": capture["id"],
            "name": capture["name"],
            "state": capture.get("state", "done"),
            "facility": ref(capture.get("facility_id")),
            "level": ref(capture.get("level_id")),
            "record": ref(capture.get("record_id")),
            "captured_at": capture.get("captured_at"),
            "created_at": capture.get("created_at"),
            "updated_at": capture.get("updated_at"),
            "panos_count": 0,
            "video_length": None,
        }
        return self._item("capture", self._select(attrs, fields))

    def list_captures(self, params: dict[str, list[str]]) -> Response:
        fields = self._fields(params)
        record_id = self._int_param(params, "record_id")
        query = ((params.get("q") or [""])[0]).strip().lower()
        matching = [
            c
            for c in self.dataset.captures.values()
            if (record_id is None or c.get("record_id") == record_id)
            and (not query or query in c["name"].lower())
        ]
        return self._list(params, matching, lambda c: self._capture_item(c, fields))

    def get_capture(self, params: dict[str, list[str]], id: str) -> Response:
        fields = self._fields(params)
        capture = self.dataset.captures.get(int(id))
        if capture is None:
            self._unknown(f"capture {id}")
            return self._one(None)
        return self._one(self._capture_item(capture, fields))

    def _facility_item(self, facility: dict[str, Any], fields: list[str]) -> dict[str, Any]:
        levels = self.dataset.levels_of(facility["id"])
        attrs = {
            "id": facility["id"],
            "key": facility["key"],
            "name": facility["name"],
            "address": None,
            "created_at": facility["created_at"],
            "updated_at": facility["updated_at"],
            "last_captured_at": None,
            "records_count": 0,
            "levels_count": len(levels),
        }
        return self._item("facility", self._select(attrs, fields))

    def list_facilities(self, params: dict[str, list[str]]) -> Response:
        fields = self._fields(params)
        query = ((params.get("q") or [""])[0]).strip().lower()
        matching = [
            f for f in self.dataset.facilities.values() if not query or query in f["name"].lower()
        ]
        return self._list(
            params, matching, lambda f: self._facility_item(f, fields), totals_only=True
        )

    def get_facility(self, params: dict[str, list[str]], key: str) -> Response:
        fields = self._fields(params)
        facility = self.dataset.facility_keys.get(key)
        if facility is None:
            raise _HttpError(404, f"facility {key} not found")
        return self._one(self._facility_item(facility, fields))

    def list_levels(self, params: dict[str, list[str]]) -> Response:
        fields = self._fields(params)
        key = (params.get("facility_key") or [""])[0]
        if not key:
            raise _HttpError(400, "facility_key is required")
        facility = self.dataset.facility_keys.get(key)
        if facility is None:
            raise _HttpError(404, f"facility {key} not found")

        def item(level: dict[str, Any]) -> dict[str, Any]:
            captures = [
                c for c in self.dataset.captures.values() if c.get("level_id") == level["id"]
            ]
            attrs = dict(level, captures_count=len(captures), pointclouds_count=0)
            attrs.pop("facility_id")
            return self._item("level", self._select(attrs, fields))

        return self._list(params, self.dataset.levels_of(facility["id"]), item)

    def get_me(self, params: dict[str, list[str]]) -> Response:
        fields = self._fields(params)
        attrs = {"id": 1, "email": "fake.user@example.com", "name": "Fake User"}
        return self._one(self._item("user", self._select(attrs, fields)))


def _stated(pc: dict[str, Any], size: int) -> Any:
    """A file size as this sub's API states it (see ``STATED_SIZES`` in the sample data);
    ``_ABSENT`` when the field is left out altogether."""
    return {
        "true": size,
        "wrong": size + 4_099,
        "short": max(1, size // 2),
        "missing": _ABSENT,
        "null": None,
        "zero": 0,
        "negative": -size,
        "text": f"{size / 1e6:.2f} MB",
        "fraction": size + 0.5,
    }[pc.get("stated_size", "true")]
