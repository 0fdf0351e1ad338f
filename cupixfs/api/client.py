"""CupixClient: the Cupix REST API as typed async calls.

Owns auth, pagination, the envelope and status codes of ``../shared/cupix-api``;
returns `cupixfs.api.models` records and raises `cupixfs.core.errors` exceptions.
It never touches storage bytes: download calls only *resolve* the 302 to a
signed URL, which the data layer then reads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar
from urllib.parse import urljoin

import httpx
import trio

from cupixfs.api.models import Json, Pointcloud, Resource, Video
from cupixfs.api.response_cache import ResponseCache
from cupixfs.core.errors import AuthError, NotCached, NotFound, ProtocolError, Unavailable
from cupixfs.core.retry import Retryable, RetryPolicy, retrying

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_API_URL = "https://api.cupix.works/api/v1"
VIDEO_FIELDS = "id,name,state,created_at,updated_at"
POINTCLOUD_FIELDS = (
    "id,name,state,kind,meta,cluster,parent,record,level,created_at,updated_at,"
    "pointcloud_type,mesh_uploaded_at,ply_uploaded_at"
)
RESOURCE_FIELDS = "id,name,kind"
MAX_PAGES = 100_000  # a guard against a server whose next_page never ends
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


def classify_status(response: httpx.Response, what: str) -> None:
    """Raise the error an API status code means; return on 2xx/3xx."""
    status = response.status_code
    if status < 400:
        return
    if status == 401:
        raise AuthError(f"{what}: the API refused the token (401 Unauthorized)")
    if status == 403:
        raise AuthError(f"{what}: permission denied (403 Forbidden)")
    if status == 404:
        raise NotFound(f"{what}: not found (404)")
    if status == 429 or status >= 500:
        raise Retryable(f"HTTP {status}", retry_after(response))
    raise ProtocolError(f"{what}: unexpected HTTP {status}")


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
            self.requests += 1
            try:
                response = await self._http.get(
                    self._url(path),
                    params=params,
                    headers={"X-CUPIX-AUTH": self._token, "Accept": "application/json"},
                    follow_redirects=False,
                )
            except httpx.TransportError as exc:
                raise Retryable(type(exc).__name__) from None
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

    async def _fetch_all_pages(self, path: str, params: dict[str, Any]) -> list[Any]:
        what = f"GET {path}"
        items: list[Any] = []
        page = 1
        for _ in range(MAX_PAGES):
            query = dict(params, page=page)
            if self._per_page:
                query["per_page"] = self._per_page
            result = (await self._get_json(path, query))["result"]
            data = result.get("data") if isinstance(result, dict) else None
            if not isinstance(data, list):
                raise ProtocolError(f"{what}: result.data is not a list")
            items.extend(data)
            pagination = result.get("pagination")
            next_page = pagination.get("next_page") if isinstance(pagination, dict) else None
            if next_page is None:
                if self._cache is not None:
                    await self._cache.save(path, params, items)
                return items
            if not isinstance(next_page, int) or next_page <= page:
                raise ProtocolError(f"{what}: bad next_page {next_page!r} after page {page}")
            page = next_page
        raise ProtocolError(f"{what}: more than {MAX_PAGES} pages")

    # -- the API ------------------------------------------------------------

    async def check_auth(self) -> None:
        """Fail fast with `AuthError` if the token is wrong (used before mounting)."""
        if self.offline:
            return
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
