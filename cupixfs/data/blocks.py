"""The block cache: fixed-size blocks of remote files in memory, then on disk, then fetched.

Block size is 1 MiB: large enough that a block's fixed costs (a disk file, a thread
hop, bookkeeping) are small next to its bytes, small enough that random access (a
zip's central directory, a PLY header) fetches little it does not need. Blocks are
keyed by ``(version, index)``, where *version* names the remote object *and* its ETag
and size, so two versions of a file never mix.

A block being fetched is *claimed*: any other reader of it waits for that one fetch
(foreground reads, read-ahead and sequential streams alike), so concurrent readers of
a file cause one request per block. The waiters of a claim are always woken, with the
block or with None when the fetch failed or was cancelled (they then try for
themselves). Misses of a random read are fetched as contiguous runs, split into parts
of at most *part_blocks*, concurrently.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import cachetools
import trio

from cupixfs.core.errors import ProtocolError, unwrap
from cupixfs.data.block_file import Block
from cupixfs.data.disk_cache import DiskCache

log = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20

BlockKey = tuple[str, int]
#: Fetches blocks ``[first, last]`` of a version and returns them, one bytes per block.
FetchRun = Callable[[int, int], Awaitable[list[Block]]]


@dataclass
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    data: Block | None = None
    #: Readers waiting for it (a kernel read in flight for these bytes, usually).
    waiters: int = 0


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
        self._memory: cachetools.LRUCache[BlockKey, Block] = cachetools.LRUCache(
            maxsize=max(memory_bytes, 2 * block_size), getsizeof=len
        )
        self._pending: dict[BlockKey, _Pending] = {}
        self.stats = CacheStats()
        #: Where disk writes run in the background (set by the mount); None = inline.
        self.background: trio.Nursery | None = None
        self._write_queue = trio.Semaphore(8)  # runs of blocks waiting for the disk

    # -- one block at a time (the sequential stream's view) ------------------------------

    def cached(self, version: str, index: int) -> Block | None:
        """The block if it is in memory (and counts as recently used)."""
        return self._memory.get((version, index))

    def is_known(self, version: str, index: int) -> bool:
        """In memory or being fetched (a disk check would cost a thread hop)."""
        key = (version, index)
        return key in self._memory or key in self._pending

    def on_disk(self, version: str, index: int) -> bool:
        """In the disk cache's index (no thread hop; the file may still turn out corrupt)."""
        return self.disk is not None and self.disk.has(version, index)

    def claim(self, version: str, index: int) -> bool:
        """Claim a block nobody holds or fetches: the caller must `fill` or `abandon` it."""
        key = (version, index)
        if key in self._memory or key in self._pending:
            return False
        self._pending[key] = _Pending()
        return True

    def fill(self, version: str, index: int, data: Block) -> bool:
        """A claimed block arrived: keep it and wake whoever waits for it; whether anyone
        did (then a reply is already carrying these bytes to the kernel)."""
        self._memory[(version, index)] = data
        return self._wake(version, index, data)

    def waited_for(self, version: str, index: int) -> bool:
        """Whether a reader waits for this block (safe to ask from any thread: one dict
        read; the answer may be a moment old, which costs at most one copy)."""
        pending = self._pending.get((version, index))
        return pending is not None and pending.waiters > 0

    async def wait(self, version: str, index: int) -> Block | None:
        """The block once whoever fetches it is done; None if that failed or nobody does."""
        data = self._memory.get((version, index))
        if data is not None:
            return data
        pending = self._pending.get((version, index))
        if pending is None:
            return None
        pending.waiters += 1
        await pending.done.wait()
        return pending.data

    def abandon(self, version: str, index: int) -> None:
        """A claimed block will not arrive: its waiters fetch it themselves."""
        self._wake(version, index, None)

    # -- ranges of blocks (a reader's view) --------------------------------------------

    def _claim(
        self, version: str, indices: range | list[int]
    ) -> tuple[dict[int, Block], list[int], dict[int, _Pending]]:
        """Split *indices* into found in memory, newly claimed by us, and pending elsewhere."""
        found: dict[int, Block] = {}
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

    async def get(self, version: str, first: int, last: int, fetch: FetchRun) -> list[Block]:
        """Blocks *first*..*last* of *version*: memory, disk, or one shared fetch each."""
        found, claimed, waiting = self._claim(version, range(first, last + 1))
        if claimed:
            await self._load_claimed(version, claimed, fetch, found)
        for pending in waiting.values():
            pending.waiters += 1
        for index, pending in waiting.items():
            await pending.done.wait()
            if pending.data is None:  # the other fetch failed: try for ourselves
                pending.data = (await self.get(version, index, index, fetch))[0]
            found[index] = pending.data
        return [found[i] for i in range(first, last + 1)]

    async def load_from_disk(self, version: str, claimed: list[int]) -> dict[int, Block]:
        """Read *claimed* blocks from disk in one thread hop; fill those found (intact).

        Blocks not found stay claimed: the caller fetches or abandons them.
        """
        if self.disk is None or not self.disk.enabled or not claimed:
            return {}
        on_disk = await self.disk.get_many(version, claimed)
        for index, data in on_disk.items():
            self.fill(version, index, data)
        self.stats.disk_hits += len(on_disk)
        return on_disk

    async def _load_claimed(
        self, version: str, claimed: list[int], fetch: FetchRun, found: dict[int, Block]
    ) -> None:
        """Fill *found* with the *claimed* blocks (disk first, then network); wake waiters."""
        try:
            missing = claimed
            if any(self.on_disk(version, index) for index in claimed):
                on_disk = await self.load_from_disk(version, claimed)
                found.update(on_disk)
                missing = [index for index in claimed if index not in on_disk]
            if missing:
                await self._fetch(version, missing, fetch, found)
        finally:
            for index in claimed:  # wake the remaining waiters, whether we succeeded or not
                self._wake(version, index, found.get(index))

    async def _fetch(
        self, version: str, missing: list[int], fetch: FetchRun, found: dict[int, Block]
    ) -> None:
        async def fetch_run(run_first: int, run_last: int) -> None:
            data = await fetch(run_first, run_last)
            if len(data) != run_last - run_first + 1:
                raise ProtocolError(f"expected {run_last - run_first + 1} blocks, got {len(data)}")
            fetched: list[tuple[int, Block]] = []
            for index, block in zip(range(run_first, run_last + 1), data, strict=True):
                found[index] = block
                self.fill(version, index, block)  # readers need not wait for the disk
                fetched.append((index, block))
            self.stats.fetched += len(fetched)
            await self.store(version, fetched)

        try:
            async with trio.open_nursery() as nursery:
                for run_first, run_last in runs(missing, self.part_blocks):
                    nursery.start_soon(fetch_run, run_first, run_last)
        except BaseExceptionGroup as group:
            raise unwrap(group) from None

    def _wake(self, version: str, index: int, data: Block | None) -> bool:
        pending = self._pending.pop((version, index), None)
        if pending is None:
            return False
        pending.data = data
        pending.done.set()
        return pending.waiters > 0

    async def store(self, version: str, blocks: list[tuple[int, Block]]) -> None:
        """Write blocks to disk in the background while the write queue has room, else inline.

        The queue bound keeps a disk slower than the network from holding an
        unbounded number of blocks in memory.
        """
        disk = self.disk
        if disk is None or not disk.enabled or not blocks:
            return

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

    async def put(self, version: str, index: int, data: Block) -> None:
        """Keep a block learnt some other way (a probe that read a small file whole)."""
        self._memory[(version, index)] = data
        await self.store(version, [(index, data)])

    def drop_version(self, version: str) -> None:
        """Forget every in-memory block of one version (the remote file changed)."""
        for key in [k for k in self._memory if k[0] == version]:
            self._memory.pop(key, None)
