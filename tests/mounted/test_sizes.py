"""Sizes the API states: shown without a request, checked by the first fetch, and corrected
(storage wins) when the API was wrong either way, with the bytes always right."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from cupixfs.fake.server import FakeServer
from tests.faults.conftest import blob_bytes, data_files, log_lines, pin_args


def _sub_files(dataset: dict[str, Any], stated: str) -> list[Any]:
    """The files of the sub whose API sizes are stated *stated* (see the sample data)."""
    subs = [pc for pc in dataset["pointclouds"] if pc.get("stated_size") == stated]
    assert subs, f"the test data has no sub stated {stated!r}"
    ids = {f"/{pc['id']}/" for pc in subs}
    return [f for f in data_files(dataset) if any(i in f.rel for i in ids)]


def _true_size_soon(path: Path, size: int) -> int:
    """The size stat shows, once the kernel has been told (it may take a moment)."""
    deadline = time.monotonic() + 5
    while os.stat(path).st_size != size and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.stat(path).st_size


def test_a_stated_size_needs_no_request_and_a_wrong_one_is_corrected(
    mounter: Any, fake: FakeServer, dataset: dict[str, Any]
) -> None:
    too_large = _sub_files(dataset, "wrong")  # the API says more bytes than storage has
    too_small = _sub_files(dataset, "short")  # the API says fewer
    with mounter(*pin_args(dataset)) as m:
        listed: dict[str, int] = {}
        for f in too_large + too_small:
            listed[f.rel] = os.stat(m.path / f.rel).st_size
        # Their sizes came with the listings: no request for any of them. (A PLY's header
        # is read to learn its LAS view's size; nothing else is.)
        asked = {r[0] for r in fake.stats.snapshot()["blob_ranges"]}
        assert not asked & {f.blob_id for f in too_large + too_small if "ply" not in f.rel}
        for f in too_large + too_small:
            if "ply" not in f.rel:  # (a PLY's header was read, which confirmed its size)
                assert listed[f.rel] != f.size, f"{f.rel}: the API's size is wrong here"
            path = m.path / f.rel
            assert path.read_bytes() == blob_bytes(fake, f.blob_id), f.rel
            assert _true_size_soon(path, f.size) == f.size, f.rel
        log = m.log_text()
    for f in too_large + too_small:
        key = f.rel.split("/")[2]
        said = log_lines(log, f"pointclouds/{key}", "storage has")
        assert said, f"no log line for {f.rel}"
    assert "Traceback" not in log
