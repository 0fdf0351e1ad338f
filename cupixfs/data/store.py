"""The data layer's front door: size, open and read any file source.

`DataStore.size` answers a file's size (probing a remote file once, keeping
its first bytes, and remembering the answer on disk for the next mount);
`DataStore.read` serves byte ranges through the block cache and drives
read-ahead for sequential readers. A handle is pinned to the version it opened:
if the remote file changes before the handle has shown any bytes, the read
simply moves to the new version; after that, it fails (EIO) rather than return
a mix of two versions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from cupixfs.core.errors import RemoteChanged, Unavailable
from cupixfs.data.blocks import BlockCache
from cupixfs.data.fetch import RangeFetcher, RemoteStat
from cupixfs.data.readahead import INITIAL_WINDOW, MAX_WINDOW, ReadAhead
from cupixfs.data.sources import FileSource, RemoteFile, StaticFile
from cupixfs.data.stat_cache import StatCache

log = logging.getLogger(__name__)

#: Bytes kept from the size probe: enough for file-type sniffing and most headers.
HEAD_SIZE = 64 * 1024
MAX_VERSION_RESTARTS = 3


@dataclass
class _Static:
    data: bytes
    expires: float


@dataclass
class OpenFile:
    """One open file handle: its source and its read-ahead state."""

    source: FileSource
    readahead: ReadAhead = field(default_factory=ReadAhead)
    #: A live document's bytes as of open(), so one handle reads one consistent snapshot.
    snapshot: bytes | None = None
    #: The remote version this handle reads; a handle never switches versions once it
    #: may have shown bytes of one (from us, or from the kernel's page cache).
    version: str | None = None
    shown: bool = False


@dataclass
class ReadAheadConfig:
    initial: int = INITIAL_WINDOW
    maximum: int = MAX_WINDOW
    #: Blocks in flight for read-ahead across the whole mount (the memory budget).
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
        self._static: dict[str, _Static] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._readahead = readahead or ReadAheadConfig()
        self._budget = trio.Semaphore(self._readahead.budget_blocks)
        self.on_change = on_change
        #: Where read-ahead runs (set by the mount); None disables read-ahead.
        self.background: trio.Nursery | None = None

    # -- what is kept per file ------------------------------------------------

    def forget(self, key: str) -> None:
        """Drop everything kept for the file *key* (its size, document, lock, signed URL).

        Called once the kernel has forgotten every inode of the file and no handle is
        open on it, so memory follows what is in use; blocks stay in the caches, which
        are bounded on their own.
        """
        self._stats.pop(key, None)
        self._static.pop(key, None)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]
        self._fetcher.forget(key)

    def drop_sizes(self) -> None:
        """Forget every size and ETag learnt so far (a reload): the next stat asks again.

        Open handles keep the version they pinned; a read on one that finds a new
        version fails as it would have at the next TTL.
        """
        self._stats.clear()
        self._static.clear()

    # -- sizes -------------------------------------------------------------

    async def size(self, source: FileSource) -> int:
        if isinstance(source, StaticFile):
            return len(await self._load_static(source))
        return (await self._remote_stat(source)).size

    async def _remote_stat(self, source: RemoteFile) -> RemoteStat:
        """Size and ETag: from memory while fresh, else from disk or one probe.

        When storage cannot be reached, the last known answer is kept (and said
        so): a file already seen keeps its size while the network is down.
        """
        cached = self._stats.get(source.key)
        if cached is not None and cached[1] > trio.current_time():
            return cached[0]
        lock = self._locks.setdefault(source.key, trio.Lock())
        async with lock:  # one probe per file, however many ask at once
            cached = self._stats.get(source.key)
            if cached is not None and cached[1] > trio.current_time():
                return cached[0]
            stat = None
            if cached is None and self._stat_cache is not None:
                stat = await self._stat_cache.load(source.key, source.hint)
            if stat is None:
                try:
                    stat = await self._fetcher.probe(source, HEAD_SIZE)
                except Unavailable as exc:
                    if cached is None:
                        raise
                    log.warning("%s: keeping the last known size for now (%s)", source.key, exc)
                    self._stats[source.key] = (cached[0], trio.current_time() + 5.0)
                    return cached[0]
                if self._stat_cache is not None:
                    await self._stat_cache.save(source.key, source.hint, stat)
                if 0 < stat.size <= len(stat.head):
                    # The probe read the whole file: that is its only block, so keep it
                    # like any other (a remount or --offline finds it on disk).
                    await self._blocks.put(_version(source, stat), 0, stat.head)
            if cached is not None and cached[0].etag != stat.etag:
                self._changed(source, cached[0])
            self._stats[source.key] = (stat, trio.current_time() + self._stat_ttl)
            return stat

    def _changed(self, source: RemoteFile, old: RemoteStat) -> None:
        log.info("%s changed remotely (new version); dropping its cached blocks", source.key)
        self._blocks.drop_version(_version(source, old))
        if self.on_change is not None:
            self.on_change(source)

    async def _load_static(self, source: StaticFile) -> bytes:
        if source.live:
            return await source.load()
        entry = self._static.get(source.key)
        if entry is not None and entry.expires > trio.current_time():
            return entry.data
        data = await source.load()
        self._static[source.key] = _Static(data, trio.current_time() + self._static_ttl)
        return data

    # -- bytes -------------------------------------------------------------

    async def open(self, source: FileSource, cached_version: str | None = None) -> OpenFile:
        """A handle on *source*'s current version.

        *cached_version* is the version whose pages the kernel may still hold for this
        file; if it is the current one the handle counts as having shown bytes already.
        """
        config = self._readahead
        handle = OpenFile(source, ReadAhead(initial=config.initial, maximum=config.maximum))
        if isinstance(source, StaticFile) and source.live:
            handle.snapshot = await source.load()
        elif isinstance(source, RemoteFile):
            handle.version = _version(source, await self._remote_stat(source))
            handle.shown = handle.version == cached_version
        return handle

    async def read(self, handle: OpenFile, offset: int, size: int) -> bytes:
        source = handle.source
        if handle.snapshot is not None:
            return handle.snapshot[offset : offset + size]
        if isinstance(source, StaticFile):
            return (await self._load_static(source))[offset : offset + size]
        for _ in range(MAX_VERSION_RESTARTS):
            stat = await self._remote_stat(source)
            version = _version(source, stat)
            if handle.version != version:
                if handle.shown:
                    raise RemoteChanged(
                        f"{source.key} changed remotely while open; reopen it to read the "
                        "new version"
                    )
                handle.version = version  # nothing shown yet: simply read the new one
            try:
                data = await self._read_remote(handle, source, stat, offset, size)
            except RemoteChanged as exc:
                log.info("%s; dropping the old version", exc)
                self._stats.pop(source.key, None)
                if self._stat_cache is not None:
                    await self._stat_cache.drop(source.key)
                self._changed(source, stat)
                continue
            handle.shown = True
            return data
        raise Unavailable(f"{source.key}: the remote file keeps changing")

    async def _read_remote(
        self, handle: OpenFile, source: RemoteFile, stat: RemoteStat, offset: int, size: int
    ) -> bytes:
        end = min(offset + size, stat.size)
        if offset >= end:
            return b""
        bs = self._blocks.block_size
        version = _version(source, stat)

        async def fetch_run(run_first: int, run_last: int) -> list[bytes]:
            start = run_first * bs
            stop = min((run_last + 1) * bs, stat.size)
            return await self._fetcher.fetch(source, start, stop, stat.etag, bs)

        window = handle.readahead.observe(offset, end - offset)
        if window and self.background is not None:
            ahead_first = (end - 1) // bs + 1
            ahead_last = (min(end + window, stat.size) - 1) // bs
            if ahead_first <= ahead_last:
                self._blocks.prefetch(
                    version,
                    list(range(ahead_first, ahead_last + 1)),
                    fetch_run,
                    self.background,
                    self._budget,
                )
        if end <= len(stat.head):
            return stat.head[offset:end]
        first, last = offset // bs, (end - 1) // bs
        blocks = await self._blocks.get(version, first, last, fetch_run)
        skip = offset - first * bs
        if len(blocks) == 1:
            return blocks[0][skip : skip + (end - offset)]
        return b"".join(blocks)[skip : skip + (end - offset)]


def _version(source: RemoteFile, stat: RemoteStat) -> str:
    """The cache name of one version of a remote file: key, ETag and size."""
    return f"{source.key}#{stat.etag or ''}#{stat.size}"
