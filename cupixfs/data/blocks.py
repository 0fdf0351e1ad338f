"""The block cache: fixed-size blocks of remote files, in memory, shared fetches.

Block size is 1 MiB: large enough that one HTTP request's fixed cost (a round
trip, header parsing) is small next to its transfer, small enough that random
access (a zip's central directory, a PLY header) fetches little it does not
need. Blocks are keyed by ``(version, index)`` where *version* names the remote
object *and* its ETag, so two versions of a file can never be mixed.

Misses are fetched as contiguous runs (one ranged GET per run, split into parts
of at most *max_part_blocks*), concurrently; a block already being fetched by
another reader is waited for, never fetched twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import cachetools
import trio

from cupixfs.errors import unwrap

BLOCK_SIZE = 1 << 20

BlockKey = tuple[str, int]
#: Fetches blocks ``[first, last]`` of a version and returns their bytes, concatenated.
FetchRun = Callable[[int, int], Awaitable[bytes]]


@dataclass
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    waits: int = 0


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
    """Memory LRU of blocks (bounded in bytes) in front of a fetch function."""

    def __init__(
        self, memory_bytes: int, block_size: int = BLOCK_SIZE, max_part_blocks: int = 8
    ) -> None:
        self.block_size = block_size
        self.max_part_blocks = max_part_blocks
        self._memory: cachetools.LRUCache[BlockKey, bytes] = cachetools.LRUCache(
            maxsize=max(memory_bytes, block_size), getsizeof=len
        )
        self._pending: dict[BlockKey, _Pending] = {}
        self.stats = CacheStats()

    def cached(self, version: str, index: int) -> bool:
        return (version, index) in self._memory or (version, index) in self._pending

    async def get(self, version: str, first: int, last: int, fetch: FetchRun) -> list[bytes]:
        """Blocks *first*..*last* of *version*, from memory or fetched (each at most once)."""
        found: dict[int, bytes] = {}
        claimed: list[int] = []
        waiting: dict[int, _Pending] = {}
        for index in range(first, last + 1):
            key = (version, index)
            data = self._memory.get(key)
            if data is not None:
                found[index] = data
                self.stats.hits += 1
            elif key in self._pending:
                waiting[index] = self._pending[key]
                self.stats.waits += 1
            else:
                self._pending[key] = _Pending()
                claimed.append(index)
                self.stats.misses += 1
        if claimed:
            await self._fetch_claimed(version, claimed, fetch, found)
        for index, pending in waiting.items():
            await pending.done.wait()
            if pending.data is None:  # the other reader failed: try for ourselves
                pending.data = (await self.get(version, index, index, fetch))[0]
            found[index] = pending.data
        return [found[i] for i in range(first, last + 1)]

    async def _fetch_claimed(
        self, version: str, claimed: list[int], fetch: FetchRun, found: dict[int, bytes]
    ) -> None:
        async def fetch_run(run_first: int, run_last: int) -> None:
            data = await fetch(run_first, run_last)
            for offset, index in enumerate(range(run_first, run_last + 1)):
                block = data[offset * self.block_size : (offset + 1) * self.block_size]
                found[index] = block
                self.put(version, index, block)

        try:
            async with trio.open_nursery() as nursery:
                for run_first, run_last in runs(claimed, self.max_part_blocks):
                    nursery.start_soon(fetch_run, run_first, run_last)
        except BaseExceptionGroup as group:
            raise unwrap(group) from None
        finally:
            for index in claimed:  # wake waiters, whether we succeeded or not
                pending = self._pending.pop((version, index), None)
                if pending is not None:
                    pending.data = found.get(index)
                    pending.done.set()

    def put(self, version: str, index: int, block: bytes) -> None:
        self._memory[(version, index)] = block

    def drop_version(self, version: str) -> None:
        """Forget every block of one version (the remote file changed)."""
        for key in [k for k in self._memory if k[0] == version]:
            self._memory.pop(key, None)
