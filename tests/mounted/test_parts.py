"""Parts side by side through a real mount: a copy held back by one flow per GET (a link
with a long round trip, paced by the fake's ``blob_flow_mb_s``) gets GETs at once, and
every byte right."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from cupixfs.fake.sample import CaptureSpec, SampleSpec
from cupixfs.fake.server import FakeServer
from tests.mounted.helpers import sample_server, sha256_of, video_path

MiB = 1 << 20
#: Larger than a file fetched whole at its first read (32 MiB): it is read in runs.
LONG = SampleSpec(name="parts-tests", captures=(CaptureSpec("long", (72 * MiB + 7,)),))


@pytest.fixture(scope="module")
def long_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with sample_server(LONG, tmp_path_factory) as server:
        yield server


def test_a_copy_held_back_by_one_flow_gets_parts_side_by_side(
    mounter: Any, long_server: FakeServer, tmp_path: Path
) -> None:
    video = httpx.get(long_server.base_url + "/_fake/dataset").json()["videos"][0]
    long_server.faults.update(blob_flow_mb_s=60)
    try:
        with mounter(server=long_server, cache_dir=tmp_path / "cache") as m:
            copy = tmp_path / "copy.insv"
            shutil.copyfile(video_path(m.path, video), copy)
            status = json.loads((m.path / ".cupixfs" / "status").read_text())
    finally:
        long_server.faults.reset()
    assert sha256_of(copy) == video["file"]["sha256"]
    stats = long_server.stats.snapshot()
    assert stats["blob_in_flight_max"] >= 2, stats["blob_ranges"]
    parts = [r for r in stats["blob_ranges"] if r[2] - r[1] + 1 == 8 * MiB]
    assert len(parts) >= 2, stats["blob_ranges"]
    # The mount counts its parts too (the last one, the file's tail, is shorter).
    assert status["parts"] >= len(parts) and status["parts_given_up"] == 0, status
