"""The data layer's front door: size, open and read any file source.

`DataStore.size` answers a file's size: the API's stated size where it gives one (no
request at all), else what storage said before (remembered on disk for the next
mount), else one small probe whose first bytes are kept. `DataStore.read` serves byte
ranges: a sequential reader gets a `SequentialStream` (one long GET, blocks pushed into
the kernel's page cache ahead of it), any other read the blocks it touches.

A stated size is confirmed by the first fetch, which also learns the ETag: storage's
``Content-Range`` total wins if the two disagree (the kernel is told, once per file,
and the log says so once). A handle is pinned to the version it opened: if the remote
file changes before the handle has shown any bytes, the read simply moves to the new
version; after that, it fails (EIO) rather than return a mix of two versions.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Protocol

import cachetools
import trio

from cupixfs.core.errors import NotFound, ProtocolError, RemoteChanged, Unavailable
from cupixfs.data.block_file import Block
from cupixfs.data.blocks import BlockCache
from cupixfs.data.fetch import BodyStream, RangeFetcher, RemoteStat
from cupixfs.data.readahead import INITIAL_WINDOW, MAX_WINDOW, ReadAhead
from cupixfs.data.sources import DerivedFile, FileSource, RemoteFile, StaticFile
from cupixfs.data.stat_cache import StatCache
from cupixfs.data.stream import Push, SequentialStream, Sink

log = logging.getLogger(__name__)

#: Bytes kept from the size probe: enough for file-type sniffing and most headers.
HEAD_SIZE = 64 * 1024
MAX_VERSION_RESTARTS = 3
#: A file read from its first byte is fetched whole at once up to this size (a cp, an
#: rsync, a viewer loading a point cloud read on to the end); larger ones start with the
#: initial window and double it.
WHOLE_FILE = MAX_WINDOW

#: Small documents kept whole (their sizes are kept for all of them).
STATIC_KEPT = 256
#: Bytes of probe heads kept at most (256 heads of 64 KiB), those of the files probed
#: last. Kept with each file's size, they grew with every file listed for as long as the
#: kernel kept its inode: 39 MiB for a folder of 500 videos.
HEADS_KEPT = 16 * 1024 * 1024
#: Streams of files fetched whole ahead of their reader kept track of (`DataStore.fetch_ahead`).
AHEAD_KEPT = 64
#: Whole-file GETs opened by `DataStore.open` and not yet read, at most (each holds a
#: connection until its reader's first read takes it, or the file is closed).
BODIES_AT_OPEN = 4
#: What a read returns: a view into a cached block where it can (no copy), else bytes.
Buffer = bytes | memoryview


@dataclass
class OpenFile:
    """One open file handle: its source, its read-ahead state and its stream."""

    source: FileSource
    readahead: ReadAhead = field(default_factory=ReadAhead)
    #: A document's bytes as of open(), so one handle reads one consistent snapshot.
    snapshot: bytes | None = None
    #: The remote version this handle reads; a handle never switches versions once it
    #: may have shown bytes of one (from us, or from the kernel's page cache).
    version: str | None = None
    shown: bool = False
    #: Where blocks fetched ahead go in the kernel's page cache (None: nowhere).
    push: Push | None = None
    stream: SequentialStream | None = None
    #: Read-ahead never goes past this offset (a zip member ends inside its archive).
    limit: int | None = None
    #: The whole-file GET whose response confirmed the size at open, its head read: the
    #: first request of the stream that a first read from the start begins.
    body: BodyStream | None = None


class DerivedFiles(Protocol):
    """Who sizes, opens and reads `DerivedFile` sources (`cupixfs.views.DerivedViews`)."""

    async def size(self, source: DerivedFile) -> int: ...

    async def open(
        self, source: DerivedFile, cached_version: str | None, push: Push | None
    ) -> OpenFile: ...

    async def read(self, handle: OpenFile, offset: int, size: int) -> Buffer: ...

    def release(self, handle: OpenFile) -> None: ...


@dataclass
class ReadAheadConfig:
    initial: int = INITIAL_WINDOW
    maximum: int = MAX_WINDOW
    #: Blocks sequential streams may have claimed and not yet received, across the whole
    #: mount (the memory budget of read-ahead).
    budget_blocks: int = 48


class DataStore:
    """Sizes and bytes of file sources, with caching and change detection."""

    def __init__(
        self,
        fetcher: RangeFetcher,
        blocks: BlockCache,
        stat_cache: StatCache | None = None,
        stat_ttl: float = 3600.0,
        static_ttl: float = 60.0,
        readahead: ReadAheadConfig | None = None,
        on_change: Callable[[FileSource], None] | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._blocks = blocks
        self._stat_cache = stat_cache
        self._stat_ttl = stat_ttl
        self._static_ttl = static_ttl
        self._stats: dict[str, tuple[RemoteStat, float]] = {}
        #: Small documents (meta.json...): a few kept whole, every one's size remembered,
        #: so a listing of thousands of them holds their sizes, not their bytes. The sizes
        #: are forgotten all at once, at most *static_ttl* after they were learnt: a
        #: deadline each would cost more memory than the size itself.
        self._static: cachetools.TTLCache[str, bytes] = cachetools.TTLCache(
            maxsize=STATIC_KEPT, ttl=static_ttl, timer=trio.current_time
        )
        self._static_sizes: dict[str, int] = {}
        self._static_sizes_until = 0.0
        #: The first bytes of the files probed last, by version (`_kept`, `_from_head`).
        self._heads: cachetools.LRUCache[str, bytes] = cachetools.LRUCache(
            HEADS_KEPT, getsizeof=len
        )
        #: One lock per file while it is being probed (dropped once nobody holds it).
        self._locks: dict[str, trio.Lock] = {}
        self._readahead = readahead or ReadAheadConfig()
        self._budget = trio.Semaphore(self._readahead.budget_blocks)
        self._sink = Sink(blocks)
        self._corrected: set[str] = set()
        self.on_change = on_change
        #: Called when a stated size turns out too small (the kernel must ask again).
        self.on_resize: Callable[[FileSource], None] | None = None
        #: Where streams and disk writes run (set by `start`); None: no read-ahead.
        self.background: trio.Nursery | None = None
        self.streams_started = 0
        #: Files fetched whole ahead of a reader walking the tree (`fetch_ahead`).
        self.files_ahead = 0
        #: Handles holding a whole-file GET opened at their open (`BODIES_AT_OPEN`).
        self._bodies_at_open = 0
        #: The streams of files fetched ahead, by version (`fetch_ahead`).
        self._ahead: cachetools.LRUCache[str, SequentialStream] = cachetools.LRUCache(AHEAD_KEPT)
        #: Reads derived files (zip members, LAS views) through this store; set by the mount.
        self.derived: DerivedFiles | None = None

    def start(self, nursery: trio.Nursery) -> None:
        """Run read-ahead and the page-cache/disk writer in *nursery* (the mount's)."""
        self.background = nursery
        self._blocks.background = nursery
        nursery.start_soon(self._sink.run)

    async def aclose(self) -> None:
        """At unmount: write the blocks still on their way to the disk cache."""
        await self._sink.aclose()

    # -- what is kept per file ------------------------------------------------

    def forget(self, key: str) -> None:
        """Drop everything kept for the file *key* (its size, document, lock, signed URL).

        Called once the kernel has forgotten every inode of the file and no handle is
        open on it, so memory follows what is in use; blocks stay in the caches, which
        are bounded on their own.
        """
        self._stats.pop(key, None)
        self._static.pop(key, None)
        self._static_sizes.pop(key, None)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]
        self._fetcher.forget(key)

    def drop_sizes(self) -> None:
        """Expire every size and ETag learnt so far (a reload): the next stat asks storage.

        They expire rather than vanish, so the next stat probes storage (a size kept
        on disk is not taken instead) and a change it finds is acted on as at any TTL;
        while storage is down the last known size still serves. Open handles keep the
        version they pinned.
        """
        self._stats = {key: (stat, 0.0) for key, (stat, _expires) in self._stats.items()}
        self._static.clear()
        self._static_sizes.clear()

    @property
    def in_flight(self) -> int:
        """Blocks sequential streams have claimed and not yet received (budgeted)."""
        return self._readahead.budget_blocks - self._budget.value

    def table_sizes(self) -> dict[str, int]:
        """Entries of the per-file tables (for the status counters)."""
        return {
            "store_stats": len(self._stats),
            "store_static": len(self._static_sizes),
            "store_locks": len(self._locks),
        }

    # -- sizes -------------------------------------------------------------

    async def size(self, source: FileSource) -> int:
        if isinstance(source, DerivedFile):
            return await self._derived().size(source)
        if isinstance(source, StaticFile):
            if not source.live and trio.current_time() < self._static_sizes_until:
                known = self._static_sizes.get(source.key)
                if known is not None:
                    return known
            return len(await self._load_static(source))
        return (await self._remote_stat(source)).size

    def known_size(self, source: RemoteFile) -> int | None:
        """*source*'s size as far as it is known without a request (None: not known)."""
        cached = self._stats.get(source.key)
        if cached is not None:
            return cached[0].size
        return source.size if source.size else None

    async def _remote_stat(self, source: RemoteFile) -> RemoteStat:
        """Size and ETag: from memory while fresh, else from disk, the API, or one probe.

        When storage cannot be reached, the last known answer is kept (and said
        so): a file already seen keeps its size while the network is down.
        """
        cached = self._stats.get(source.key)
        if cached is not None and cached[1] > trio.current_time():
            return cached[0]
        async with self._lock(source.key):  # one probe per file, however many ask at once
            cached = self._stats.get(source.key)
            if cached is not None and cached[1] > trio.current_time():
                return cached[0]
            stat = None
            if cached is None and self._stat_cache is not None:
                stat = await self._stat_cache.load(source.key, source.hint)
            if stat is None and cached is None:
                stat = _stated(source)  # confirmed when read
            if stat is None:
                try:
                    stat = await self._fetcher.probe(source, HEAD_SIZE)
                except Unavailable as exc:
                    if cached is None:
                        raise
                    log.warning("%s: keeping the last known size for now (%s)", source.key, exc)
                    self._stats[source.key] = (cached[0], trio.current_time() + 5.0)
                    return cached[0]
                await self._from_storage(source, stat, cached[0] if cached else None)
            elif stat.stated:
                return stat  # the node's own: nothing to keep per file (`_current`)
            elif cached is not None and cached[0].etag != stat.etag and not cached[0].stated:
                self._changed(source, cached[0])
            self._stats[source.key] = (
                self._kept(source, stat),
                trio.current_time() + self._stat_ttl,
            )
            return stat

    def _current(self, source: RemoteFile) -> RemoteStat | None:
        """What the kernel has been shown of *source*: what storage said, else the size
        the API stated. A stated size is not kept per file but read off the node (a
        listing of thousands of files holds nothing more for it), until storage is
        asked: at the file's first open, or once a size kept on disk is found."""
        current = self._stats.get(source.key)
        return current[0] if current is not None else _stated(source)

    async def _from_storage(
        self, source: RemoteFile, stat: RemoteStat, old: RemoteStat | None
    ) -> None:
        """Storage answered *stat* (a probe's, or a fetch's head): learn it, and keep a
        head that is the whole file as its only block, like any other (a remount or
        --offline finds it on disk)."""
        await self._learnt(source, stat, old)
        if 0 < stat.size <= len(stat.head):
            await self._blocks.put(_version(source, stat), 0, stat.head)

    async def _learnt(self, source: RemoteFile, stat: RemoteStat, old: RemoteStat | None) -> None:
        """Storage told us *stat*: keep it (on disk too), and act on what it changes."""
        if self._stat_cache is not None:
            await self._stat_cache.save(source.key, source.hint, stat)
        if old is None:
            return
        if old.stated and old.size != stat.size:
            if source.key not in self._corrected:
                self._corrected.add(source.key)
                log.warning(
                    "%s: the API says %d bytes, storage has %d: showing storage's size",
                    source.key,
                    old.size,
                    stat.size,
                )
            # The kernel shows the stated size: it must ask again. This happens before any
            # read of the file (at its first open, or at a stat before it), never while
            # a read is in flight: a read answered short of a size the kernel has just
            # been told to forget would be filled up to it with zeros.
            if self.on_resize is not None:
                self.on_resize(source)
        elif not old.stated and old.etag != stat.etag:
            self._changed(source, old)

    async def _confirm(self, source: RemoteFile) -> RemoteStat:
        """A stated size checked against storage before the file is first read (at open).

        One probe: the ETag, the true size from its ``Content-Range``, and the file's
        first bytes. Checked at open rather than at the first read because a reader may
        begin anywhere (unzip reads a zip's end first, at the size it was shown): it
        must be shown the true size before it reads, as on a local disk.
        """
        async with self._lock(source.key):
            stated = self._current(source)
            if stated is not None and not stated.stated:
                return stated  # confirmed meanwhile
            stat = await self._fetcher.probe(source, HEAD_SIZE)
            await self._from_storage(source, stat, stated)
            self._stats[source.key] = (
                self._kept(source, stat),
                trio.current_time() + self._stat_ttl,
            )
            return stat

    def _kept(self, source: RemoteFile, stat: RemoteStat) -> RemoteStat:
        """*stat* as it is kept per file: without its head, which goes to the bounded
        store of heads (`_from_head` finds it there while it lasts)."""
        if not stat.head:
            return stat
        self._heads[_version(source, stat)] = stat.head
        return replace(stat, head=b"")

    def _from_head(
        self, source: RemoteFile, stat: RemoteStat, offset: int, end: int
    ) -> bytes | None:
        """Bytes *offset* to *end* of *source*'s version *stat* from its probe's head, or
        None where the head does not hold them. A head holds at most the first
        ``HEAD_SIZE`` bytes, so a read past them costs no look."""
        if end > HEAD_SIZE:
            return None
        head = stat.head or self._heads.get(_version(source, stat), b"")
        return head[offset:end] if end <= len(head) else None

    @asynccontextmanager
    async def _lock(self, key: str) -> AsyncIterator[None]:
        """The lock of *key* held; it is dropped when the last task waiting on it is done
        with it, so only files being probed right now have one."""
        lock = self._locks.setdefault(key, trio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(key, None)

    def _changed(self, source: RemoteFile, old: RemoteStat) -> None:
        log.info("%s changed remotely (new version); dropping its cached blocks", source.key)
        self._blocks.drop_version(_version(source, old))
        if self.on_change is not None:
            self.on_change(source)

    async def _load_static(self, source: StaticFile) -> bytes:
        if source.live:
            return await source.load()
        data = self._static.get(source.key)
        if data is not None:
            return data
        async with self._lock(source.key):  # one API call, however many ask at once
            data = self._static.get(source.key)
            if data is None:
                data = await source.load()
                self._static[source.key] = data
                now = trio.current_time()
                if now >= self._static_sizes_until:
                    self._static_sizes.clear()
                    self._static_sizes_until = now + self._static_ttl
                self._static_sizes[source.key] = len(data)
        return data

    # -- bytes -------------------------------------------------------------

    async def open(
        self,
        source: FileSource,
        cached_version: str | None = None,
        push: Push | None = None,
        fetch: bool = False,
    ) -> OpenFile:
        """A handle on *source*'s current version.

        *cached_version* is the version whose pages the kernel may still hold for this
        file; if it is the current one the handle counts as having shown bytes already.
        *push* writes blocks into the kernel's page cache for this handle's file.

        With *fetch* (a process opens the file: it most likely reads it from its start),
        a size the API stated, of a file a first read from the start fetches whole, is
        confirmed by the request that fetches it (`_confirm_fetching`), as the walk-ahead
        does: one round trip at open, not a probe and then the stream's request at the
        first read. A first read elsewhere cancels that request (at most what a socket
        buffer holds was fetched in vain); so does a close without a read.
        """
        if isinstance(source, DerivedFile):
            return await self._derived().open(source, cached_version, push)
        config = self._readahead
        handle = OpenFile(
            source, ReadAhead(initial=config.initial, maximum=config.maximum), push=push
        )
        if isinstance(source, StaticFile):  # one handle reads one consistent document
            handle.snapshot = await self._load_static(source)
        elif isinstance(source, RemoteFile):
            if fetch:
                stat, handle.body = await self._check_fetching(source, held=True)
            else:
                stat = await self.check(source)
            handle.version = _version(source, stat)
            handle.shown = cached_version is not None and same_version(
                cached_version, handle.version
            )
        return handle

    async def check(self, source: RemoteFile) -> RemoteStat:
        """*source*'s size and ETag as storage has them: what an open needs (a size the
        API stated is confirmed at storage first, see `_confirm`)."""
        stat = await self._remote_stat(source)
        if stat.stated:
            stat = await self._confirm(source)
        return stat

    async def check_ahead(self, source: RemoteFile) -> None:
        """What an open of *source* waits on, done ahead of a reader about to open it,
        without moving file bytes (`cupixfs.fs.walk`, beyond what it fetches whole).

        A size the API stated, of a file a first read would fetch whole, is left to
        that fetch (`fetch_ahead` confirms it with the request that brings the bytes):
        only its signed URL is resolved now. Any other size is checked (`check`).
        """
        stat = await self._remote_stat(source)
        if self._fetch_confirms(stat):
            await self._fetcher.resolve(source)
        else:
            await self.check(source)

    async def fetch_ahead(self, source: RemoteFile, push: Callable[[], Push | None]) -> str | None:
        """Fetch *source* whole into the caches, as a reader's first read from its start
        would, for a reader that is about to open it (`cupixfs.fs.walk`).

        The size is checked at storage first (what the open would do): a size the API
        stated, by the very request that fetches the file (`_confirm_fetching`). Only a
        file the first read would fetch whole (at most ``WHOLE_FILE``) is fetched; its
        blocks go to *push* (called once the size is checked, so that it belongs to the
        version the kernel is shown) as they arrive. Returns the version fetched (None:
        not fetched).
        """
        stat, opened = await self._check_fetching(source)
        if (
            self.background is None
            or stat.size > WHOLE_FILE
            or self._from_head(source, stat, 0, stat.size) is not None
        ):
            if opened is not None:
                opened.cancel()
            return None
        version = _version(source, stat)
        self.files_ahead += 1
        stream = self._stream(source, stat, version, 0, push(), opened)
        self._ahead[version] = stream
        self._run_stream(stream, 0, stat.size)
        return version

    async def _check_fetching(
        self, source: RemoteFile, held: bool = False
    ) -> tuple[RemoteStat, BodyStream | None]:
        """`check`, by the request that fetches the file whole where that request confirms
        the size (`_fetch_confirms`): the size, and that request's body, opened (None:
        checked otherwise). With *held* (an open handle keeps the body until its first
        read), only while fewer than ``BODIES_AT_OPEN`` are held, each holding a connection.
        """
        stat = await self._remote_stat(source)
        if not self._fetch_confirms(stat) or (held and self._bodies_at_open >= BODIES_AT_OPEN):
            return await self.check(source), None
        body = None
        self._bodies_at_open += held  # taken before waiting: opens run concurrently
        try:
            stat, body = await self._confirm_fetching(source, stat)
        finally:
            if held and body is None:
                self._bodies_at_open -= 1
        return stat, body

    def _fetch_confirms(self, stat: RemoteStat) -> bool:
        """Whether the walk's whole-file fetch confirms this size (`_confirm_fetching`):
        one the API stated, of a file fetched whole, beyond what a probe would hold."""
        return stat.stated and self.background is not None and HEAD_SIZE < stat.size <= WHOLE_FILE

    async def _confirm_fetching(
        self, source: RemoteFile, stated: RemoteStat
    ) -> tuple[RemoteStat, BodyStream | None]:
        """`_confirm`, by the request that fetches the file whole: one request, not a
        probe and then the fetch. Returns the size confirmed, and that request's body,
        opened (its head read), for the stream that will receive it.

        Storage that disagrees with the stated size answers another range than the
        one asked (a smaller file) or states a larger total: the size is then confirmed
        the usual way, by a probe (`check`), and nothing is fetched with this request.
        """
        async with self._lock(source.key):
            current = self._current(source)
            if current is not None and not current.stated:
                return current, None  # confirmed meanwhile
            body = BodyStream(self._fetcher, source, 0, stated.size, None)
            try:
                await body.open()
            except (ProtocolError, RemoteChanged) as exc:  # not the range asked for
                log.debug("%s: fetching it whole did not confirm its size: %s", source.key, exc)
            else:
                if body.total == stated.size:
                    stat = RemoteStat(stated.size, body.etag, b"")
                    await self._from_storage(source, stat, stated)
                    self._stats[source.key] = (stat, trio.current_time() + self._stat_ttl)
                    return stat, body
                body.cancel()
        return await self.check(source), None

    def held(self, source: RemoteFile, version: str) -> list[tuple[int, Block]]:
        """``(offset, bytes)`` of the blocks of *source*'s *version* in memory."""
        bs, size = self._blocks.block_size, self.known_size(source) or 0
        found = ((i * bs, self._blocks.cached(version, i)) for i in range(-(-size // bs)))
        return [(offset, data) for offset, data in found if data is not None]

    def _take_body(self, handle: OpenFile) -> BodyStream | None:
        """The handle's whole-file GET opened at open, now the caller's to use or cancel."""
        body, handle.body = handle.body, None
        if body is not None:
            self._bodies_at_open -= 1
        return body

    @property
    def uncached_blocks(self) -> int:
        """Blocks whose push or disk write failed with an unexpected error (see `Sink`)."""
        return self._sink.failed

    def release(self, handle: OpenFile) -> None:
        """The file was closed: stop its stream (claimed blocks go to other readers)."""
        if (body := self._take_body(handle)) is not None:
            body.cancel()
        if isinstance(handle.source, DerivedFile) and self.derived is not None:
            self.derived.release(handle)
        if handle.stream is not None:
            handle.stream.close()
            handle.stream = None

    async def read(self, handle: OpenFile, offset: int, size: int, exact: bool = False) -> Buffer:
        """*size* bytes at *offset* of the handle's version.

        *exact* is for a view's small reads at scattered places (a zip's central
        directory, one small member): blocks already held serve them as usual, but
        missing bytes are fetched as exactly this range, with no read-ahead, and not
        kept as blocks. Rounding such a read up to whole blocks would move up to a
        block (1 MiB) for a few KiB.
        """
        source = handle.source
        if isinstance(source, DerivedFile):
            return await self._derived().read(handle, offset, size)
        if handle.snapshot is not None:
            return handle.snapshot[offset : offset + size]
        if isinstance(source, StaticFile):
            return (await self._load_static(source))[offset : offset + size]
        for _ in range(MAX_VERSION_RESTARTS):
            stat = await self._remote_stat(source)
            if stat.stated:  # its sizes were dropped (a reload) since the open
                stat = await self._confirm(source)
            version = _version(source, stat)
            if handle.version != version:
                if handle.shown and not same_version(handle.version, version):
                    raise RemoteChanged(
                        f"{source.key} changed remotely while open; reopen it to read the "
                        "new version"
                    )
                handle.version = version  # nothing shown yet (or only its size was new)
                self.release(handle)
            try:
                if exact:
                    data = await self._read_exact(source, stat, offset, size)
                else:
                    data = await self._read_remote(handle, source, stat, offset, size)
            except RemoteChanged as exc:
                log.info("%s; dropping the old version", exc)
                self._stats.pop(source.key, None)
                if self._stat_cache is not None:
                    await self._stat_cache.drop(source.key)
                self._changed(source, stat)
                self.release(handle)
                continue
            handle.shown = True
            return data
        raise Unavailable(f"{source.key}: the remote file keeps changing")

    async def _read_remote(
        self,
        handle: OpenFile,
        source: RemoteFile,
        stat: RemoteStat,
        offset: int,
        size: int,
    ) -> Buffer:
        end = min(offset + size, stat.size)
        if offset >= end:
            return b""
        version = _version(source, stat)
        stream = handle.stream
        delivered = 0  # where the blocks pushed into the page cache for this reader end
        if stream is not None and handle.push is not None and stream.version == version:
            delivered = stream.next * self._blocks.block_size  # stopped or not: they stay
        window = handle.readahead.observe(offset, end - offset, delivered)
        if offset == 0 and handle.readahead.reads == 1 and stat.size <= WHOLE_FILE:
            window = handle.readahead.widen(stat.size)  # from its start: the whole file at once
        if handle.limit is not None:
            window = min(window, max(0, handle.limit - end))
        ahead = self._ahead.get(version)
        if ahead is not None and not ahead.stopped:
            window = 0  # being fetched whole, and pushed, ahead of this reader: no second stream
        body = self._take_body(handle)
        if body is not None and offset >= self._blocks.block_size:
            body.cancel()  # the first read is not from the start: not what it was opened for
            body = None
        if window and self.background is not None:
            if stream is not None and self._continues(stream, version, offset):
                stream.advance(end, window)
            else:
                self.release(handle)
                self._start_stream(handle, source, stat, version, offset, end, window, body)
                body = None
        else:
            self.release(handle)
        if body is not None:
            body.cancel()
        in_head = self._from_head(source, stat, offset, end)
        if in_head is not None:
            return in_head
        return await self._from_blocks(source, stat, offset, end)

    def _continues(self, stream: SequentialStream, version: str, offset: int) -> bool:
        """Whether a read at *offset* of *version* goes on with *stream*: it is running,
        or it is done to the file's end and the reader reads on towards that end (nothing
        is left to fetch, and a new stream would only push again what the reader reads)."""
        if stream.version != version:
            return False
        if not stream.stopped:
            return True
        return stream.finished and offset + self._blocks.block_size >= stream.seen

    async def _read_exact(
        self, source: RemoteFile, stat: RemoteStat, offset: int, size: int
    ) -> Buffer:
        end = min(offset + size, stat.size)
        if offset >= end:
            return b""
        in_head = self._from_head(source, stat, offset, end)
        if in_head is not None:
            return in_head
        bs = self._blocks.block_size
        version = _version(source, stat)
        blocks = range(offset // bs, (end - 1) // bs + 1)
        held = self._blocks.is_known, self._blocks.on_disk
        if all(any(has(version, i) for has in held) for i in blocks):
            return await self._from_blocks(source, stat, offset, end)
        fetched = await self._fetcher.fetch(source, offset, end, stat.etag, end - offset)
        return fetched.pieces[0] if len(fetched.pieces) == 1 else b"".join(fetched.pieces)

    async def _from_blocks(
        self, source: RemoteFile, stat: RemoteStat, offset: int, end: int
    ) -> Buffer:
        """Bytes ``[offset, end)`` from the block cache, fetching missing blocks."""
        bs = self._blocks.block_size

        async def fetch_run(run_first: int, run_last: int) -> list[Block]:
            start = run_first * bs
            stop = min((run_last + 1) * bs, stat.size)
            return (await self._fetcher.fetch(source, start, stop, stat.etag, bs)).pieces

        first, last = offset // bs, (end - 1) // bs
        blocks = await self._blocks.get(_version(source, stat), first, last, fetch_run)
        skip = offset - first * bs
        if len(blocks) == 1:
            return memoryview(blocks[0])[skip : skip + (end - offset)]
        # Only the bytes asked for are joined (on the event loop): a 128 KiB read across
        # a block boundary copies 128 KiB, not the two MiB around it.
        tail = end - last * bs
        pieces = [memoryview(blocks[0])[skip:], *blocks[1:-1], memoryview(blocks[-1])[:tail]]
        return b"".join(pieces)

    def _start_stream(
        self,
        handle: OpenFile,
        source: RemoteFile,
        stat: RemoteStat,
        version: str,
        offset: int,
        end: int,
        window: int,
        opened: BodyStream | None = None,
    ) -> None:
        """Give the handle a sequential stream from *offset*'s block on; its first blocks
        are claimed before this returns, so the read that started it waits for them.
        *opened* is a body already opened from the file's start (see `open`)."""
        stream = self._stream(source, stat, version, offset, handle.push, opened)
        handle.stream = stream
        self._run_stream(stream, end, window)

    def _stream(
        self,
        source: RemoteFile,
        stat: RemoteStat,
        version: str,
        offset: int,
        push: Push | None,
        opened: BodyStream | None = None,
    ) -> SequentialStream:
        return SequentialStream(
            self._blocks,
            self._fetcher,
            self._sink,
            self._budget,
            source,
            version,
            stat.size,
            stat.etag,
            offset,
            push,
            opened,
        )

    def _run_stream(self, stream: SequentialStream, seen: int, window: int) -> None:
        """Start *stream* with *window* bytes past *seen* claimed at once."""
        assert self.background is not None
        self.streams_started += 1
        stream.advance(seen, window)
        stream.prime()
        self.background.start_soon(stream.run)

    def _derived(self) -> DerivedFiles:
        if self.derived is None:
            raise NotFound("derived files are not served by this mount")
        return self.derived


def _stated(source: RemoteFile) -> RemoteStat | None:
    """The size the API states for *source*, as a stat storage has not confirmed yet."""
    if source.size is None or source.size <= 0:
        return None
    return RemoteStat(source.size, None, b"", stated=True)


def _version(source: RemoteFile, stat: RemoteStat) -> str:
    """The cache name of one version of a remote file: key, ETag and size."""
    return f"{source.key}#{stat.etag or ''}#{stat.size}"


def same_version(old: str | None, new: str) -> bool:
    """Whether *new* names the same bytes as *old*: equal, or *old* was a stated size
    without an ETag that storage has since confirmed (or corrected)."""
    if old == new:
        return True
    if old is None:
        return False
    old_key, old_etag, _old_size = old.rsplit("#", 2)
    new_key, _new_etag, _new_size = new.rsplit("#", 2)
    return old_key == new_key and old_etag == ""
