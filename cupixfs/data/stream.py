"""One sequential reader's blocks, fetched ahead in order: from memory, from disk, or from
one long GET, and handed to the kernel's page cache before the reader asks.

A reader that reads a file from start to end (``cp``, ``rsync``, a point-cloud viewer
loading a file) is served by a `SequentialStream`:

- **One request for the rest of the file.** Blocks missing from both caches come from
  one ranged GET that runs to the end of the file (or to the next block a cache already
  holds), read only as far ahead of the reader as its window allows: when it is that far
  ahead it stops reading, and TCP's flow control holds the server back. So a 512 MiB
  file costs one request, not one per block, and memory stays bounded.
- **Claimed ahead.** Blocks inside the window are claimed (`BlockCache.claim`) before
  their bytes arrive, so a read that overtakes the stream waits for it instead of
  fetching the same bytes a second time.
- **Pushed into the page cache.** Each block is written into the kernel's page cache
  (``notify_store``) as it arrives, so the reader's next reads are answered by the kernel
  without a round trip through this process -- that round trip, not the network, is
  what a sequential read through FUSE costs most. Only blocks up to half the window
  ahead are pushed: the reader's read at the first block not pushed reaches us, says how
  far it has got, and moves the window on.
- **Cached on the way.** Blocks from the network go to the disk cache with their push,
  in the same worker-thread job; blocks on disk are read, checked and pushed in one job
  per run, with no thread hop for blocks the disk index knows are absent.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from cupixfs.core.errors import ProtocolError, unwrap
from cupixfs.data.blocks import BlockCache
from cupixfs.data.fetch import BodyStream, RangeFetcher
from cupixfs.data.sources import RemoteFile

log = logging.getLogger(__name__)

#: Writes a block into the kernel's page cache at a byte offset (runs in a worker thread).
Push = Callable[[int, bytes], None]


@dataclass
class _Item:
    """One block on its way to the kernel's page cache and/or the disk cache."""

    version: str
    index: int
    data: bytes
    push: Push | None
    write: bool


class Sink:
    """Pushes blocks into the page cache and writes them to the disk cache, in worker
    threads, in the order they came, a batch per thread hop.

    The channel is bounded: a disk slower than the network slows the streams down
    instead of letting blocks pile up in memory.
    """

    BATCH = 8

    def __init__(self, blocks: BlockCache, depth: int = 16) -> None:
        self._blocks = blocks
        self._send, self._receive = trio.open_memory_channel[_Item](depth)
        self._drained = trio.Event()

    async def put(self, item: _Item) -> None:
        await self._send.send(item)

    async def aclose(self) -> None:
        """Take no more blocks, and return once those taken are written (at unmount:
        the last blocks of a read are in the disk cache for the next mount)."""
        await self._send.aclose()
        await self._drained.wait()

    async def run(self) -> None:
        """Drain the channel until it is closed, or cancelled."""
        try:
            await self._drain()
        finally:
            self._drained.set()

    async def _drain(self) -> None:
        disk = self._blocks.disk
        async for first in self._receive:
            batch = [first]
            while len(batch) < self.BATCH:
                try:
                    batch.append(self._receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break

            def work(batch: list[_Item] = batch) -> None:
                for item in batch:  # pushes first: the reader waits for them, not for the disk
                    if item.push is not None:
                        item.push(item.index * self._blocks.block_size, item.data)
                if disk is not None and disk.enabled:
                    for item in batch:
                        if item.write:
                            disk.put_sync(item.version, item.index, item.data)

            await trio.to_thread.run_sync(work)


class SequentialStream:
    """Fills the blocks ahead of one sequential reader (see the module docstring).

    The owner calls `advance` on every read it sees and `close` when the reader goes
    or turns to random access; `run` is the background task.
    """

    def __init__(
        self,
        blocks: BlockCache,
        fetcher: RangeFetcher,
        sink: Sink,
        budget: trio.Semaphore,
        source: RemoteFile,
        version: str,
        size: int,
        etag: str | None,
        start: int,
        push: Push | None,
        body: BodyStream | None = None,
    ) -> None:
        self._blocks = blocks
        self._fetcher = fetcher
        self._sink = sink
        self._budget = budget
        self._source = source
        self.version = version
        self._size = size
        self._etag = etag
        self._push = push
        bs = blocks.block_size
        self._bs = bs
        self._count = (size + bs - 1) // bs
        #: The next block this stream delivers.
        self.next = start // bs
        #: Where the reader's last read through us ended, and how far ahead to go.
        self.seen = start
        self.window = 0
        self._claimed: set[int] = set()
        #: Delivered blocks waiting until the reader is close enough to push them.
        self._unpushed: deque[tuple[int, bytes]] = deque()
        self._moved = trio.Event()
        self._scope = trio.CancelScope()
        self._body = body  # a first GET already opened by the owner (it learnt the stat)
        self._request_blocks = 0
        self.requests = 0

    # -- the owner's side ------------------------------------------------------------------

    def advance(self, seen: int, window: int) -> None:
        """The reader read up to *seen*; keep *window* bytes ahead of it."""
        self.seen = max(self.seen, seen)
        self.window = window
        self._moved.set()

    def close(self) -> None:
        """Stop (the reader went, or seeks): claimed blocks are released to other readers."""
        self._scope.cancel()
        self._moved.set()

    # -- limits ------------------------------------------------------------------------------

    def _fetch_limit(self) -> int:
        """Blocks below this index may be fetched and claimed."""
        return min(self._count, -(-(self.seen + self.window) // self._bs))

    def _push_limit(self) -> int:
        """Blocks below this index may be pushed into the page cache."""
        return min(self._count, -(-(self.seen + self.window // 2) // self._bs))

    async def _wait(self) -> None:
        await self._moved.wait()
        self._moved = trio.Event()

    # -- the task ------------------------------------------------------------------------------

    async def run(self) -> None:
        with self._scope:
            try:
                await self._fill()
            except Exception as exc:  # the reader's own reads will meet the error, if real
                log.debug("%s: read-ahead stopped: %s", self._source.key, unwrap(exc))
            finally:
                for index in self._claimed:
                    self._blocks.abandon(self.version, index)
                self._claimed.clear()
                for _ in self._unpushed:
                    self._budget.release()
                self._unpushed.clear()
                if self._body is not None:
                    await self._body.aclose()

    def prime(self) -> None:
        """Claim the blocks of the first window now, before the reader that started us
        asks for them: it then waits for this stream instead of fetching them itself."""
        self._claim(self.next, self._fetch_limit())

    async def _fill(self) -> None:
        blocks, version = self._blocks, self.version
        while self.next < self._count:
            await self._flush_pushes()
            if self.next >= self._fetch_limit():
                await self._wait()
                continue
            index = self.next
            mine = index in self._claimed
            if not mine and blocks.is_known(version, index):  # cached, or another's fetch
                data = await blocks.wait(version, index)
                if data is None:
                    continue  # their fetch failed: it is absent now, and ours to fetch
                await self._deliver(index, data, fetched=False)
                self.next = index + 1
            elif blocks.on_disk(version, index):
                await self._from_disk(index)
            else:
                await self._from_network(index)
        while self._unpushed:  # all fetched: hand over the rest as the reader comes close
            await self._flush_pushes()
            if self._unpushed:
                await self._wait()

    def _ours(self, index: int) -> bool:
        """Claimed by us already, or claimable now."""
        if index in self._claimed:
            return True
        if self._blocks.claim(self.version, index):
            self._claimed.add(index)
            return True
        return False

    async def _from_disk(self, first: int) -> None:
        """A run of blocks the disk index holds: read, checked and kept in one thread hop."""
        blocks, version = self._blocks, self.version
        limit = self._fetch_limit()
        run: list[int] = []
        index = first
        while index < limit and blocks.on_disk(version, index) and self._ours(index):
            run.append(index)
            index += 1
        found = await blocks.load_from_disk(version, run)
        self._claimed.difference_update(found)
        for index in run:
            if index not in found:  # vanished or corrupt: still ours, the network takes it
                self.next = index
                return
            await self._deliver(index, found[index], fetched=False)
            self.next = index + 1

    async def _from_network(self, first: int) -> None:
        """Stream the run of absent blocks starting at *first*, up to the next cached one."""
        blocks, version = self._blocks, self.version
        bs = self._bs
        # Each request asks for at least the window and twice the last one: few requests
        # for a long read, and little fetched in vain for a reader that soon stops.
        size = max(-(-self.window // bs), 2 * self._request_blocks, 1)
        preopened = self._body is not None and self._body.position == first * bs
        last = -(-self._body.end // bs) if self._body is not None and preopened else self._count
        end = first
        while end < min(last, first + size) and (
            end in self._claimed or not blocks.is_known(version, end)
        ):
            if end > first and blocks.on_disk(version, end):
                break
            end += 1
        self._request_blocks = end - first
        stop = min(end * bs, self._size)
        body = self._body
        if body is None or body.position != first * bs:
            if body is not None:
                await body.aclose()
            body = BodyStream(self._fetcher, self._source, first * bs, stop, self._etag)
        else:
            body.end = stop
        self._body = body
        self.requests += 1
        async with self._fetcher.streams:
            leftover = memoryview(b"")
            index = first
            while index < end:
                limit = self._fetch_limit()
                while index >= limit:
                    await self._flush_pushes()
                    await self._wait()
                    limit = self._fetch_limit()
                self._claim(index, min(end, limit))
                want = min(bs, self._size - index * bs)
                parts: list[memoryview] = []
                while want:
                    if not leftover:
                        chunk = await body.next_chunk()
                        if not chunk:
                            raise ProtocolError(f"{self._source.key}: body ended early")
                        leftover = memoryview(chunk)
                    take = min(want, len(leftover))
                    parts.append(leftover[:take])
                    leftover = leftover[take:]
                    want -= take
                data = _joined(parts)
                if index in self._claimed:
                    self._claimed.discard(index)
                    blocks.fill(version, index, data)
                    blocks.stats.fetched += 1
                    blocks.stats.prefetched += 1
                    await self._deliver(index, data, fetched=True)
                index += 1
                self.next = index
        self._body = None
        await body.aclose()

    def _claim(self, first: int, end: int) -> None:
        """Claim every block of ``[first, end)`` nobody holds, so readers wait for us."""
        for index in range(first, end):
            if index not in self._claimed and self._blocks.claim(self.version, index):
                self._claimed.add(index)

    async def _deliver(self, index: int, data: bytes, fetched: bool) -> None:
        """A block is ready: push it now if the reader is close, else keep it for later
        (while the mount-wide budget lets us hold it); a block from the network also
        goes to the disk cache."""
        seen_block = self.seen // self._bs
        push = self._push if self._push is not None and index >= seen_block else None
        if push is not None and index >= self._push_limit():
            try:
                self._budget.acquire_nowait()
            except trio.WouldBlock:
                pass  # no room to hold it back: push it now, the kernel holds it instead
            else:
                self._unpushed.append((index, data))
                push = None
        if push is not None or fetched:
            await self._sink.put(_Item(self.version, index, data, push, fetched))

    async def _flush_pushes(self) -> None:
        """Push the kept blocks the reader has come close enough to."""
        limit = self._push_limit()
        seen_block = self.seen // self._bs
        while self._unpushed and self._unpushed[0][0] < limit:
            index, data = self._unpushed.popleft()
            self._budget.release()
            if index >= seen_block and self._push is not None:
                await self._sink.put(_Item(self.version, index, data, self._push, False))


def _joined(parts: list[memoryview]) -> bytes:
    """One block's bytes: the chunk itself when one chunk is exactly the block, else a join."""
    if len(parts) == 1:
        whole = parts[0].obj
        if isinstance(whole, bytes) and len(whole) == len(parts[0]):
            return whole
    return b"".join(parts)
