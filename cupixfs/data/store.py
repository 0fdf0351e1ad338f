"""The data layer's front door: size and read any file source.

`DataStore.stat` answers a file's size (probing remote files once, keeping
their first bytes); `DataStore.read` serves byte ranges through the block
cache, and starts over on the new version if the remote file changed under us,
so a read never returns a mix of two versions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from cupixfs.data.blocks import BlockCache
from cupixfs.data.fetch import RangeFetcher, RemoteStat
from cupixfs.data.sources import FileSource, RemoteFile, StaticFile
from cupixfs.errors import RemoteChanged, Unavailable, unwrap

log = logging.getLogger(__name__)

#: Bytes kept from the size probe: enough for file-type sniffing and most headers.
HEAD_SIZE = 64 * 1024
MAX_VERSION_RESTARTS = 3


@dataclass
class _Static:
    data: bytes
    expires: float


class DataStore:
    """Sizes and bytes of file sources, with caching and change detection."""

    def __init__(
        self,
        fetcher: RangeFetcher,
        blocks: BlockCache,
        stat_ttl: float = 600.0,
        static_ttl: float = 60.0,
        max_probes: int = 16,
        on_change: Callable[[FileSource], None] | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._blocks = blocks
        self._stat_ttl = stat_ttl
        self._static_ttl = static_ttl
        self._stats: dict[str, tuple[RemoteStat, float]] = {}
        self._static: dict[str, _Static] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._probe_limit = trio.CapacityLimiter(max_probes)
        self._on_change = on_change

    # -- sizes -------------------------------------------------------------

    async def size(self, source: FileSource) -> int:
        if isinstance(source, StaticFile):
            return len(await self._load_static(source))
        return (await self._remote_stat(source)).size

    async def sizes(self, sources: Sequence[FileSource]) -> list[int]:
        """Sizes of many files at once, probing at most *max_probes* at a time.

        This is what keeps ``ls -l`` of a large directory from stat-ing files one
        after another over the network.
        """
        result: list[int] = [0] * len(sources)

        async def one(i: int, source: FileSource) -> None:
            async with self._probe_limit:
                result[i] = await self.size(source)

        try:
            async with trio.open_nursery() as nursery:
                for i, source in enumerate(sources):
                    nursery.start_soon(one, i, source)
        except BaseExceptionGroup as group:
            raise unwrap(group) from None
        return result

    def known_size(self, source: FileSource) -> int | None:
        """The size if already known, without any network call."""
        if isinstance(source, StaticFile):
            entry = self._static.get(source.key)
            return len(entry.data) if entry else None
        cached = self._stats.get(source.key)
        return cached[0].size if cached else None

    async def _remote_stat(self, source: RemoteFile) -> RemoteStat:
        cached = self._stats.get(source.key)
        if cached is not None and cached[1] > trio.current_time():
            return cached[0]
        lock = self._locks.setdefault(source.key, trio.Lock())
        async with lock:  # one probe per file, however many ask at once
            cached = self._stats.get(source.key)
            if cached is not None and cached[1] > trio.current_time():
                return cached[0]
            stat = await self._fetcher.probe(source, HEAD_SIZE)
            if cached is not None and cached[0].etag != stat.etag:
                self._changed(source, cached[0])
            self._stats[source.key] = (stat, trio.current_time() + self._stat_ttl)
            return stat

    def _changed(self, source: RemoteFile, old: RemoteStat) -> None:
        log.info("%s changed remotely (new version); dropping cached blocks", source.key)
        self._blocks.drop_version(_version(source, old))
        if self._on_change is not None:
            self._on_change(source)

    async def _load_static(self, source: StaticFile) -> bytes:
        entry = self._static.get(source.key)
        if entry is not None and entry.expires > trio.current_time():
            return entry.data
        data = await source.load()
        self._static[source.key] = _Static(data, trio.current_time() + self._static_ttl)
        return data

    # -- bytes -------------------------------------------------------------

    async def read(self, source: FileSource, offset: int, size: int) -> bytes:
        if isinstance(source, StaticFile):
            return (await self._load_static(source))[offset : offset + size]
        for _ in range(MAX_VERSION_RESTARTS):
            stat = await self._remote_stat(source)
            try:
                return await self._read_remote(source, stat, offset, size)
            except RemoteChanged as exc:
                log.info("%s; starting the read over on the new version", exc)
                self._stats.pop(source.key, None)
                self._changed(source, stat)
        raise Unavailable(f"{source.key}: the remote file keeps changing")

    async def _read_remote(
        self, source: RemoteFile, stat: RemoteStat, offset: int, size: int
    ) -> bytes:
        end = min(offset + size, stat.size)
        if offset >= end:
            return b""
        if end <= len(stat.head):
            return stat.head[offset:end]
        bs = self._blocks.block_size
        first, last = offset // bs, (end - 1) // bs

        async def fetch_run(run_first: int, run_last: int) -> bytes:
            start = run_first * bs
            stop = min((run_last + 1) * bs, stat.size)
            return await self._fetcher.fetch(source, start, stop, stat.etag)

        blocks = await self._blocks.get(_version(source, stat), first, last, fetch_run)
        data = b"".join(blocks) if len(blocks) > 1 else blocks[0]
        skip = offset - first * bs
        return data[skip : skip + (end - offset)]


def _version(source: RemoteFile, stat: RemoteStat) -> str:
    """The cache name of one version of a remote file: key, ETag and size."""
    return f"{source.key}#{stat.etag or ''}#{stat.size}"
