"""Ranged GETs on signed storage URLs, checked and retried.

Every response is verified before a byte of it is used: the status, the
``Content-Range`` against the range we asked for, the body length, and the
ETag the file was first seen with. A body cut short is resumed from the byte it
reached; an expired URL is resolved again; 5xx/429/resets are retried with
backoff until the policy's deadline.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import httpx
import trio

from cupixfs.api.client import retry_after
from cupixfs.core.errors import NotFound, ProtocolError, RemoteChanged, Unavailable
from cupixfs.core.retry import Retryable, RetryPolicy, retrying
from cupixfs.data.signed_url import SignedUrls
from cupixfs.data.sources import RemoteFile

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


@dataclass(frozen=True)
class RemoteStat:
    """What one probe of a remote file learnt: its size, version, and first bytes."""

    size: int
    etag: str | None
    head: bytes


def parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``bytes a-b/total`` -> (a, b, total); ``bytes */total`` -> (None, None, total)."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not match:
        return None, None, None
    first, last, total = match.groups()
    return (
        int(first) if first is not None else None,
        int(last) if last is not None else None,
        int(total) if total not in (None, "*") else None,
    )


@dataclass
class _Body:
    """The chunks of one ranged body received so far (across resumed attempts)."""

    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


def split_chunks(chunks: list[bytes], piece: int) -> list[bytes]:
    """Re-cut a stream's *chunks* into pieces of *piece* bytes (the last may be shorter)."""
    pieces: list[bytes] = []
    parts: list[memoryview | bytes] = []
    filled = 0
    for chunk in chunks:
        view = memoryview(chunk)
        position = 0
        while position < len(chunk):
            take = min(piece - filled, len(chunk) - position)
            whole = position == 0 and take == len(chunk)
            parts.append(chunk if whole else view[position : position + take])
            filled += take
            position += take
            if filled == piece:
                pieces.append(
                    parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)
                )
                parts, filled = [], 0
    if parts:
        pieces.append(
            parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)
        )
    return pieces


@dataclass
class FetchStats:
    """Counters for `cupixfs status` and the tests."""

    requests: int = 0
    bytes: int = 0
    retries: int = 0


class RangeFetcher:
    """Reads byte ranges of remote files through their signed URLs."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        urls: SignedUrls,
        policy: RetryPolicy,
        max_requests: int = 16,
    ) -> None:
        self._http = http
        self._urls = urls
        self._policy = policy
        self._limit = trio.CapacityLimiter(max_requests)
        self.stats = FetchStats()
        #: Serve only from cache: every fetch fails at once with a clear message.
        self.offline = False

    def forget(self, key: str) -> None:
        """Drop what is kept for the remote file *key* (its signed URL)."""
        self._urls.forget(key)

    def _count_retry(self) -> None:
        self.stats.retries += 1

    async def _open(
        self, remote: RemoteFile, first: int, last: int | None
    ) -> tuple[str, httpx.Response]:
        if self.offline:
            end = "end" if last is None else last
            raise Unavailable(f"offline: {remote.key} bytes {first}-{end} are not in the cache")
        url = await self._urls.get(remote)
        rng = f"bytes={first}-{'' if last is None else last}"
        request = self._http.build_request(
            "GET", url, headers={"Range": rng, "Accept-Encoding": "identity"}
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise Retryable(type(exc).__name__) from None
        self.stats.requests += 1
        status = response.status_code
        if status in (200, 206, 416):
            return url, response
        await response.aclose()
        if status == 403:
            # Expired (or otherwise refused) signature: resolve a fresh URL and go again.
            self._urls.invalidate(remote, url)
            raise Retryable("storage refused the signed URL (403), resolving it again", 0.0)
        if status == 404:
            raise NotFound(f"{remote.key}: storage has no such object (404)")
        if status == 429 or status >= 500:
            raise Retryable(f"storage HTTP {status}", retry_after(response))
        raise ProtocolError(f"{remote.key}: storage answered HTTP {status}")

    async def probe(self, remote: RemoteFile, head_size: int) -> RemoteStat:
        """Learn size and ETag with one ranged GET, keeping the first *head_size* bytes.

        A pre-signed GET URL refuses HEAD (the signature covers the method), so
        the size comes from the ``Content-Range`` of a small ranged GET.
        """

        async def attempt() -> RemoteStat:
            async with self._limit:
                _url, response = await self._open(remote, 0, head_size - 1)
                try:
                    etag = response.headers.get("etag")
                    if response.status_code == 416:
                        _, _, total = parse_content_range(response.headers.get("content-range"))
                        if total is None:
                            raise ProtocolError(f"{remote.key}: 416 without a size")
                        return RemoteStat(total, etag, b"")
                    if response.status_code == 206:
                        first, last, total = parse_content_range(
                            response.headers.get("content-range")
                        )
                        if first != 0 or total is None or last is None:
                            raise ProtocolError(f"{remote.key}: bad Content-Range on probe")
                        expected = last + 1
                    else:  # 200: the whole object; keep only the head of it
                        total = int(response.headers.get("content-length", "-1"))
                        if total < 0:
                            raise ProtocolError(f"{remote.key}: no length on probe")
                        expected = min(total, head_size)
                    head = await self._read_body(response, expected)
                    if len(head) < expected:
                        raise Retryable("probe body cut short")
                    self.stats.bytes += len(head)
                    return RemoteStat(total, etag, bytes(head))
                finally:
                    await response.aclose()

        return await retrying(attempt, self._policy, f"probe {remote.key}", self._count_retry)

    async def fetch(
        self, remote: RemoteFile, start: int, end: int, etag: str | None, piece: int
    ) -> list[bytes]:
        """Bytes ``[start, end)`` of *remote* (which must still carry *etag*), cut into
        pieces of *piece* bytes (the last may be shorter).

        The body arrives in chunks that do not line up with pieces; each piece is
        built with one join of the parts of chunks it spans, so every byte is
        copied once here -- on a fast link, copies are what the time goes to.
        """
        body = _Body()
        length = end - start

        async def attempt() -> None:
            position = start + body.size
            async with self._limit:
                _url, response = await self._open(remote, position, end - 1)
                before = body.size
                try:
                    self._check(remote, response, position, end, etag)
                    await self._read_into(response, body, length)
                finally:
                    self.stats.bytes += body.size - before
                    await response.aclose()
            if body.size < length:
                raise Retryable(f"body cut short at {start + body.size} of [{start}, {end})", 0.0)

        await retrying(attempt, self._policy, f"read {remote.key}", self._count_retry)
        return split_chunks(body.chunks, piece)

    def _check(
        self, remote: RemoteFile, response: httpx.Response, first: int, end: int, etag: str | None
    ) -> None:
        got_etag = response.headers.get("etag")
        if etag is not None and got_etag is not None and got_etag != etag:
            raise RemoteChanged(f"{remote.key}: ETag changed")
        if response.status_code == 416:
            raise RemoteChanged(f"{remote.key}: range [{first}, {end}) no longer exists")
        if response.status_code == 200:
            raise ProtocolError(f"{remote.key}: storage ignored the Range header")
        a, b, _total = parse_content_range(response.headers.get("content-range"))
        if a != first or b != end - 1:
            raise ProtocolError(
                f"{remote.key}: Content-Range {a}-{b} does not match [{first}, {end - 1}]"
            )

    async def _read_into(self, response: httpx.Response, body: _Body, limit: int) -> None:
        """Collect the body's chunks; a connection cut mid-body keeps what arrived."""
        try:
            async for chunk in response.aiter_raw():
                if body.size + len(chunk) > limit:
                    raise ProtocolError("storage sent more bytes than asked for")
                body.chunks.append(chunk)
                body.size += len(chunk)
        except httpx.TransportError as exc:  # reset or cut: resume from body.size
            log.debug("body interrupted after %d bytes: %s", body.size, type(exc).__name__)

    async def _read_body(self, response: httpx.Response, limit: int) -> bytes:
        """Up to *limit* bytes of the body (the rest, if any, is dropped with the connection)."""
        buf = bytearray()
        try:
            async for chunk in response.aiter_raw():
                buf += chunk
                if len(buf) >= limit:
                    break
        except httpx.TransportError:
            pass
        return bytes(buf[:limit])
