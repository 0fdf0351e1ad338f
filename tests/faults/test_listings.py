"""The cost of the namespace, through a real mount: listings of many pages fetched at once yet
complete and in order under throttling, memory that shrinks when the kernel forgets, and no
empty folder for an id the API does not know."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest

from cupixfs.api.client import MAX_API_REQUESTS
from cupixfs.fake.server import FakeServer
from cupixfs.namespace.names import assign_names
from tests.faults.conftest import pin_args
from tests.mounted.oracle import Oracle


def test_a_listing_of_many_pages_is_complete_and_in_order_under_429_and_503(
    mounter: Any, fake: FakeServer, dataset: dict[str, Any]
) -> None:
    main = next(c for c in dataset["captures"] if c["name"] == "main")
    oracle = Oracle(fake)
    api_order = [
        v["attributes"]["name"]
        for v in oracle.list_all("videos", fields="id,name", capture_id=main["id"])
    ]
    clusters = sorted({str(pc["cluster_id"]) for pc in dataset["pointclouds"]}, key=int)
    with mounter("--per-page", "2", "--timeout", "20") as m:
        fake.faults.update(
            latency_s=0.03, api_429_rate=0.25, api_error_rate=0.15, retry_after_s=0, seed=7
        )
        fake.stats.reset()
        captures = os.listdir(m.path / "captures")  # pages and nothing else
        in_flight = fake.stats.snapshot()["api_in_flight_max"]
        videos = os.listdir(m.path / "captures" / str(main["id"]) / "videos")
        listed_clusters = os.listdir(m.path / "clusters")
        stats = fake.stats.snapshot()
    assert len(api_order) > 4 * 2  # more than four pages of 2
    assert videos == assign_names([(n, i) for i, n in enumerate(api_order)])  # the API's order
    assert captures == [str(c["id"]) for c in sorted(dataset["captures"], key=lambda c: c["id"])]
    assert listed_clusters == clusters
    faults = stats["faults_injected"]
    assert faults.get("api_429", 0) > 0 and faults.get("api_500", 0) + faults.get("api_503", 0) > 0
    assert in_flight > 1  # pages at once...
    assert stats["api_in_flight_max"] <= MAX_API_REQUESTS  # ...within the mount's bound


def _drop_dentries() -> None:
    Path("/proc/sys/vm/drop_caches").write_text("2\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping the kernel's dentries needs root")
def test_after_the_kernel_forgets_the_memory_tables_shrink(
    mounter: Any, dataset: dict[str, Any]
) -> None:
    with mounter(*pin_args(dataset)) as m:
        entries = 0
        for dirpath, dirnames, filenames in os.walk(m.path):
            entries += len(dirnames) + len(filenames)
            for name in filenames:
                if name.endswith(".json") or ("/videos" in dirpath and name.startswith("VID_")):
                    (Path(dirpath) / name).read_bytes()  # a version in the kernel's cache
        walked = m.status()
        assert walked["inodes"] > entries // 2 > 50
        assert walked["kernel_versions"] > 0 and walked["source_keys"] > 10
        assert walked["listings"] > 10
        deadline = time.monotonic() + 10
        while True:
            _drop_dentries()
            time.sleep(0.3)  # the kernel's FORGETs come in batches
            dropped = m.status()
            if dropped["inodes"] < 12 or time.monotonic() > deadline:
                break
        # What is left: the root, its four folders' names, and the status file just read.
        assert dropped["inodes"] < 12, (walked, dropped)
        assert dropped["listings"] <= 3
        assert dropped["listed_entries"] < 12
        assert dropped["kernel_versions"] == 0
        assert dropped["source_keys"] <= 1  # the status file, being read
        assert walked["store_static"] > 10 and dropped["store_static"] == 0  # meta.json...
        assert dropped["store_stats"] < walked["store_stats"] // 10
        # And all of it comes back on demand, with the same bytes.
        assert sorted(os.listdir(m.path / "clusters")) == sorted(
            {str(pc["cluster_id"]) for pc in dataset["pointclouds"]}, key=str
        )


@pytest.mark.parametrize("answer", ["404", "empty"])
@pytest.mark.parametrize("get_capture", ["available", "refused"])
def test_an_unknown_id_is_enoent(
    mounter: Any, fake: FakeServer, dataset: dict[str, Any], answer: str, get_capture: str
) -> None:
    """404 or a 200 with nothing in it: either way, no folder; and a real id still works."""
    refuse = {"GET /captures/{id}": 403} if get_capture == "refused" else {}
    fake.api.configure(unknown_ids=answer, refuse=refuse)
    main = next(c for c in dataset["captures"] if c["name"] == "main")
    record = dataset["records"][0]
    with mounter() as m:
        for path in ("captures/999999", "records/888888", "captures/999999/videos"):
            with pytest.raises(OSError) as info:
                os.stat(m.path / path)
            assert info.value.errno == errno.ENOENT, path
        assert "999999" not in os.listdir(m.path / "captures")
        assert os.listdir(m.path / "records") == []
        assert os.listdir(m.path / "captures" / str(main["id"]) / "videos")
        assert os.listdir(m.path / "records" / str(record["id"]))
        assert os.listdir(m.path / "records") == [str(record["id"])]


def test_a_capture_lookup_prefers_get_captures_id(
    mounter: Any, fake: FakeServer, dataset: dict[str, Any]
) -> None:
    main = next(c for c in dataset["captures"] if c["name"] == "main")
    with mounter() as m:
        fake.stats.reset()
        os.stat(m.path / "captures" / str(main["id"]))
        assert fake.stats.snapshot()["api_by_route"] == {"GET /captures/{id}": 1}
        fake.stats.reset()
        with pytest.raises(FileNotFoundError):
            os.stat(m.path / "captures" / "999999")
        # A 404 from an API that has not listed captures yet could mean "no such call":
        # the capture's videos (404 too) confirm it.
        assert fake.stats.snapshot()["api_by_route"] == {"GET /captures/{id}": 1, "GET /videos": 1}
        os.listdir(m.path / "captures")
        fake.stats.reset()
        with pytest.raises(FileNotFoundError):
            os.stat(m.path / "captures" / "999998")
        assert fake.stats.snapshot()["api_by_route"] == {"GET /captures/{id}": 1}
