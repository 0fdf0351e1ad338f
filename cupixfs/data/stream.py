"""One sequential reader's blocks, fetched ahead in order: from memory, from disk, or from
one long GET, and handed to the kernel's page cache before the reader asks.

A reader that reads a file from start to end (``cp``, ``rsync``, a point-cloud viewer
loading a file) is served by a `SequentialStream`:

- **Few, long requests.** Blocks missing from both caches come from one ranged GET for
  the run of them, at least the window long and twice the previous request, read only as
  far ahead of the reader as its window allows: when it is that far ahead it stops
  reading, and TCP's flow control holds the server back. A 512 MiB file costs a handful
  of requests, not one per block, and memory stays bounded.
- **Parts side by side where one flow is held back.** On a link with a long round trip
  one TCP flow gets one window per round trip, however fast the link. A stream whose
  reader keeps waiting for one body slower than `PARALLEL_BELOW` tries 8 MiB parts, two
  GETs at once, then four while they pay; where they do not (the link itself is the
  limit), it goes back to one body for good (`SequentialStream._adapt`).
- **Received on the other core.** The body is read in a worker thread (`BodyStream`);
  the event loop only learns that each block has arrived, so it keeps answering the
  kernel's reads meanwhile.
- **Claimed ahead.** Blocks inside the window are claimed (`BlockCache.claim`) before
  their bytes arrive, so a read that overtakes the stream waits for it instead of
  fetching the same bytes a second time. Claims are taken from a mount-wide budget of
  blocks in flight: when it runs out, streams wait, and memory stays bounded however
  many files are read at once.
- **Pushed into the page cache.** Each block is written into the kernel's page cache
  (``notify_store``) as it arrives, unless a read of it is already waiting (its reply
  carries it), so the reader's next reads are answered by the kernel without a round
  trip through this process -- that round trip, not the network, is what a sequential
  read through FUSE costs most. When the reader gets to the end of the window, its read
  reaches us and moves the window on.
- **Cached on the way.** Pushes and disk-cache writes are done by one `Sink` thread, in
  the order blocks arrived. Never by the thread receiving the body: a push waits for
  any kernel read of the same pages, and such a read may be waiting for the next block
  of that very body.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import trio

from cupixfs.core.errors import unwrap
from cupixfs.data.block_file import Block, RunReader
from cupixfs.data.blocks import BlockCache
from cupixfs.data.fetch import BodyStream, RangeFetcher
from cupixfs.data.sources import RemoteFile

log = logging.getLogger(__name__)

#: Parallel parts (see `SequentialStream._adapt`): at most this many GETs at once for one
#: reader, each this many blocks long (Mountpoint for S3 fetches 8 MiB parts too).
MAX_LANES = 4
PART_BLOCKS = 8
#: A body slower than this while the reader waits for it may be held back by its round
#: trip rather than by the link; one flow does far more on a LAN (and on this project's
#: loopback, 0.6-2 GB/s), where parts side by side would only cost CPU.
PARALLEL_BELOW = 200e6
#: What parts side by side must gain over one body to be kept.
PARALLEL_GAIN = 1.3
#: The shortest run a decision is made on: shorter ones measure the round trip, not the flow.
DECIDE_BLOCKS = 4

#: Writes bytes into the kernel's page cache at a byte offset (runs in a worker thread).
#: Any contiguous buffer will do: ``notify_store`` copies it into the kernel's pages.
Push = Callable[[int, bytes | memoryview], None]


@dataclass
class _Item:
    """One block on its way to the kernel's page cache and/or the disk cache."""

    version: str
    index: int
    data: Block
    push: Push | None
    write: bool


class Sink:
    """Pushes blocks into the page cache and writes them to the disk cache, in worker
    threads, in about the order they came.

    Its queue is bounded: a disk slower than the network slows the streams down instead
    of letting blocks pile up in memory. Threads put with `put_blocking`; the event loop
    with `put`, which only hops to a thread when the queue is full.
    """

    DEPTH = 16
    #: Two workers: a block's write waits on the device (O_DIRECT) as much as it works,
    #: and a second worker fills that wait (measured: the sink stops being what a cold
    #: read waits for).
    WORKERS = 2

    def __init__(self, blocks: BlockCache) -> None:
        self._blocks = blocks
        self._queue: queue.Queue[_Item | None] = queue.Queue(self.DEPTH)
        self._done = trio.Event()
        #: Blocks a push or a write failed for with an unexpected error (a bug).
        self.failed = 0

    def put_blocking(self, item: _Item) -> None:
        self._queue.put(item)

    async def put(self, item: _Item) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            await trio.to_thread.run_sync(self._queue.put, item)

    async def run(self) -> None:
        """The workers' life: until `aclose` (or, abandoned, the end of the mount)."""
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self.WORKERS):
                    nursery.start_soon(
                        partial(trio.to_thread.run_sync, abandon_on_cancel=True), self._work
                    )
        finally:
            self._done.set()

    async def aclose(self) -> None:
        """Take no more blocks, and return once those taken are written (at unmount:
        the last blocks of a read are in the disk cache for the next mount)."""
        for _ in range(self.WORKERS):
            await self.put(None)  # type: ignore[arg-type]
        await self._done.wait()

    def _work(self) -> None:
        disk, bs = self._blocks.disk, self._blocks.block_size
        while (item := self._queue.get()) is not None:
            try:
                if item.push is not None:
                    item.push(item.index * bs, item.data)
                if item.write and disk is not None and disk.enabled:
                    disk.put_sync(item.version, item.index, item.data)
            except Exception:
                # Both are for later reads only (the reader has the block from memory):
                # an error no one foresaw costs a refetch, never the mount. Said once
                # with its traceback, then counted.
                self.failed += 1
                level = logging.ERROR if self.failed == 1 else logging.DEBUG
                log.log(
                    level,
                    "block %d of %s: push or disk-cache write failed; not cached",
                    item.index,
                    item.version.split("#", 1)[0],
                    exc_info=True,
                )


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
        opened: BodyStream | None = None,
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
        #: Blocks claimed (each holding a token of the budget) and not delivered yet.
        self._claimed: set[int] = set()
        self._moved = trio.Event()
        self._scope = trio.CancelScope()
        self._request_blocks = 0
        self.requests = 0
        #: The network thread waits on this for the reader to move on (or for `close`).
        self._gate = threading.Condition()
        self._stopped = False
        #: The bodies being read now, cancelled by `close` (one, or one per part).
        self._receiving: set[BodyStream] = set()
        #: GETs at once for the next run of absent blocks, what one body did, and whether
        #: parts have failed to pay (this stream then keeps one body): see `_adapt`.
        self._lanes = 1
        self._single_rate = 0.0
        self._parts_off = False
        #: Blocks of the run being received that a reader was waiting for on arrival.
        self._waited = 0
        #: Blocks that arrived ahead of `next` (parts side by side arrive out of order).
        self._early: set[int] = set()
        #: A body already opened from *start* on (its response's head confirmed the
        #: size): the first request this stream would send, sent already.
        self._opened = opened
        self._token = trio.lowlevel.current_trio_token()
        #: The disk cache's reader of this version, kept from one run of blocks to the
        #: next, so that the kernel's read-ahead of the file goes on across them; only
        #: used, and closed, by a `_load` thread holding `_reading`.
        self._reader: RunReader | None = None
        self._reading = threading.Lock()

    # -- the owner's side ------------------------------------------------------------------

    def prime(self) -> None:
        """Claim the blocks of the first window now, before the reader that started us
        asks for them: it then waits for this stream instead of fetching them itself."""
        self._claim(self.next, self._fetch_limit())

    def advance(self, seen: int, window: int) -> None:
        """The reader read up to *seen*; keep *window* bytes ahead of it.

        The blocks the window now covers are claimed at once, so a read that comes
        before this stream has got to them waits for it rather than fetching them.
        """
        self.seen = max(self.seen, seen)
        self.window = window
        self._claim(self.next, self._fetch_limit())
        self._moved.set()

    def close(self) -> None:
        """Stop (the reader went, or seeks): claimed blocks are released to other readers."""
        self._stopped = True
        for body in list(self._receiving):
            body.cancel()  # a thread blocked on the socket gets an error now
        self._scope.cancel()
        self._moved.set()
        self._open_gate()

    # -- limits and claims -----------------------------------------------------------------

    @property
    def lanes(self) -> int:
        """GETs at once the next run of absent blocks may have (see `_adapt`)."""
        return self._lanes

    @property
    def finished(self) -> bool:
        """Every block to the file's end has been delivered (the stream then stops)."""
        return self.next >= self._count

    def _fetch_limit(self) -> int:
        """Blocks below this index may be fetched and claimed. With parts side by side,
        at least two rounds of them: the last part in flight must not wait for the reader
        to finish the first before it may read on."""
        ahead = self.window
        if self._lanes > 1:
            ahead = max(ahead, 2 * self._lanes * PART_BLOCKS * self._bs)
        return min(self._count, -(-(self.seen + ahead) // self._bs))

    @property
    def stopped(self) -> bool:
        """Closed, ended on an error, or `finished`: the owner starts a new stream if it
        wants one (not for a reader reading on to the end of a finished one)."""
        return self._stopped

    def _claim(self, first: int, end: int) -> None:
        """Claim the blocks of ``[first, end)`` nobody holds, while the budget allows."""
        if self._stopped:
            return  # nobody would fill them
        for index in range(first, end):
            if index in self._claimed:
                continue
            try:
                self._budget.acquire_nowait()
            except trio.WouldBlock:
                break  # the mount has enough in flight: go on once some has arrived
            if self._blocks.claim(self.version, index):
                self._claimed.add(index)
            else:
                self._budget.release()
        self._open_gate()

    def _release(self, index: int) -> None:
        self._claimed.discard(index)
        self._budget.release()

    def _ahead_push(self, index: int) -> Push | None:
        """What pushes block *index* if the reader is still behind it when its turn in
        the sink comes (None: pushing is off, or the reader has got there already)."""
        if self._push is None or not self._ahead_of_reader(index):
            return None
        return self._push_if_ahead

    def _ahead_of_reader(self, index: int) -> bool:
        """Whether the reader has neither read block *index* through us nor is waiting
        for it: a read's reply carries the block, and a push of it then only copies the
        same bytes into the kernel a second time. (Safe from any thread: it reads an int
        and one dict entry, and an answer a moment old costs at most one copy.)"""
        end = min((index + 1) * self._bs, self._size)
        return end > self.seen and not self._blocks.waited_for(self.version, index)

    def _push_if_ahead(self, offset: int, data: bytes | memoryview) -> None:
        """In the sink: push the block at *offset* unless the reader has got there since
        it was queued. On a cold read the kernel's own read-ahead asks for nearly every
        block before the network brings it, so most pushes queued would be such copies."""
        assert self._push is not None
        if self._ahead_of_reader(offset // self._bs):
            self._push(offset, data)

    def _open_gate(self) -> None:
        with self._gate:
            self._gate.notify_all()

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
                self._stopped = True
                self._open_gate()
                if self._reader is not None:
                    # Abandoned at the end of the mount: a `_load` that holds the lock
                    # may be blocked on a sink that is gone, and the mount must not wait.
                    trio.lowlevel.spawn_system_task(
                        partial(trio.to_thread.run_sync, abandon_on_cancel=True),
                        self._close_reader_when_free,
                    )
                if self._opened is not None:  # never read (its blocks came from elsewhere)
                    self._opened.cancel()
                    self._opened = None
                for index in list(self._claimed):
                    self._blocks.abandon(self.version, index)
                    self._release(index)

    async def _fill(self) -> None:
        blocks, version = self._blocks, self.version
        while self.next < self._count:
            index = self.next
            if index >= self._fetch_limit():
                await self._wait()
                continue
            mine = index in self._claimed
            if mine and blocks.on_disk(version, index):
                await self._from_disk(index)
            elif mine:
                await self._from_network(index)
            elif blocks.is_known(version, index):  # cached, or another's fetch
                data = await blocks.wait(version, index)
                if data is None:
                    continue  # their fetch failed: it is absent now, and ours to claim
                await self._deliver(index, data, fetched=False)
                self.next = index + 1
            else:  # not claimable now (the budget ran out): wait for blocks to arrive
                self._claim(index, self._fetch_limit())
                if index not in self._claimed:
                    await self._wait()

    async def _from_disk(self, first: int) -> None:
        """A run of our blocks the disk index holds, read and checked in a worker thread,
        each handed over as soon as it is read (a reader waits for one block, not the run)."""
        run: list[int] = []
        index = first
        while index in self._claimed and self._blocks.on_disk(self.version, index):
            run.append(index)
            index += 1
        # One thread, in order, with the same reader from run to run: the kernel's
        # read-ahead of the cache file keeps the disk busy while the thread checks and
        # hands on each block (`block_file.RunReader`). A reader opened per run would
        # start that read-ahead again at every run (measured warm, 512 MiB, alternating
        # pairs: 0.87-1.3 GB/s against 0.81-1.1 with three ``O_DIRECT`` threads).
        await trio.to_thread.run_sync(self._load, run, abandon_on_cancel=True)
        # A block that was missing or corrupt is still ours: the network path takes it.
        self.next = min((i for i in run if i in self._claimed), default=self.next)

    def _load(self, run: list[int]) -> None:
        """In a worker thread: read *run* off the disk cache, in order, until a block is
        missing or corrupt (the network path then takes it)."""
        version, disk = self.version, self._blocks.disk
        assert disk is not None
        with self._reading:
            if self._reader is None and not self._stopped:
                self._reader = disk.open_run(version)
            try:
                for index in run:
                    if self._stopped:
                        return
                    data = disk.get_sync(version, index, self._reader)
                    if data is None:
                        return
                    push = self._ahead_push(index)
                    self._token.run_sync_soon(self._loaded, index, data)
                    self._sink.put_blocking(_Item(version, index, data, push, False))
            finally:
                if self._stopped or run[-1] + 1 >= self._count:
                    self._close_reader()

    def _close_reader(self) -> None:
        """Close the disk cache reader (with `_reading` held: no `_load` uses it)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(OSError):
                reader.close()

    def _close_reader_when_free(self) -> None:
        """In a worker thread, once the stream has stopped: a `_load` abandoned on
        cancellation may still hold the reader; it stops at its next block."""
        with self._reading:
            self._close_reader()

    def _loaded(self, index: int, data: Block) -> None:
        """Back on the event loop: a block read from disk is kept, and its readers woken."""
        self.next = max(self.next, index + 1)
        if index not in self._claimed:
            return  # released since (the stream stopped): its readers fetch it themselves
        self._release(index)
        self._blocks.fill(self.version, index, data)
        self._blocks.stats.disk_hits += 1
        self._claim(self.next, self._fetch_limit())

    async def _deliver(self, index: int, data: Block, fetched: bool) -> None:
        """A block is ready on the event loop: to the page cache (and the disk cache)."""
        push = self._ahead_push(index)
        if push is not None or fetched:
            await self._sink.put(_Item(self.version, index, data, push, fetched))

    async def _from_network(self, first: int) -> None:
        """Stream the run of our absent blocks starting at *first*.

        The body is received in a worker thread (see `BodyStream`): it waits there
        while the reader is a window behind, tells the event loop of each block (which
        wakes whoever waits for it), then hands it to the sink.
        """
        blocks, version = self._blocks, self.version
        bs = self._bs
        # Each request asks for at least the window and twice the last one: few requests
        # for a long read, and little fetched in vain for a reader that soon stops.
        size = max(-(-self.window // bs), 2 * self._request_blocks, 1)
        end = first
        while end < min(self._count, first + size) and not (
            end > first and blocks.on_disk(version, end)
        ):
            if end not in self._claimed and blocks.is_known(version, end):
                break
            end += 1
        self._request_blocks = end - first
        parts = -(-(end - first) // PART_BLOCKS) if self._lanes > 1 else 1
        self._waited = 0
        started = trio.current_time()
        if parts > 1:
            await self._parts(first, end)
        else:
            await self._body(first, end)
        self._adapt(end - first, trio.current_time() - started, min(parts, self._lanes))

    async def _parts(self, first: int, end: int) -> None:
        """Blocks ``[first, end)`` as parts of `PART_BLOCKS`, up to `_lanes` GETs at once.
        A part starts when one ends, in order, so the parts in flight are the next ones
        the reader needs and stay within its window."""
        lanes = trio.Semaphore(self._lanes)

        async def part(start: int) -> None:
            self._fetcher.stats.parts += 1
            try:
                await self._body(start, min(start + PART_BLOCKS, end))
            finally:
                lanes.release()

        async with trio.open_nursery() as nursery:
            for start in range(first, end, PART_BLOCKS):
                await lanes.acquire()
                if self._stopped:
                    lanes.release()
                    break
                nursery.start_soon(part, start)

    async def _body(self, first: int, end: int) -> None:
        """Blocks ``[first, end)`` from one GET, received in a worker thread."""
        bs = self._bs
        body, self._opened = self._opened, None
        stop = min(end * bs, self._size)
        if body is None or body.position != first * bs or body.end < stop:
            if body is not None:  # opened by our owner for other blocks than these
                body.cancel()
            body = BodyStream(self._fetcher, self._source, first * bs, stop, self._etag)
            await body.open()
        self.requests += 1
        async with self._fetcher.streams:
            self._receiving.add(body)
            try:
                await trio.to_thread.run_sync(
                    self._receive, body, first, end, abandon_on_cancel=True
                )
            finally:
                self._receiving.discard(body)
                body.cancel()

    def _adapt(self, blocks: int, seconds: float, bodies: int) -> None:
        """How many GETs at once the next run may have, from how this run went.

        Parts side by side pay on a link whose round trip holds each flow back (a flow
        gets one window per round trip, and flows side by side add up), not where the
        link itself or this process is the limit (they would share it, and cost CPU and
        requests). So they are tried only where the reader waits for one body that is
        slower than `PARALLEL_BELOW`, and kept only while they beat that body by
        `PARALLEL_GAIN`; once they have not, this stream keeps one body.
        """
        if self._parts_off or blocks < DECIDE_BLOCKS or seconds <= 0:
            return
        rate = blocks * self._bs / seconds
        if bodies == 1:
            if 2 * self._waited >= blocks and rate < PARALLEL_BELOW:
                self._single_rate = rate
                self._lanes = max(self._lanes, 2)
            return
        if rate >= PARALLEL_GAIN * self._single_rate:
            self._lanes = min(MAX_LANES, 2 * bodies)
        else:
            log.debug(
                "%s: %d parts at once gave %.0f MB/s against one body's %.0f: one body",
                self._source.key,
                bodies,
                rate / 1e6,
                self._single_rate / 1e6,
            )
            self._lanes, self._parts_off = 1, True
            self._fetcher.stats.parts_given_up += 1

    # -- in the network thread ------------------------------------------------------------

    def _receive(self, body: BodyStream, first: int, end: int) -> None:
        """Read blocks ``[first, end)`` off *body* as the window and the budget allow."""
        bs, version = self._bs, self.version
        for index in range(first, end):
            with self._gate:
                while not self._stopped and not self._may_read(index):
                    self._gate.wait()
            if self._stopped:
                return
            data = body.read_exactly(min(bs, self._size - index * bs))
            ours = index in self._claimed
            # A block a reader waits for goes to the kernel in that read's reply.
            push = self._ahead_push(index) if ours else None
            self._token.run_sync_soon(self._arrived, index, data, ours)
            # After the event loop has been told (a read waiting for this block must
            # never wait for a push that waits for that read's pages):
            self._sink.put_blocking(_Item(version, index, data, push, ours))

    def _may_read(self, index: int) -> bool:
        """Whether the network thread may take block *index* off the socket now."""
        if index >= self._fetch_limit():
            return False
        # Ours to fill, or already someone else's (its bytes are then skipped).
        return index in self._claimed or self._blocks.is_known(self.version, index)

    # -- back on the event loop -------------------------------------------------------------

    def _arrived(self, index: int, data: Block, ours: bool) -> None:
        """A block came off the network: keep it, wake its readers, claim further on."""
        self._fetcher.stats.bytes += len(data)
        if index == self.next:
            self.next += 1
            while self.next in self._early:  # parts ahead of this one arrived first
                self._early.discard(self.next)
                self.next += 1
        elif index > self.next:
            self._early.add(index)
        if not ours or index not in self._claimed:
            return  # released since (the stream stopped): its readers fetch it themselves
        if self._blocks.waited_for(self.version, index):
            self._waited += 1
        self._release(index)
        self._blocks.fill(self.version, index, data)
        self._blocks.stats.fetched += 1
        self._blocks.stats.prefetched += 1
        self._claim(self.next, self._fetch_limit())
