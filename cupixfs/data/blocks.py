"""The block cache: fixed-size blocks of remote files in memory, then on disk, then fetched.

Block size is 1 MiB: large enough that a request's fixed cost (a round trip,
header parsing, a disk file) is small next to its transfer, small enough that
random access (a zip's central directory, a PLY header) fetches little it does
not need. Blocks are keyed by ``(version, index)``, where *version* names the
remote object *and* its ETag and size, so two versions of a file never mix.

A block being fetched is *claimed*: any other reader of it waits for that one
fetch (foreground reads and read-ahead alike), so concurrent readers of a file
cause one request per block. Misses are fetched as contiguous runs, split into
parts of at most *part_blocks*, concurrently.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import cachetools
import trio

from cupixfs.core.errors import ProtocolError, unwrap
from cupixfs.data.disk_cache import DiskCache

log = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20

BlockKey = tuple[str, int]
#: Fetches blocks ``[first, last]`` of a version and returns them, one bytes per block.
FetchRun = Callable[[int, int], Awaitable[list[bytes]]]


@dataclass
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    fetched: int = 0
    waits: int = 0
    prefetched: int = 0


def runs(indices: Sequence[int], max_len: int) -> list[tuple[int, int]]:
    """Group sorted block indices into ``(first, last)`` runs of at most *max_len* blocks."""
    result: list[tuple[int, int]] = []
    for index in indices:
        if result and index == result[-1][1] + 1 and index - result[-1][0] < max_len:
            result[-1] = (result[-1][0], index)
        else:
            result.append((index, index))
    return result


class BlockCache:
    """Memory LRU (bounded in bytes) over an optional `DiskCache`, over a fetch function."""

    def __init__(
        self,
        memory_bytes: int,
        disk: DiskCache | None = None,
        block_size: int = BLOCK_SIZE,
        part_blocks: int = 8,
    ) -> None:
        self.block_size = block_size
        self.part_blocks = part_blocks
        self.disk = disk
        self._memory: cachetools.LRUCache[BlockKey, bytes] = cachetools.LRUCache(
            maxsize=max(memory_bytes, 2 * block_size), getsizeof=len
        )
        self._pending: dict[BlockKey, _Pending] = {}
        self.stats = CacheStats()
        #: Where disk writes run in the background (set by the mount); None = inline.
        self.background: trio.Nursery | None = None
        self._write_queue = trio.Semaphore(8)  # runs of blocks waiting for the disk

    def is_known(self, version: str, index: int) -> bool:
        """In memory or being fetched (a disk check would cost a thread hop)."""
        key = (version, index)
        return key in self._memory or key in self._pending

    def _claim(
        self, version: str, indices: range | list[int]
    ) -> tuple[dict[int, bytes], list[int], dict[int, _Pending]]:
        """Split *indices* into found in memory, newly claimed by us, and pending elsewhere."""
        found: dict[int, bytes] = {}
        claimed: list[int] = []
        waiting: dict[int, _Pending] = {}
        for index in indices:
            key = (version, index)
            data = self._memory.get(key)
            if data is not None:
                found[index] = data
                self.stats.memory_hits += 1
            elif key in self._pending:
                waiting[index] = self._pending[key]
                self.stats.waits += 1
            else:
                self._pending[key] = _Pending()
                claimed.append(index)
        return found, claimed, waiting

    async def get(self, version: str, first: int, last: int, fetch: FetchRun) -> list[bytes]:
        """Blocks *first*..*last* of *version*: memory, disk, or one shared fetch each."""
        found, claimed, waiting = self._claim(version, range(first, last + 1))
        if claimed:
            await self._load_claimed(version, claimed, fetch, found)
        for index, pending in waiting.items():
            await pending.done.wait()
            if pending.data is None:  # the other fetch failed: try for ourselves
                pending.data = (await self.get(version, index, index, fetch))[0]
            found[index] = pending.data
        return [found[i] for i in range(first, last + 1)]

    def prefetch(
        self,
        version: str,
        indices: list[int],
        fetch: FetchRun,
        nursery: trio.Nursery,
        budget: trio.Semaphore,
    ) -> int:
        """Start fetching *indices* in the background, as far as *budget* allows.

        *budget* counts blocks in flight across the whole mount: when it is spent,
        read-ahead simply stops short (back-pressure), so a slow reader never makes
        memory grow. Returns how many blocks were started.
        """
        wanted = [i for i in indices if not self.is_known(version, i)]
        started = 0
        for run_first, run_last in runs(wanted, self.part_blocks):
            count = run_last - run_first + 1
            taken = 0
            while taken < count:
                try:
                    budget.acquire_nowait()
                except trio.WouldBlock:
                    break
                taken += 1
            if taken == 0:
                break
            run_last = run_first + taken - 1
            _found, claimed, _waiting = self._claim(version, range(run_first, run_last + 1))
            # Give back the budget of blocks someone claimed between the filter and here.
            for _ in range(taken - len(claimed)):
                budget.release()
            if claimed:
                started += len(claimed)
                nursery.start_soon(self._prefetch_run, version, claimed, fetch, budget)
            if taken < count:
                break
        return started

    async def _prefetch_run(
        self, version: str, claimed: list[int], fetch: FetchRun, budget: trio.Semaphore
    ) -> None:
        try:
            await self._load_claimed(version, claimed, fetch, {})
            self.stats.prefetched += len(claimed)
        except Exception as exc:  # a failed read-ahead is not an error: the read will retry
            log.debug("read-ahead of %d block(s) failed: %s", len(claimed), unwrap(exc))
        finally:
            for _ in claimed:
                budget.release()

    async def _load_claimed(
        self, version: str, claimed: list[int], fetch: FetchRun, found: dict[int, bytes]
    ) -> None:
        """Fill *found* with the *claimed* blocks (disk first, then network); wake waiters."""
        try:
            missing = claimed
            if self.disk is not None and self.disk.enabled:
                on_disk = await self.disk.get_many(version, claimed)
                for index, data in on_disk.items():
                    found[index] = data
                    self._memory[(version, index)] = data
                    self._wake(version, index, data)
                self.stats.disk_hits += len(on_disk)
                missing = [index for index in claimed if index not in on_disk]
            if missing:
                await self._fetch(version, missing, fetch, found)
        finally:
            for index in claimed:  # wake the remaining waiters, whether we succeeded or not
                self._wake(version, index, found.get(index))

    async def _fetch(
        self, version: str, missing: list[int], fetch: FetchRun, found: dict[int, bytes]
    ) -> None:
        async def fetch_run(run_first: int, run_last: int) -> None:
            data = await fetch(run_first, run_last)
            if len(data) != run_last - run_first + 1:
                raise ProtocolError(f"expected {run_last - run_first + 1} blocks, got {len(data)}")
            fetched: list[tuple[int, bytes]] = []
            for index, block in zip(range(run_first, run_last + 1), data, strict=True):
                found[index] = block
                self._memory[(version, index)] = block
                fetched.append((index, block))
                self._wake(version, index, block)  # readers need not wait for the disk
            self.stats.fetched += len(fetched)
            if self.disk is not None and self.disk.enabled:
                await self._store(version, fetched)

        try:
            async with trio.open_nursery() as nursery:
                for run_first, run_last in runs(missing, self.part_blocks):
                    nursery.start_soon(fetch_run, run_first, run_last)
        except BaseExceptionGroup as group:
            raise unwrap(group) from None

    def _wake(self, version: str, index: int, data: bytes | None) -> None:
        pending = self._pending.pop((version, index), None)
        if pending is not None:
            pending.data = data
            pending.done.set()

    async def _store(self, version: str, blocks: list[tuple[int, bytes]]) -> None:
        """Write blocks to disk in the background while the write queue has room, else inline.

        The queue bound keeps a disk slower than the network from holding an
        unbounded number of blocks in memory.
        """
        assert self.disk is not None
        disk = self.disk

        async def write() -> None:
            try:
                await disk.put_many(version, blocks)
            finally:
                self._write_queue.release()

        if self.background is not None:
            try:
                self._write_queue.acquire_nowait()
            except trio.WouldBlock:
                pass
            else:
                self.background.start_soon(write)
                return
        await disk.put_many(version, blocks)

    async def put(self, version: str, index: int, data: bytes) -> None:
        """Keep a block learnt some other way (a probe that read a small file whole)."""
        self._memory[(version, index)] = data
        if self.disk is not None and self.disk.enabled:
            await self._store(version, [(index, data)])

    def drop_version(self, version: str) -> None:
        """Forget every in-memory block of one version (the remote file changed)."""
        for key in [k for k in self._memory if k[0] == version]:
            self._memory.pop(key, None)
