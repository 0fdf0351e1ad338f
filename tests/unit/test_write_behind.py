"""Cache entries written behind the loop: a save returns before its file exists, the
newest entry of a file wins, what is queued is read back from the queue, and an unmount
writes the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.testing

from cupixfs.core import write_behind
from cupixfs.core.write_behind import WriteBehind
from cupixfs.data.fetch import RemoteStat
from cupixfs.data.stat_cache import StatCache


def test_saves_are_written_behind_in_order_and_all_by_the_unmount(tmp_path: Path) -> None:
    writer = WriteBehind()
    stats = StatCache(tmp_path, ttl=3600, writer=writer)
    stats.open()
    files = [tmp_path / f"entry-{n}.json" for n in range(50)]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            await trio.testing.wait_all_tasks_blocked()
            for n, path in enumerate(files):
                await writer.save(path, {"n": n})
            await writer.save(files[0], {"n": "newest"})  # replaces the queued one
            assert not any(path.exists() for path in files)  # nothing waited for the disk
            assert writer.pending(files[0]) == {"n": "newest"}
            # A size saved and not yet written is read back from the queue.
            await stats.save("videos/1", "hint", RemoteStat(123, "etag", b""))
            found = await stats.load("videos/1", "hint")
            assert found is not None and (found.size, found.etag) == (123, "etag")
            await writer.aclose()  # the unmount
            nursery.cancel_scope.cancel()
        assert [json.loads(p.read_text())["n"] for p in files] == ["newest", *range(1, 50)]
        assert writer.pending(files[0]) is None
        found = await stats.load("videos/1", "hint")  # now from its file
        assert found is not None and found.size == 123
        await writer.save(files[1], {"n": "after"})  # after the unmount: written at once
        assert json.loads(files[1].read_text())["n"] == "after"

    trio.run(main)
    assert writer.dropped == writer.failed == 0


def test_a_full_queue_or_a_failed_write_is_counted_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(write_behind, "QUEUED_AT_MOST", 3)
    writer = WriteBehind()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            await trio.testing.wait_all_tasks_blocked()
            for n in range(5):  # no checkpoint between them: the writer cannot run
                await writer.save(tmp_path / f"{n}.json", {"n": n})
            assert writer.dropped == 2
            await trio.testing.wait_all_tasks_blocked()  # written: room again
            await writer.save(tmp_path / "no-such-dir" / "x.json", {"n": 9})
            await writer.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert (writer.dropped, writer.failed) == (2, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.json", "1.json", "2.json"]
