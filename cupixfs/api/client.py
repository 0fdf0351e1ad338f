"""CupixClient: the Cupix REST API as typed async calls.

Owns auth, pagination, the envelope and status codes of ``../shared/cupix-api``;
returns `cupixfs.api.models` records and raises `cupixfs.core.errors` exceptions.
It never touches storage bytes: download calls only *resolve* the 302 to a
signed URL, which the data layer then reads.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any, Protocol, TypeVar
from urllib.parse import urljoin

import httpx
import trio

from cupixfs.api.models import (
    Capture,
    ClusterMember,
    Facility,
    Json,
    Level,
    Pointcloud,
    Resource,
    Video,
    error_message,
)
from cupixfs.api.regions import DEFAULT_REGION, api_url
from cupixfs.api.response_cache import ResponseCache
from cupixfs.core.errors import (
    AuthError,
    NotCached,
    NotFound,
    ProtocolError,
    Unavailable,
    unwrap,
)
from cupixfs.core.retry import Retryable, RetryPolicy, connection_failed, retrying

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_API_URL = api_url(DEFAULT_REGION)
# Each list call asks only for the fields its listing shows (the API requires `fields`).
VIDEO_FIELDS = "id,name,state,created_at,updated_at"
POINTCLOUD_FIELDS = (
    "id,name,state,kind,meta,cluster,parent,created_at,updated_at,"
    "pointcloud_type,mesh_uploaded_at,ply_uploaded_at,filesize"
)
#: What ``/clusters`` needs of every pointcloud of the account: not its meta.
CLUSTER_MEMBER_FIELDS = "id,cluster,created_at,updated_at"
RESOURCE_FIELDS = "id,name,kind,size"
CAPTURE_FIELDS = "id,name,state,facility,level,record,captured_at,created_at,updated_at"
FACILITY_FIELDS = "id,key,name,created_at,updated_at"
LEVEL_FIELDS = "id,name,created_at,updated_at"
MAX_PAGES = 100_000  # a guard against a server whose next_page never ends
#: API requests in flight at once, for the whole mount (listing pages, lookups,
#: download redirects): enough to hide a 100 ms round trip behind the size probes of a
#: folder of hundreds of videos (each needs a redirect), few enough to be polite.
MAX_API_REQUESTS = 32
#: After a 401/403 the token is looked up again at most this often: a rotated token is
#: picked up within this long, and a revoked one does not hammer the disk or the keyring.
TOKEN_REREAD_EVERY = 30.0


class TokenReader(Protocol):
    """Where the token came from (a `cupixfs.config.token.TokenSource`); its ``str`` is logged."""

    def read(self) -> str:
        """The token there now (blocking); raises when there is none."""
        ...


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form), if any."""
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _said(response: httpx.Response) -> str:
    """``": <message>"`` from the API's error body, or "" when it has none."""
    try:
        message = error_message(response.json())
    except (json.JSONDecodeError, UnicodeDecodeError, httpx.ResponseNotRead):
        message = None
    return f": {message}" if message else ""


def classify_status(response: httpx.Response, what: str) -> None:
    """Raise the error an API status code means (with the API's own message); return on 2xx/3xx."""
    status = response.status_code
    if status < 400:
        return
    if status == 401:
        raise AuthError(f"{what}: the API refused the token (401 Unauthorized{_said(response)})")
    if status == 403:
        raise AuthError(f"{what}: permission denied (403 Forbidden{_said(response)})")
    if status == 404:
        raise NotFound(f"{what}: not found (404{_said(response)})")
    if status == 429 or status >= 500:
        raise Retryable(f"HTTP {status}", retry_after(response))
    raise ProtocolError(f"{what}: unexpected HTTP {status}{_said(response)}")


class CupixClient:
    """Async client for the Cupix API (one per mount, shared by all tasks)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        api_url: str,
        token: str,
        policy: RetryPolicy | None = None,
        per_page: int | None = None,
        on_retry: Callable[[], None] | None = None,
        cache: ResponseCache | None = None,
        offline: bool = False,
        token_source: TokenReader | None = None,
    ) -> None:
        self._http = http
        self._base = api_url.rstrip("/") + "/"
        self._token = token
        #: Read again when the API refuses the token (None: the token cannot change).
        self._token_source = token_source
        self._token_lock = trio.Lock()
        self._token_read_at: float | None = None
        self._policy = policy or RetryPolicy()
        self._per_page = per_page
        self._on_retry = on_retry
        self.requests = 0
        self.retries = 0
        #: One bound on the API requests in flight, shared by every caller of this client.
        self.limiter = trio.CapacityLimiter(MAX_API_REQUESTS)
        #: Complete responses are saved here; with *offline*, they are all we use.
        self._cache = cache
        self.offline = offline

    # -- plumbing ---------------------------------------------------------

    def _url(self, path: str) -> str:
        return urljoin(self._base, path.lstrip("/"))

    async def _send(self, path: str, params: dict[str, Any], what: str) -> httpx.Response:
        """One GET with auth, retried on transient faults; redirects are not followed.

        A refused token (401/403) is looked up again where it came from; if it was
        rotated there, the call is made once more with the new one.
        """

        async def attempt() -> httpx.Response:
            try:
                async with self.limiter:  # held for the request only, never while backing off
                    self.requests += 1
                    response = await self._http.get(
                        self._url(path),
                        params=params,
                        headers={"X-CUPIX-AUTH": self._token, "Accept": "application/json"},
                        follow_redirects=False,
                    )
            except httpx.TransportError as exc:
                raise connection_failed(exc, what) from None
            classify_status(response, what)
            return response

        def count_retry() -> None:
            self.retries += 1
            if self._on_retry is not None:
                self._on_retry()

        sent_with = self._token
        try:
            return await retrying(attempt, self._policy, what, count_retry)
        except AuthError:
            if not await self.renew_token(refused=sent_with):
                raise
        return await retrying(attempt, self._policy, what, count_retry)

    async def renew_token(self, refused: str | None = None) -> bool:
        """Read the token again where it came from; True if there is a new one to use.

        After a refusal (*refused* is the token the API refused) it is read at most
        once per `TOKEN_REREAD_EVERY`, and a token another call has already renewed
        counts as new; without one (SIGHUP) it is read at once.
        """
        if self._token_source is None:
            return False
        async with self._token_lock:  # concurrent refusals read it once
            now = trio.current_time()
            if refused is not None:
                if self._token != refused:
                    return True
                if self._token_read_at is not None and now - self._token_read_at < (
                    TOKEN_REREAD_EVERY
                ):
                    return False
            self._token_read_at = now
            try:
                token = await trio.to_thread.run_sync(self._token_source.read)
            except Exception as exc:  # a file mid-rotation, a locked keyring: keep the old one
                log.warning("cannot read the API token again: %s", exc)
                return False
            if token == self._token:
                return False
            self._token = token
            log.info("picked up a new API token from %s", self._token_source)
            return True

    async def _get_json(self, path: str, params: dict[str, Any]) -> Json:
        what = f"GET {path}"
        response = await self._send(path, params, what)
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ProtocolError(f"{what}: response is not JSON") from None
        if not isinstance(body, dict) or "result" not in body:
            raise ProtocolError(f"{what}: response has no 'result'")
        return body

    async def _offline_body(self, path: str, params: dict[str, Any]) -> Any:
        body = await self._cache.load(path, params) if self._cache is not None else None
        if body is None:
            raise NotCached(f"offline: GET {path} was never fetched, so it is not in the cache")
        return body

    async def _list_all(
        self, path: str, params: dict[str, Any], parse: Callable[[object], T]
    ) -> list[T]:
        """Every item of every page, or an error: never a partial list."""
        raw_items = (
            await self._offline_body(path, params)
            if self.offline
            else await self._fetch_all_pages(path, params)
        )
        items: list[T] = []
        for raw in raw_items if isinstance(raw_items, list) else []:
            try:
                items.append(parse(raw))
            except ProtocolError as exc:
                log.warning("GET %s: skipping a malformed item (%s)", path, exc)
        return items

    async def _page(self, path: str, params: dict[str, Any], page: int) -> tuple[list[Any], Json]:
        """One page: its items and its pagination object (empty when it has none)."""
        query = dict(params, page=page)
        if self._per_page:
            query["per_page"] = self._per_page
        result = (await self._get_json(path, query))["result"]
        data = result.get("data") if isinstance(result, dict) else None
        if not isinstance(data, list):
            raise ProtocolError(f"GET {path}: result.data is not a list (page {page})")
        pagination = result.get("pagination")
        return data, pagination if isinstance(pagination, dict) else {}

    async def _fetch_all_pages(self, path: str, params: dict[str, Any]) -> list[Any]:
        """Every item of every page, in order, or an error (never a part of the list).

        Page 1 says how many pages there are (``total_pages``, or ``total_entries`` and
        ``per_page``); the others are then fetched at once, within the client's limit of
        requests in flight. A server that only says ``next_page`` is followed page by
        page, and so is one whose last page still points further (the list grew).
        """
        what = f"GET {path}"
        first, pagination = await self._page(path, params, 1)
        pages: list[list[Any]] = [first]
        total = _total_pages(pagination)
        if total is not None and total > 1:
            if total > MAX_PAGES:
                raise ProtocolError(f"{what}: {total} pages is more than {MAX_PAGES}")
            rest: list[list[Any]] = [[] for _ in range(total - 1)]
            last: Json = {}

            async def fetch(page: int) -> None:
                nonlocal last
                rest[page - 2], found = await self._page(path, params, page)
                if page == total:
                    last = found

            try:
                async with trio.open_nursery() as nursery:  # one failed page fails them all
                    for page in range(2, total + 1):
                        nursery.start_soon(fetch, page)
            except BaseExceptionGroup as group:
                raise unwrap(group) from None
            pages += rest
            page, pagination = total, last
        else:
            page = 1
        while (next_page := pagination.get("next_page")) is not None:
            if not isinstance(next_page, int) or isinstance(next_page, bool) or next_page <= page:
                raise ProtocolError(f"{what}: bad next_page {next_page!r} after page {page}")
            if len(pages) >= MAX_PAGES:
                raise ProtocolError(f"{what}: more than {MAX_PAGES} pages")
            page = next_page
            data, pagination = await self._page(path, params, page)
            pages.append(data)
        items = _unique([item for data in pages for item in data])
        if self._cache is not None:
            await self._cache.save(path, params, items)
        return items

    # -- the API ------------------------------------------------------------

    async def check_auth(self) -> None:
        """Fail fast with `AuthError` if the token is wrong (used before mounting).

        ``GET /me?fields=id`` is the cheapest call the vendor documents for this; an API
        without it (404) is asked for one pointcloud instead.
        """
        if self.offline:
            return
        try:
            await self._get_json("me", {"fields": "id"})
        except NotFound:
            await self._get_json(
                "pointclouds", {"fields": "id", "pointcloud_type": "all", "page": 1, "per_page": 1}
            )

    async def list_videos(self, capture_id: int) -> list[Video]:
        return await self._list_all(
            "videos", {"fields": VIDEO_FIELDS, "capture_id": capture_id}, Video.from_item
        )

    async def list_pointclouds(
        self,
        *,
        capture_id: int | None = None,
        cluster_id: int | None = None,
        record_id: int | None = None,
        pointcloud_type: str = "all",
    ) -> list[Pointcloud]:
        params: dict[str, Any] = {"fields": POINTCLOUD_FIELDS, "pointcloud_type": pointcloud_type}
        for key, value in (
            ("capture_id", capture_id),
            ("cluster_id", cluster_id),
            ("record_id", record_id),
        ):
            if value is not None:
                params[key] = value
        return await self._list_all("pointclouds", params, Pointcloud.from_item)

    async def list_cluster_members(self) -> list[ClusterMember]:
        """Every pointcloud of the account, with only what ``/clusters`` shows of it."""
        return await self._list_all(
            "pointclouds",
            {"fields": CLUSTER_MEMBER_FIELDS, "pointcloud_type": "all"},
            ClusterMember.from_item,
        )

    async def list_captures(self) -> list[Capture]:
        return await self._list_all("captures", {"fields": CAPTURE_FIELDS}, Capture.from_item)

    async def get_capture(self, capture_id: int) -> Capture:
        """``GET /captures/{id}``: `NotFound` for an id the API does not know.

        An answer without a capture in it (200 with no data) is `NotFound` too.
        """
        path, params = f"captures/{capture_id}", {"fields": CAPTURE_FIELDS}
        if self.offline:
            data = await self._offline_body(path, params)
        else:
            data = (await self._get_json(path, params))["result"]
            data = data.get("data") if isinstance(data, dict) else None
        if not data:
            raise NotFound(f"GET {path}: no capture in the answer")
        try:
            capture = Capture.from_item(data)
        except ProtocolError as exc:
            raise ProtocolError(f"GET {path}: {exc}") from None
        if self._cache is not None and not self.offline:
            await self._cache.save(path, params, data)
        return capture

    async def list_facilities(self) -> list[Facility]:
        return await self._list_all("facilities", {"fields": FACILITY_FIELDS}, Facility.from_item)

    async def list_levels(self, facility_key: str) -> list[Level]:
        return await self._list_all(
            "levels", {"fields": LEVEL_FIELDS, "facility_key": facility_key}, Level.from_item
        )

    async def get_meta(self, pointcloud_id: int) -> Json:
        """The ``result`` object of ``GET /pointclouds/{id}/meta``."""
        path, params = f"pointclouds/{pointcloud_id}/meta", {"fields": POINTCLOUD_FIELDS}
        if self.offline:
            result = await self._offline_body(path, params)
        else:
            result = (await self._get_json(path, params))["result"]
            if self._cache is not None and isinstance(result, dict):
                await self._cache.save(path, params, result)
        if not isinstance(result, dict):
            raise ProtocolError(f"GET pointclouds/{pointcloud_id}/meta: result is not an object")
        return result

    async def list_resources(self, pointcloud_id: int) -> list[Resource]:
        return await self._list_all(
            f"pointclouds/{pointcloud_id}/resources",
            {"fields": RESOURCE_FIELDS},
            Resource.from_item,
        )

    async def resolve_download(self, path: str) -> str:
        """Follow a download endpoint's 302 one hop and return the signed URL."""
        what = f"GET {path}"
        if self.offline:
            raise Unavailable(f"offline: {what} needs the network")
        response = await self._send(path, {}, what)
        location = response.headers.get("location")
        if response.status_code not in (301, 302, 303, 307, 308) or not location:
            raise ProtocolError(f"{what}: expected a redirect, got HTTP {response.status_code}")
        return urljoin(str(response.url), location)


def _total_pages(pagination: Json) -> int | None:
    """How many pages page 1 says there are, or None when it does not say."""
    total = pagination.get("total_pages")
    if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
        return total
    entries, per_page = pagination.get("total_entries"), pagination.get("per_page")
    if (
        isinstance(entries, int)
        and isinstance(per_page, int)
        and not isinstance(entries, bool)
        and not isinstance(per_page, bool)
        and entries >= 0
        and per_page > 0
    ):
        return math.ceil(entries / per_page)
    return None


def _unique(items: list[Any]) -> list[Any]:
    """Items in order, without repeats of an ``(type, id)`` already seen.

    A list that changes while its pages are fetched may show an item on two pages.
    """
    seen: set[tuple[object, object]] = set()
    unique: list[Any] = []
    for item in items:
        key = (item.get("type"), item.get("id")) if isinstance(item, dict) else None
        if key is not None and isinstance(key[0], str | None) and isinstance(key[1], str | int):
            if key in seen:
                continue
            seen.add(key)
        unique.append(item)
    return unique
