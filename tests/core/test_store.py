"""`DataStore` and `BlockCache` under concurrency: shared fetches, cancelled readers, and the
mount-wide read-ahead budget."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from cupixfs.core.errors import Unavailable
from cupixfs.data import block_file
from cupixfs.data import store as store_module
from cupixfs.data.sources import StaticFile
from cupixfs.data.store import HEAD_SIZE, DataStore, ReadAheadConfig
from cupixfs.fake.server import FakeServer
from tests.core.conftest import MiB, blob_bytes, inode_of, stack_of, video_path, videos


def _ranges_over(server: FakeServer, blob_id: str, offset: int) -> list[list[int]]:
    """The byte ranges of *blob_id* the server was asked for that contain *offset*."""
    ranges = server.stats.snapshot()["blob_ranges"]
    return [r for r in ranges if r[0] == blob_id and r[1] <= offset <= r[2]]


def test_several_readers_of_one_block_share_one_fetch(
    server: FakeServer, capture_id: int, tmp_path: Path
) -> None:
    video = videos(server)[0]
    expected = blob_bytes(server, video)
    offset = 5 * MiB + 123
    results: list[bytes] = []

    async def main() -> None:
        async with stack_of(server, tmp_path) as stack:
            inode = await inode_of(stack.vfs, video_path(capture_id, video))
            handles = [(await stack.vfs.open(inode))[0] for _ in range(8)]
            server.faults.update(latency_s=0.3)  # so that all eight overlap the one fetch

            async def read(fh: int) -> None:
                results.append(await stack.vfs.read(fh, offset, 4096))

            async with trio.open_nursery() as nursery:
                for fh in handles:
                    nursery.start_soon(read, fh)

    trio.run(main)
    assert results == [expected[offset : offset + 4096]] * 8
    assert len(_ranges_over(server, video["file"]["blob_id"], offset)) == 1


def test_a_reader_cancelled_mid_fetch_leaves_no_one_stuck(
    server: FakeServer, capture_id: int, tmp_path: Path
) -> None:
    video = videos(server)[0]
    expected = blob_bytes(server, video)
    offset = 7 * MiB + 5
    got: dict[str, bytes] = {}

    async def main() -> None:
        async with stack_of(server, tmp_path) as stack:
            inode = await inode_of(stack.vfs, video_path(capture_id, video))
            first, second, third = [(await stack.vfs.open(inode))[0] for _ in range(3)]
            server.faults.update(latency_s=0.5)
            with trio.fail_after(8):  # a stuck waiter would hang here
                async with trio.open_nursery() as nursery:
                    cancelled = trio.CancelScope()

                    async def impatient() -> None:
                        with cancelled:
                            got["first"] = await stack.vfs.read(first, offset, 100)

                    async def waiter() -> None:
                        await trio.sleep(0.1)  # joins the first reader's fetch
                        got["second"] = await stack.vfs.read(second, offset, 100)

                    nursery.start_soon(impatient)
                    nursery.start_soon(waiter)
                    await trio.sleep(0.2)
                    cancelled.cancel()  # while the fetch waits on the server
                server.faults.update(latency_s=0)
                got["third"] = await stack.vfs.read(third, offset, 100)

    trio.run(main)
    assert "first" not in got
    assert got["second"] == got["third"] == expected[offset : offset + 100]


class Pushes:
    """A stand-in for the kernel's page cache: what was pushed, at which offsets."""

    def __init__(self) -> None:
        self.got: dict[int, bytes] = {}

    def __call__(self, offset: int, data: bytes) -> None:  # called from worker threads
        self.got[offset] = bytes(data)


async def _open(stack: Any, capture_id: int, video: dict[str, Any], push: Any = None) -> Any:
    inode = await inode_of(stack.vfs, video_path(capture_id, video))
    return await stack.data.open(stack.vfs.namespace.node(inode).source, None, push)


def test_a_sequential_read_is_one_request_and_its_blocks_reach_the_page_cache_ahead(
    server: FakeServer, capture_id: int, tmp_path: Path
) -> None:
    video = videos(server)[1]
    expected = blob_bytes(server, video)
    pushes = Pushes()
    got = bytearray()

    async def main() -> None:
        async with stack_of(server, tmp_path) as stack:
            handle = await _open(stack, capture_id, video, pushes)
            server.stats.reset()
            while chunk := await stack.data.read(handle, len(got), MiB):
                got.extend(chunk)
                await trio.sleep(0.02)  # a reader slower than the network: it is pushed to
            stack.data.release(handle)

    trio.run(main)
    assert bytes(got) == expected
    ranges = server.stats.snapshot()["blob_ranges"]
    assert len(ranges) == 1, ranges  # the whole (small) file in one GET, nothing twice
    assert len(pushes.got) >= 5, sorted(pushes.got)  # most of the file went ahead
    for offset, data in pushes.got.items():
        assert data == expected[offset : offset + len(data)], offset


class HeldPushes(Pushes):
    """Pushes that wait at a gate: the sink falls behind a reader at network speed."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def __call__(self, offset: int, data: bytes) -> None:
        self.gate.wait(10)
        super().__call__(offset, data)


def test_a_block_the_reader_has_read_by_its_turn_in_the_sink_is_not_pushed(
    server: FakeServer, capture_id: int, tmp_path: Path
) -> None:
    """A reader as fast as the network gets each block in a read's reply: a push queued
    for it would copy the same bytes into the kernel again (a cold read through a mount
    pushed a third of its bytes twice so)."""
    video = videos(server)[1]  # 12 MiB
    expected = blob_bytes(server, video)
    pushes = HeldPushes()
    got = bytearray()

    async def main() -> None:
        async with stack_of(server, tmp_path) as stack:
            handle = await _open(stack, capture_id, video, pushes)
            with trio.fail_after(10):
                got.extend(await stack.data.read(handle, 0, MiB))
                await trio.sleep(0.3)  # the stream has the whole file meanwhile, and ends
                while chunk := await stack.data.read(handle, len(got), MiB):
                    got.extend(chunk)
            pushes.gate.set()  # the sink goes on: everything queued has been read since
            await trio.sleep(0.2)
            stack.data.release(handle)
            # The stream was done at the file's end before the reader got there: the
            # reader's last reads went on with it, not with a new one that pushes again.
            assert stack.data.streams_started == 1

    trio.run(main)
    assert bytes(got) == expected
    # At most the two sink workers' first pushes, taken before the reader got there.
    assert len(pushes.got) <= 2, sorted(pushes.got)


def test_a_reader_that_jumps_over_pushed_blocks_goes_on_with_its_finished_stream(
    server: FakeServer, capture_id: int, tmp_path: Path
) -> None:
    """Blocks pushed ahead are read from the page cache without us: the next read that
    reaches us may be far ahead, and is still the same sequential reader, even once its
    stream has fetched everything and ended."""
    video = videos(server)[0]  # 40 MiB: the stream fetches up to 32 MiB ahead of the reader
    expected = blob_bytes(server, video)
    got: dict[int, bytes] = {}

    async def main() -> None:
        async with stack_of(server, tmp_path) as stack:
            handle = await _open(stack, capture_id, video, Pushes())
            for offset in range(0, 9 * MiB, MiB):  # then the window reaches the file's end
                got[offset] = bytes(await stack.data.read(handle, offset, MiB))
            with trio.fail_after(10):
                while handle.stream is None or not handle.stream.finished:
                    await trio.sleep(0.01)  # the rest of the file arrives (and is pushed)
            for offset in (30 * MiB, 31 * MiB):  # 21 MiB past the last read through us
                got[offset] = bytes(await stack.data.read(handle, offset, MiB))
            assert stack.data.streams_started == 1
            stack.data.release(handle)

    trio.run(main)
    for offset, data in got.items():
        assert data == expected[offset : offset + MiB], offset


def test_streams_stay_within_the_read_ahead_budget_and_give_it_back(
    server: FakeServer, capture_id: int, tmp_path: Path
) -> None:
    video = videos(server)[1]  # 12 MiB: its whole window is claimed at its first read
    expected = blob_bytes(server, video)
    pushes = Pushes()
    in_flight: list[int] = []
    got = bytearray()

    async def main() -> None:
        async with stack_of(server, tmp_path) as stack, trio.open_nursery() as nursery:
            data = DataStore(
                stack.fetcher, stack.blocks, readahead=ReadAheadConfig(budget_blocks=3)
            )
            data.start(nursery)

            async def watch() -> None:
                while True:
                    in_flight.append(data.in_flight)
                    await trio.sleep(0.001)

            nursery.start_soon(watch)
            inode = await inode_of(stack.vfs, video_path(capture_id, video))
            handle = await data.open(stack.vfs.namespace.node(inode).source, None, pushes)
            server.faults.update(latency_s=0.05)  # each request takes a while
            with trio.fail_after(10):  # the budget must not starve the stream
                while chunk := await data.read(handle, len(got), MiB):
                    got.extend(chunk)
                    await trio.sleep(0.01)
            server.faults.update(latency_s=0)
            data.release(handle)
            await trio.sleep(0.1)
            assert data.in_flight == 0  # the stream is gone: the budget is whole again
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert bytes(got) == expected
    assert max(in_flight) == 3  # the budget ran out, and never more was claimed
    for offset, pushed in pushes.got.items():
        assert pushed == expected[offset : offset + len(pushed)], offset


def test_a_stream_stopped_mid_fetch_leaves_no_reader_waiting_on_it_stuck(
    server: FakeServer, capture_id: int, tmp_path: Path
) -> None:
    video = videos(server)[1]  # 12 MiB: fetched whole from its first read
    expected = blob_bytes(server, video)
    got: dict[str, Any] = {}

    async def main() -> None:
        async with stack_of(server, tmp_path) as stack:
            sequential = await _open(stack, capture_id, video)
            other = await _open(stack, capture_id, video)
            server.faults.update(latency_s=0.3)  # the stream's GET is in flight a while
            with trio.fail_after(10):  # a waiter left waiting on a dead stream would hang
                async with trio.open_nursery() as nursery:

                    async def start_stream() -> None:
                        got["head"] = bytes(await stack.data.read(sequential, 0, MiB))

                    async def wait_on_it() -> None:
                        await trio.sleep(0.05)  # block 9 is the stream's by now
                        got["ninth"] = bytes(await stack.data.read(other, 9 * MiB, 100))

                    nursery.start_soon(start_stream)
                    nursery.start_soon(wait_on_it)
                    await trio.sleep(0.1)
                    stack.data.release(sequential)  # the file is closed: the stream stops
            server.faults.update(latency_s=0)

    trio.run(main)
    assert got["head"] == expected[:MiB]
    assert got["ninth"] == expected[9 * MiB : 9 * MiB + 100]


def test_a_far_seek_stops_the_stream_and_reads_only_what_it_needs(
    server: FakeServer, capture_id: int, tmp_path: Path
) -> None:
    video = videos(server)[0]  # 40 MiB: beyond what is fetched whole at once
    expected = blob_bytes(server, video)

    async def main() -> None:
        async with stack_of(server, tmp_path) as stack:
            handle = await _open(stack, capture_id, video)
            for i in range(4):
                assert (
                    await stack.data.read(handle, i * MiB, MiB) == expected[i * MiB : (i + 1) * MiB]
                )
            assert handle.stream is not None and handle.stream.window >= 4 * MiB
            server.stats.reset()
            far = 39 * MiB + 7
            assert await stack.data.read(handle, far, 10) == expected[far : far + 10]
            assert handle.stream is None  # random access now: no read-ahead
            ranges = server.stats.snapshot()["blob_ranges"]
            assert [(r[1], r[2]) for r in ranges if r[2] >= 30 * MiB] == [(39 * MiB, 40 * MiB - 1)]

    trio.run(main)


def test_a_stream_that_failed_is_replaced_not_waited_on(
    server: FakeServer, capture_id: int, tmp_path: Path
) -> None:
    video = videos(server)[0]  # 40 MiB
    expected = blob_bytes(server, video)

    async def main() -> None:
        async with stack_of(server, tmp_path, timeout=1.0) as stack:
            handle = await _open(stack, capture_id, video)
            assert await stack.data.read(handle, 0, MiB) == expected[:MiB]
            server.faults.update(outage=True)  # the stream's next request fails
            with trio.fail_after(10):
                for _ in range(3):  # each read fails, and none waits on the dead stream
                    with pytest.raises(Unavailable):
                        await stack.data.read(handle, 20 * MiB, MiB)
                server.faults.update(outage=False)
                got = await stack.data.read(handle, 20 * MiB, MiB)
            assert got == expected[20 * MiB : 21 * MiB]

    trio.run(main)


def test_an_exact_read_fetches_just_its_bytes_unless_their_blocks_are_held(
    server: FakeServer, capture_id: int, tmp_path: Path
) -> None:
    video = videos(server)[1]
    expected = blob_bytes(server, video)
    blob_id = video["file"]["blob_id"]
    spot, length = 3 * MiB + 1000, 5000

    async def main() -> None:
        async with stack_of(server, tmp_path) as stack:
            handle = await _open(stack, capture_id, video, None)
            server.stats.reset()
            got = await stack.data.read(handle, spot, length, exact=True)
            assert bytes(got) == expected[spot : spot + length]
            assert server.stats.snapshot()["blob_ranges"] == [[blob_id, spot, spot + length - 1]]
            # Not kept as a block: a plain read of the same place fetches its block.
            await stack.data.read(handle, spot, length)
            server.stats.reset()
            # Now the block is held: an exact read inside it moves nothing.
            got = await stack.data.read(handle, spot + 10, 100, exact=True)
            assert bytes(got) == expected[spot + 10 : spot + 110]
            assert server.stats.snapshot()["blob_ranges"] == []
            stack.data.release(handle)

    trio.run(main)


def test_a_file_being_fetched_ahead_gets_no_second_stream_from_its_reader(
    server: FakeServer, capture_id: int, tmp_path: Path
) -> None:
    """The walk-ahead's stream of a file is its reader's: a first read from the file's
    start (which would otherwise fetch it whole on a stream of its own) joins it."""
    video = videos(server)[1]
    expected = blob_bytes(server, video)
    got = bytearray()

    async def main() -> None:
        async with stack_of(server, tmp_path) as stack:
            inode = await inode_of(stack.vfs, video_path(capture_id, video))
            source = stack.vfs.namespace.node(inode).source
            server.faults.update(latency_s=0.2)  # the walk's stream is still on its way
            server.stats.reset()
            version = await stack.data.fetch_ahead(source, lambda: None)
            assert version is not None
            handle = await stack.data.open(source, None, None)
            started = stack.data.streams_started
            got.extend(await stack.data.read(handle, 0, MiB))  # while the walk's runs
            assert stack.data.streams_started == started
            while chunk := await stack.data.read(handle, len(got), MiB):
                got.extend(chunk)
            stack.data.release(handle)

    trio.run(main)
    assert bytes(got) == expected
    assert server.stats.snapshot()["blob_requests"] == 1  # the walk's one GET, and no other


def _open_cache_files(cache_dir: Path) -> list[str]:
    """This process's open files under *cache_dir*'s block files."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith(str(cache_dir / "blocks")):
            found.append(target)
    return found


def test_a_warm_sequential_read_opens_its_cache_file_once_and_closes_it(
    server: FakeServer, capture_id: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk cache's reader of a version is kept from one run of blocks to the next
    (the kernel's read-ahead of the file goes on), and closed when the stream stops:
    at the end of the file, or when its reader goes half way."""
    video = videos(server)[0]  # 40 MiB: many runs, as the window moves on
    expected = blob_bytes(server, video)
    opened: list[str] = []

    class Counted(block_file.RunReader):
        def __init__(self, path: str) -> None:
            super().__init__(path)
            opened.append(path)

    monkeypatch.setattr(block_file, "RunReader", Counted)
    got = bytearray()

    async def read_all(stack: Any, stop: int = len(expected)) -> None:
        handle = await _open(stack, capture_id, video, Pushes())
        while len(got) < stop and (chunk := await stack.data.read(handle, len(got), MiB)):
            got.extend(chunk)
            await trio.sleep(0.005)  # slower than the disk: the stream waits, runs restart
        stack.data.release(handle)

    async def main() -> None:
        async with stack_of(server, tmp_path) as stack:  # fills the disk cache
            await read_all(stack)
        for stop in (len(expected), 9 * MiB):  # to the end, then gone half way
            got.clear()
            server.stats.reset()
            async with stack_of(server, tmp_path) as stack:  # a new mount, same cache
                await read_all(stack, stop)
                with trio.fail_after(5):
                    while _open_cache_files(tmp_path / "cache"):
                        await trio.sleep(0.01)
                assert server.stats.snapshot()["blob_requests"] == 0
                assert stack.blocks.stats.disk_hits >= stop // MiB
            assert bytes(got[:stop]) == expected[:stop]
            assert len(opened) == 1, opened
            opened.clear()

    trio.run(main)


def test_a_push_or_disk_write_that_fails_unforeseen_costs_the_cache_not_the_read(
    server: FakeServer,
    capture_id: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The sink's pushes and disk writes are for later reads only: an error there that no
    one foresaw (a bug) is logged once with its traceback, and the read goes on."""
    video = videos(server)[1]
    expected = blob_bytes(server, video)

    def broken(*_args: Any) -> int:
        raise RuntimeError("a bug in the disk cache")

    def broken_push(_offset: int, _data: Any) -> None:
        raise RuntimeError("a bug in a push")

    monkeypatch.setattr(block_file, "write", broken)
    got = bytearray()

    async def main() -> None:
        async with stack_of(server, tmp_path) as stack:
            for _read in range(2):  # the store still serves after the failures
                got.clear()
                handle = await _open(stack, capture_id, video, broken_push)
                with trio.fail_after(20):
                    while chunk := await stack.data.read(handle, len(got), MiB):
                        got.extend(chunk)
                stack.data.release(handle)
                assert bytes(got) == expected
            assert stack.data.uncached_blocks >= len(expected) // MiB

    trio.run(main)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "not cached" in errors[0].getMessage()
    assert errors[0].exc_info is not None


def test_reads_across_block_boundaries_get_exactly_their_bytes(
    server: FakeServer, capture_id: int, tmp_path: Path
) -> None:
    """A read spanning blocks is joined from the pieces it needs: first, whole, last."""
    video = videos(server)[1]
    expected = blob_bytes(server, video)
    spans = [(MiB - 10, 30), (3 * MiB - 5, 2 * MiB + 17), (5 * MiB, MiB + 1), (7 * MiB + 1, MiB)]

    async def main() -> None:
        async with stack_of(server, tmp_path) as stack:
            handle = await _open(stack, capture_id, video)
            for _round in range(2):  # fetched for the reads, then held in memory
                for offset, size in spans:
                    got = await stack.data.read(handle, offset, size)
                    assert bytes(got) == expected[offset : offset + size], (offset, size)
            stack.data.release(handle)

    trio.run(main)


def test_a_document_size_is_remembered_for_at_most_the_listing_ttl(tmp_path: Path) -> None:
    """A ``meta.json`` lists without loading it again while its size is remembered, and
    shows a change once the TTL has passed since it was loaded."""
    document = [b"x" * 10]
    loads: list[int] = []

    async def load() -> bytes:
        loads.append(1)
        return document[0]

    source = StaticFile("pointclouds/1/meta.json", load)
    other = StaticFile("pointclouds/2/meta.json", load)

    async def main() -> None:
        store = DataStore(None, None, static_ttl=60.0)  # type: ignore[arg-type]
        assert await store.size(source) == 10
        await trio.sleep(50)
        assert await store.size(other) == 10
        document[0] = b"y" * 20
        assert await store.size(source) == 10 and len(loads) == 2  # remembered
        await trio.sleep(11)  # 61 s after the first load, 11 after the second
        assert await store.size(source) == 20 and len(loads) == 3
        await trio.sleep(50)  # 61 s after the second
        assert await store.size(other) == 20 and len(loads) == 4

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_probe_heads_are_kept_for_the_files_probed_last_within_a_bound(
    server: FakeServer, capture_id: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe's first 64 KiB serve a file's first reads without a request, but only for
    the files probed last: kept for every file listed, they grew with the listing."""
    monkeypatch.setattr(store_module, "HEADS_KEPT", 2 * HEAD_SIZE)
    listed = videos(server)  # four, each larger than a head

    async def main() -> None:
        async with stack_of(server, tmp_path) as stack:
            sources = [
                stack.vfs.namespace.node(
                    await inode_of(stack.vfs, video_path(capture_id, video))
                ).source
                for video in listed
            ]
            for source in sources:
                await stack.data.size(source)  # a probe each, in this order
            heads = stack.data._heads
            assert len(heads) == 2 and heads.currsize == 2 * HEAD_SIZE
            for source, video in zip(sources, listed, strict=True):
                stat = await stack.data._remote_stat(source)
                assert stat.head == b""  # not kept with the size
                head = stack.data._from_head(source, stat, 0, HEAD_SIZE)
                first_probed = source is sources[0] or source is sources[1]
                assert head == (None if first_probed else blob_bytes(server, video)[:HEAD_SIZE])
                assert stack.data._from_head(source, stat, 0, HEAD_SIZE + 1) is None
            # A file whose head is gone is read right all the same.
            handle = await stack.data.open(sources[0], None, None)
            assert await stack.data.read(handle, 0, 1000) == blob_bytes(server, listed[0])[:1000]
            stack.data.release(handle)

    trio.run(main)
