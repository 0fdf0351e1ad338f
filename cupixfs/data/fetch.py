"""Ranged GETs on signed storage URLs, checked and retried.

Two shapes of read: `RangeFetcher.fetch` gets a short range whole (random access, a
run of blocks), and `BodyStream` keeps one long GET open and hands out its body as
the reader advances (a sequential reader: one request for the rest of the file, not
one per block). Every response is verified before a byte of it is used: the status,
the ``Content-Range`` against the range we asked for, the body length, and the ETag
the file was first seen with. A body cut short is resumed from the byte it reached;
an expired URL is resolved again; 5xx/429/resets are retried with backoff until the
policy's deadline.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NoReturn

import httpx
import trio

from cupixfs.api.client import retry_after
from cupixfs.core.errors import NotFound, ProtocolError, RemoteChanged, Unavailable
from cupixfs.core.retry import Retryable, RetryPolicy, connection_failed, retrying
from cupixfs.data import rawhttp
from cupixfs.data.block_file import Block
from cupixfs.data.rawhttp import RawBody, RawHttp
from cupixfs.data.signed_url import SignedUrls
from cupixfs.data.sources import RemoteFile

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


#: Storage requests in flight at once for short reads (random access, runs of blocks).
MAX_REQUESTS = 16
#: Size probes in flight at once: each is a small, independent round trip, so ``ls -l``
#: of a folder of hundreds of videos is bounded by latency, not by their number.
PROBES_AT_ONCE = 64
#: Long sequential GETs open at once (one per sequential reader, up to this many).
STREAMS_AT_ONCE = 16
#: Connections the storage pool keeps: every kind of request above at once, plus slack.
POOL_SIZE = MAX_REQUESTS + PROBES_AT_ONCE + STREAMS_AT_ONCE + 4


@dataclass(frozen=True, slots=True)
class RemoteStat:
    """What is known of one version of a remote file: its size, ETag, and first bytes.

    *stated* marks a size only the API stated (``filesize``): storage has not confirmed
    it yet, and there is no ETag. The first fetch confirms or corrects it.
    """

    size: int
    etag: str | None
    head: bytes
    stated: bool = False


@dataclass(frozen=True)
class Fetched:
    """A range read whole: its pieces, and what the response said of the object."""

    pieces: list[Block]
    etag: str | None
    total: int | None


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


def split_chunks(chunks: list[bytes], piece: int) -> list[Block]:
    """Re-cut a stream's *chunks* into pieces of *piece* bytes (the last may be shorter)."""
    pieces: list[Block] = []
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
    #: GETs sent as parts side by side, and streams that went back to one body after
    #: parts did not pay (see `SequentialStream._adapt`).
    parts: int = 0
    parts_given_up: int = 0


class RangeFetcher:
    """Reads byte ranges of remote files through their signed URLs."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        urls: SignedUrls,
        policy: RetryPolicy,
        max_requests: int = MAX_REQUESTS,
        sync_http: httpx.Client | None = None,
        raw: RawHttp | None = None,
    ) -> None:
        self._http = http
        #: The synchronous client long bodies are read with, in worker threads.
        self.sync_http = sync_http
        #: What reads long bodies straight off the socket where it can (`rawhttp`).
        self.raw = raw
        self._urls = urls
        self._policy = policy
        self._limit = trio.CapacityLimiter(max_requests)
        self._probes = trio.CapacityLimiter(PROBES_AT_ONCE)
        #: Long GETs do not take a short-request slot: a paused reader holds its stream
        #: open, and must not starve everyone else's reads.
        self.streams = trio.CapacityLimiter(STREAMS_AT_ONCE)
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
        url = await self._url(remote, first, last)
        request = self._http.build_request("GET", url, headers=_range_headers(first, last))
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise connection_failed(exc, f"read {remote.key}") from None
        self.stats.requests += 1
        if response.status_code not in (200, 206, 416):
            await response.aclose()
            self._refused(remote, url, response)
        return url, response

    async def _url(self, remote: RemoteFile, first: int, last: int | None) -> str:
        if self.offline:
            end = "end" if last is None else last
            raise Unavailable(f"offline: {remote.key} bytes {first}-{end} are not in the cache")
        return await self._urls.get(remote)

    async def resolve(self, remote: RemoteFile) -> None:
        """Resolve *remote*'s signed URL now (it is kept until shortly before it expires),
        so that a request sent later does not wait for the download call's redirect."""
        await self._url(remote, 0, None)

    def _refused(self, remote: RemoteFile, url: str, response: httpx.Response) -> NoReturn:
        """Raise what a status other than 200/206/416 from storage means."""
        status = response.status_code
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
            async with self._probes:
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
    ) -> Fetched:
        """Bytes ``[start, end)`` of *remote* (which must still carry *etag*, when given),
        cut into pieces of *piece* bytes (the last may be shorter).

        The body arrives in chunks that do not line up with pieces; each piece is
        built with one join of the parts of chunks it spans, so every byte is
        copied once here -- on a fast link, copies are what the time goes to.
        """
        body = _Body()
        length = end - start
        seen: list[tuple[str | None, int | None]] = []

        async def attempt() -> None:
            position = start + body.size
            async with self._limit:
                _url, response = await self._open(remote, position, end - 1)
                before = body.size
                try:
                    seen.append(self.check(remote, response, position, end, etag))
                    await self._read_into(response, body, length)
                finally:
                    self.stats.bytes += body.size - before
                    await response.aclose()
            if body.size < length:
                raise Retryable(f"body cut short at {start + body.size} of [{start}, {end})", 0.0)

        await retrying(attempt, self._policy, f"read {remote.key}", self._count_retry)
        got_etag, total = seen[-1]
        return Fetched(split_chunks(body.chunks, piece), got_etag, total)

    def check(
        self,
        remote: RemoteFile,
        response: httpx.Response,
        first: int,
        end: int,
        etag: str | None,
    ) -> tuple[str | None, int | None]:
        """Refuse a response that is not exactly ``[first, end)`` of version *etag*;
        return the ETag and total size it states."""
        got_etag = response.headers.get("etag")
        if etag is not None and got_etag is not None and got_etag != etag:
            raise RemoteChanged(f"{remote.key}: ETag changed")
        if response.status_code == 416:
            raise RemoteChanged(f"{remote.key}: range [{first}, {end}) no longer exists")
        if response.status_code == 200:
            raise ProtocolError(f"{remote.key}: storage ignored the Range header")
        a, b, total = parse_content_range(response.headers.get("content-range"))
        if a != first or b != end - 1:
            raise ProtocolError(
                f"{remote.key}: Content-Range {a}-{b} does not match [{first}, {end - 1}]"
            )
        return got_etag, total

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
        """Up to *limit* bytes of the body. A body no longer than that is read to its end,
        so its connection goes back to the pool (a probe of each of 500 videos must not
        cost 500 connections); a longer one (storage ignored the range) is cut off."""
        buf = bytearray()
        try:
            async for chunk in response.aiter_raw():
                buf += chunk
                if len(buf) > limit:
                    break
        except httpx.TransportError:
            pass
        return bytes(buf[:limit])


class BodyCancelled(Exception):
    """A body was read on after its reading was stopped (`BodyStream.cancel`)."""


class BodyStream:
    """One long ranged GET, read in a worker thread as far as its consumer wants, resumed
    where it was cut.

    A sequential reader is served by one request for the rest of the file (Mountpoint
    for S3 does the same), not by a request per block: at a few milliseconds of fixed
    cost per request, that is what keeps a fast link full. Reading pauses whenever the
    consumer stops asking (TCP's own flow control holds the server back), so the bytes
    in memory stay bounded.

    Why a thread: receiving a body is mostly copying (socket to user space, chunks into
    blocks), and so is answering the kernel's reads. On the event loop the two take
    turns on one core; here the body is received on the other core while the loop
    answers reads (measured: 380 -> 620 MB/s for one cold sequential read). So the
    body is read with the synchronous httpx client, in the thread of whoever reads it;
    opening and reopening it (a signed URL to resolve, retries with backoff under the
    mount's deadline and health breaker) stay on the event loop, through `open`.
    """

    def __init__(
        self,
        fetcher: RangeFetcher,
        remote: RemoteFile,
        start: int,
        end: int,
        etag: str | None,
    ) -> None:
        self._fetcher = fetcher
        self._remote = remote
        self.position = start
        self.end = end
        self.etag = etag
        self.total: int | None = None
        self._response: httpx.Response | None = None
        self._chunks: Iterator[bytes] | None = None
        self._raw: RawBody | None = None
        self._leftover = memoryview(b"")
        self._token = trio.lowlevel.current_trio_token()
        self._progress_at = time.monotonic()
        self._cancelled = False
        #: Bytes received, read and written only by the thread that reads the body.
        self.received = 0

    async def open(self) -> None:
        """Send the request from `position` (on the event loop, retried): afterwards
        `etag` and `total` are known, and the body can be read in a thread."""
        fetcher = self._fetcher
        sync_http = fetcher.sync_http
        if sync_http is None:
            raise ProtocolError("no synchronous storage client to read a long body with")

        async def attempt() -> None:
            first, last = self.position, self.end - 1
            url = await fetcher._url(self._remote, first, last)
            raw = fetcher.raw
            if raw is not None and raw.usable(url):
                await self._open_raw(raw, url, first, last)
                return

            def send() -> httpx.Response:
                request = sync_http.build_request("GET", url, headers=_range_headers(first, last))
                try:
                    return sync_http.send(request, stream=True)
                except httpx.TransportError as exc:
                    raise connection_failed(exc, f"read {self._remote.key}") from None

            response = await trio.to_thread.run_sync(send)
            fetcher.stats.requests += 1
            try:
                if response.status_code not in (200, 206, 416):
                    fetcher._refused(self._remote, url, response)
                etag, total = fetcher.check(self._remote, response, first, self.end, self.etag)
            except BaseException:
                response.close()
                raise
            self.etag = self.etag or etag
            self.total = total
            self._response = response
            self._chunks = response.iter_raw()
            self._leftover = memoryview(b"")

        self.close()
        await retrying(attempt, fetcher._policy, f"read {self._remote.key}", fetcher._count_retry)

    async def _open_raw(self, raw: RawHttp, url: str, first: int, last: int) -> None:
        fetcher = self._fetcher

        def send() -> tuple[httpx.Response, RawBody]:
            try:
                return raw.open(url, _range_headers(first, last))
            except (rawhttp.Interrupted, OSError) as exc:  # ssl.SSLError is an OSError
                detail = f"{type(exc).__name__}: {exc}"
                raise connection_failed(exc, f"read {self._remote.key}", detail) from None

        response, body = await trio.to_thread.run_sync(send)
        fetcher.stats.requests += 1
        try:
            if response.status_code not in (200, 206, 416):
                fetcher._refused(self._remote, url, response)
            etag, total = fetcher.check(self._remote, response, first, self.end, self.etag)
            if body.left != self.end - first:  # a coded or unsized body: httpx takes it
                raw.refuse(url)
                raise Retryable("storage sent a body only httpx can read", 0.0)
        except BaseException:
            body.close()
            raise
        self.etag = self.etag or etag
        self.total = total
        self._raw = body
        self._leftover = memoryview(b"")

    # -- in a worker thread ------------------------------------------------------------------

    def read_exactly(self, count: int) -> Block:
        """The next *count* bytes of the range. Runs in a worker thread; a body cut short
        is reopened (through the event loop) from the byte it reached."""
        parts: list[memoryview] = []
        want = count
        while want:
            if not self._leftover:
                chunk = self._next_chunk(want)
                if not parts and len(chunk) == want:
                    return chunk  # one whole block off the socket: no join
                self._leftover = memoryview(chunk)
            take = min(want, len(self._leftover))
            parts.append(self._leftover[:take])
            self._leftover = self._leftover[take:]
            want -= take
        return joined(parts)

    def _next_chunk(self, want: int) -> Block:
        """The next bytes of the body: up to *want* from the raw reader, or httpx's next
        chunk (of any size)."""
        policy = self._fetcher._policy
        while True:
            if self._cancelled:
                raise BodyCancelled(f"{self._remote.key}: reading stopped")
            if self.position >= self.end:
                raise ProtocolError(f"{self._remote.key}: asked past the end of the range")
            if self._chunks is None and self._raw is None:
                trio.from_thread.run(self.open, trio_token=self._token)
            try:
                if self._raw is not None:
                    chunk = self._raw.read(want)
                else:
                    assert self._chunks is not None
                    chunk = next(self._chunks)
            except (StopIteration, httpx.TransportError, rawhttp.Interrupted) as exc:
                if time.monotonic() - self._progress_at > policy.deadline:
                    raise Unavailable(
                        f"read {self._remote.key}: no progress for {policy.deadline:g}s"
                    ) from None
                log.debug(
                    "%s: body interrupted at %d (%s); resuming",
                    self._remote.key,
                    self.position,
                    type(exc).__name__,
                )
                self.close()
                continue
            if not chunk:
                continue
            if self.position + len(chunk) > self.end:
                raise ProtocolError("storage sent more bytes than asked for")
            self.position += len(chunk)
            self.received += len(chunk)
            self._progress_at = time.monotonic()
            return chunk

    def cancel(self) -> None:
        """Stop reading for good (from any thread): the reader gets `BodyCancelled`."""
        self._cancelled = True
        self.close()

    def close(self) -> None:
        """Drop the connection (from any thread); the next read reopens it."""
        response, self._response, self._chunks = self._response, None, None
        if response is not None:
            response.close()
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.close()


def _range_headers(first: int, last: int | None) -> dict[str, str]:
    return {"Range": f"bytes={first}-{'' if last is None else last}", "Accept-Encoding": "identity"}


def joined(parts: list[memoryview]) -> bytes:
    """Bytes of *parts*: the chunk itself when one part is exactly one chunk, else a join."""
    if len(parts) == 1:
        whole = parts[0].obj
        if isinstance(whole, bytes) and len(whole) == len(parts[0]):
            return whole
    return b"".join(parts)
