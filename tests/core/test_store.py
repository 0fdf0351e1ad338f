"""`DataStore` and `BlockCache` under concurrency: shared fetches, cancelled readers, and the
mount-wide read-ahead budget."""

from __future__ import annotations

from pathlib import Path

import trio

from cupixfs.data.blocks import BlockCache
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


def test_read_ahead_stops_where_the_budget_runs_out_and_gets_it_back() -> None:
    release = trio.Event()
    asked: list[tuple[int, int]] = []

    async def fetch(first: int, last: int) -> list[bytes]:
        asked.append((first, last))
        await release.wait()
        return [bytes([i]) * 16 for i in range(first, last + 1)]

    async def main() -> None:
        cache = BlockCache(memory_bytes=1 << 20, block_size=16, part_blocks=8)
        budget = trio.Semaphore(3)
        async with trio.open_nursery() as nursery:
            assert cache.prefetch("v", list(range(10)), fetch, nursery, budget) == 3
            assert budget.value == 0
            assert cache.prefetch("v", list(range(10, 20)), fetch, nursery, budget) == 0
            await trio.testing.wait_all_tasks_blocked()
            assert asked == [(0, 2)]  # one request for what the budget allowed
            release.set()
        assert budget.value == 3  # every block landed: the budget is whole again
        assert await cache.get("v", 0, 2, fetch) == [bytes([i]) * 16 for i in range(3)]
        assert asked == [(0, 2)]  # served from memory

    trio.run(main)
