"""The fake Cupix REST API (``/api/v1``), following the published pages in shared/cupix-api.

Pure request -> :class:`Response` logic: no sockets, no faults, no stats. What it enforces is
what a client must get right against the real service: the auth header (or query) on every
call, a non-empty ``fields`` on list/get/meta/resources calls, pagination (``page``/``per_page``,
``next_page`` null on the last page), 404 for unknown ids, 400 for a group's download, and
302 redirects to short-lived signed blob URLs.

Deliberate choices where the pages are silent (documented so a client author is not surprised):
``per_page`` is capped at 100; an empty list reports ``total_pages`` 0; ``GET /videos`` without
``capture_id`` is a 400; the resources list and downloads of a *group* are 400; unknown names
in ``fields`` are ignored; ``record_id`` matches a record's uploaded scans *and* the
3d_reconstructed pointclouds of its captures (narrow it with ``pointcloud_type``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from .dataset import Dataset
from .responses import Headers, Response, json_error, json_response

__all__ = ["MAX_PER_PAGE", "CupixApi"]

MAX_PER_PAGE = 100
POINTCLOUD_TYPES = ("3d_reconstructed", "uploaded", "all")
VIDEO_FIELDS = ("id", "name", "state", "created_at", "updated_at")
RESOURCE_FIELDS = ("id", "name", "kind", "created_at", "updated_at")

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
)


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
                return route.template, json_error(405, f"method {method} not allowed")
            try:
                self._authenticate(params, headers)
                handler = getattr(self, route.handler)
                return route.template, handler(params, **match.groupdict())
            except _HttpError as e:
                return route.template, json_error(e.status, e.message)
        return "unknown", json_error(404, f"no route for {method} {path}")

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

    def _list(self, params: dict[str, list[str]], items: list[dict[str, Any]]) -> Response:
        page, per_page = self._page(params)
        total = len(items)
        total_pages = math.ceil(total / per_page)
        data = items[(page - 1) * per_page : page * per_page]
        pagination = {
            "total_entries": total,
            "total_pages": total_pages,
            "per_page": per_page,
            "previous_page": page - 1 if page > 1 else None,
            "current_page": page,
            "next_page": page + 1 if page < total_pages else None,
        }
        return json_response(
            200, {"result": {"data": data, "pagination": pagination}, "session": None}
        )

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
            raise _HttpError(404, f"capture {capture_id} not found")
        items = [
            self._item("video", self._select(v["attributes"], fields))
            for v in self.dataset.videos_of_capture(capture_id)
        ]
        return self._list(params, items)

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
        for wanted, known, label in filters.values():
            if wanted is not None and wanted not in known:
                raise _HttpError(404, f"{label} {wanted} not found")
        kind = (params.get("pointcloud_type") or ["all"])[0] or "all"
        if kind not in POINTCLOUD_TYPES:
            raise _HttpError(400, f"pointcloud_type must be one of {', '.join(POINTCLOUD_TYPES)}")
        items = []
        for pc in self.dataset.model["pointclouds"]:
            if any(v is not None and pc[key] != v for key, (v, _, _) in filters.items()):
                continue
            if kind != "all" and pc["attributes"]["pointcloud_type"] != kind:
                continue
            items.append(self._item("pointcloud", self._select(pc["attributes"], fields)))
        return self._list(params, items)

    def get_pointcloud(self, params: dict[str, list[str]], id: str) -> Response:
        fields = self._fields(params)
        pc = self._pointcloud(id)
        data = self._item("pointcloud", self._select(pc["attributes"], fields))
        return json_response(200, {"result": {"data": data}, "session": None})

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
