"""Parts side by side for one sequential reader: taken where one flow is held back (a
link with a long round trip, whose window caps each flow), given up where the link itself
is the limit. The fake server paces blob bodies per connection (``blob_flow_mb_s``) or
across all of them (``blob_link_mb_s``), and counts the GETs it answers at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from cupixfs.data.stream import PART_BLOCKS
from cupixfs.fake.server import FakeServer
from tests.core.conftest import MiB, blob_bytes, inode_of, stack_of, video_path, videos


def _read_whole(server: FakeServer, capture_id: int, tmp_path: Path, **knobs: Any) -> int:
    """Read the largest video (40 MiB) from its start to its end as fast as it comes, with
    the fake's *knobs* set; the server's stats cover just that read. Returns the GETs at
    once its stream would have next."""
    video = videos(server)[0]
    got = bytearray()
    lanes: list[int] = []

    async def main() -> None:
        async with stack_of(server, tmp_path) as stack:
            inode = await inode_of(stack.vfs, video_path(capture_id, video))
            handle = await stack.data.open(stack.vfs.namespace.node(inode).source, None)
            with trio.fail_after(20):
                while chunk := await stack.data.read(handle, len(got), MiB):
                    got.extend(chunk)
            assert handle.stream is not None
            while not handle.stream.stopped:  # its last run is judged once all its parts end
                await trio.sleep(0.01)
            lanes.append(handle.stream.lanes)
            stack.data.release(handle)

    server.faults.update(**knobs)
    server.stats.reset()
    try:
        trio.run(main)
    finally:
        server.faults.reset()
    assert bytes(got) == blob_bytes(server, video)
    return lanes[0]


def _lengths(server: FakeServer) -> list[int]:
    return [end - start + 1 for _blob, start, end in server.stats.snapshot()["blob_ranges"]]


def test_a_reader_held_back_by_one_flow_gets_parts_side_by_side(
    server: FakeServer, capture_id: int, tmp_path: Path
) -> None:
    lanes = _read_whole(server, capture_id, tmp_path, blob_flow_mb_s=40)
    stats = server.stats.snapshot()
    assert stats["blob_in_flight_max"] >= 2, stats["blob_ranges"]  # GETs side by side
    lengths = _lengths(server)
    part = PART_BLOCKS * MiB
    assert lengths.count(part) >= 2, lengths  # in parts of 8 MiB
    assert len(lengths) <= 10, lengths  # still few requests: 40 MiB in at most ten
    assert lanes == 4, lengths  # they paid: more of them for the next run


def test_parts_that_only_share_the_link_are_given_up_for_one_body(
    server: FakeServer, capture_id: int, tmp_path: Path
) -> None:
    lanes = _read_whole(server, capture_id, tmp_path, blob_link_mb_s=40)
    stats = server.stats.snapshot()
    assert stats["blob_in_flight_max"] == 2, stats["blob_ranges"]  # tried with two, no more
    assert lanes == 1, _lengths(server)  # they did not pay: one body from then on


def test_parts_cut_short_or_refused_are_resumed_and_retried_to_the_right_bytes(
    server: FakeServer, capture_id: int, tmp_path: Path
) -> None:
    """Each part is a body of its own, with the same checks, resume and retries."""
    _read_whole(
        server, capture_id, tmp_path, blob_flow_mb_s=40, cut_rate=0.2, blob_error_rate=0.05, seed=7
    )
    stats = server.stats.snapshot()
    assert stats["blob_in_flight_max"] >= 2, stats["blob_ranges"]
    assert stats["faults_injected"], stats  # the faults did hit the read
