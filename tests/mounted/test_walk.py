"""The walk-ahead through real mounts: a reader that opens files in listing order (cp -r)
gets the next files fetched before it opens them, byte-exact; one that does not, gets
nothing fetched in vain."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from cupixfs.fake.server import FakeServer
from tests.conftest import Mount
from tests.mounted.helpers import sha256_of


def _main_videos(m: Mount, dataset: dict[str, Any]) -> tuple[Path, list[dict[str, Any]]]:
    """The main capture's videos folder and its videos, in the mount's listing order."""
    capture = next(c for c in dataset["captures"] if c["name"] == "main")
    folder = m.path / "captures" / str(capture["id"]) / "videos"
    videos = {
        v["attributes"]["name"]: v for v in dataset["videos"] if v["capture_id"] == capture["id"]
    }
    order = [name for name in os.listdir(folder)]  # readdir order, as cp sees it
    assert sorted(order) == sorted(videos) and len(order) > 10
    return folder, [videos[name] for name in order]


def _settled(fake: FakeServer, m: Mount, fetched: int) -> None:
    """Wait until the mount says it fetched *fetched* files ahead and storage is quiet."""
    deadline = time.monotonic() + 20
    last = None
    while time.monotonic() < deadline:
        now = (m.status()["files_fetched_ahead"], fake.stats.snapshot()["blob_bytes"])
        if now[0] >= fetched and now == last:
            return
        last = now
        time.sleep(0.3)
    raise AssertionError(f"the walk did not settle: {last}")


def _cat(*paths: Path) -> bytes:
    """The files' bytes, read by one ``cat``: one process, as the walk-ahead tells readers
    apart by process (this test's own reads of the status file are another reader)."""
    return subprocess.run(["cat", *map(str, paths)], capture_output=True, check=True).stdout


def test_files_walked_to_are_fetched_before_their_reader_opens_them(
    mounted: Mount, fake: FakeServer, dataset: dict[str, Any]
) -> None:
    folder, videos = _main_videos(mounted, dataset)
    names = [v["attributes"]["name"] for v in videos]
    large = [i for i, v in enumerate(videos) if v["file"]["size"] > 64 * 1024]
    assert large and min(large) >= 2, "the test needs streamed files after the first two"
    _cat(folder / names[0], folder / names[1])  # the one after the one before: a walk
    _settled(fake, mounted, fetched=len(large))
    fake.stats.reset()
    data = _cat(*(folder / name for name in names[2:]))  # all ready: no request at all
    assert len(data) == sum(v["file"]["size"] for v in videos[2:])
    # No video was asked of storage again, nor its download call made. (This second
    # reader walks too, past the videos into the capture's next folder: those requests
    # are its own walk's.)
    stats = fake.stats.snapshot()
    asked = {blob for blob, _start, _end in stats["blob_ranges"]}
    assert not asked & {v["file"]["blob_id"] for v in videos}, stats
    assert not any("/videos/" in route for route in stats["api_by_route"]), stats
    for video in videos:
        assert sha256_of(folder / video["attributes"]["name"]) == video["file"]["sha256"]
    assert mounted.status()["walks_followed"] >= 2  # each cat walked


def test_past_its_bytes_the_walk_checks_what_the_opens_will_need(
    mounter: Any, fake: FakeServer, dataset: dict[str, Any], tmp_path: Path
) -> None:
    """With no bytes to fetch ahead but the next file's, the walk still loads the next
    subs' documents and makes their files' download calls and size checks: a copy of
    those subs then waits on no API call at all."""
    cluster = next(c for c in dataset["clusters"] if c["name"] == "Cluster 1")
    with mounter("-o", "walk_ahead=1") as m:
        source = m.path / "clusters" / str(cluster["id"])
        subs = os.listdir(source)  # readdir order
        assert len(subs) >= 3
        # From the first sub into the second: a walk, which goes on past the second.
        subprocess.run(
            ["cp", "-r", str(source / subs[0]), str(source / subs[1]), str(tmp_path)],
            check=True,
            timeout=60,
        )
        _settled(fake, m, fetched=0)
        assert m.status()["files_fetched_ahead"] <= 2  # one file's bytes ahead, twice
        fake.stats.reset()
        copy = tmp_path / "third"
        subprocess.run(["cp", "-r", str(source / subs[2]), str(copy)], check=True, timeout=60)
        routes = fake.stats.snapshot()["api_by_route"]
        assert routes == {}, routes  # no listing, document, or download call
        subprocess.run(["diff", "-r", str(source / subs[2]), str(copy)], check=True, timeout=60)


def test_a_scan_of_the_tree_gets_the_next_folders_listed_ahead(
    mounted: Mount, fake: FakeServer, dataset: dict[str, Any]
) -> None:
    """find (like du, ls -R, rsync's file list) lists folder after folder, each with its
    entries' sizes: the next subs are listed ahead of it, with their documents loaded and
    sizes checked, so that listing one later asks nothing of the API or storage."""
    cluster = next(c for c in dataset["clusters"] if c["name"] == "Cluster 1")
    source = mounted.path / "clusters" / str(cluster["id"])
    subs = os.listdir(source)  # readdir order
    assert len(subs) >= 3
    # Two subs, each with what is under it (mesh/ folders): from the first into the second.
    subprocess.run(
        ["find", str(source / subs[0]), str(source / subs[1]), "-size", "+1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    _settled(fake, mounted, fetched=0)
    assert mounted.status()["scans_followed"] == 1
    fake.stats.reset()
    listing = subprocess.run(
        ["ls", "-l", str(source / subs[2])], check=True, capture_output=True, timeout=60
    )
    assert b"meta.json" in listing.stdout
    stats = fake.stats.snapshot()
    assert stats["api_requests"] == 0 and stats["blob_requests"] == 0, stats


def test_files_opened_out_of_listing_order_fetch_nothing_ahead(
    mounted: Mount, fake: FakeServer, dataset: dict[str, Any]
) -> None:
    folder, videos = _main_videos(mounted, dataset)
    names = [v["attributes"]["name"] for v in videos]
    fake.stats.reset()
    picked = (0, 2, 1, 5, 4, len(names) - 1)  # a file manager, a random reader
    _cat(*(folder / names[index] for index in picked))
    time.sleep(0.5)
    status = mounted.status()
    assert status["walks_followed"] == 0 and status["files_fetched_ahead"] == 0
    # Only files read were asked of storage (the listing's probes came before).
    ranges = fake.stats.snapshot()["blob_ranges"]
    read = {videos[index]["file"]["blob_id"] for index in picked}
    assert ranges and {blob for blob, _start, _end in ranges} <= read, ranges


def test_walk_ahead_zero_fetches_nothing_ahead(
    mounter: Any, fake: FakeServer, dataset: dict[str, Any]
) -> None:
    capture = next(c for c in dataset["captures"] if c["name"] == "main")
    with mounter("--capture", str(capture["id"]), "-o", "walk_ahead=0") as m:
        folder, videos = _main_videos(m, dataset)
        _cat(*(folder / video["attributes"]["name"] for video in videos[:4]))
        time.sleep(0.5)
        status = m.status()
        assert status["walks_followed"] == 0 and status["files_fetched_ahead"] == 0


def test_cp_r_of_a_cluster_with_derived_files_is_byte_exact(
    mounted: Mount, fake: FakeServer, dataset: dict[str, Any], tmp_path: Path
) -> None:
    """cp -r walks subs, mesh/ folders and LAS views: the walk goes around what it does
    not fetch, and every byte copied is right."""
    cluster = next(c for c in dataset["clusters"] if c["name"] == "Cluster 1")
    source = mounted.path / "clusters" / str(cluster["id"])
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(source), str(copy)], check=True, timeout=120)
    status = mounted.status()
    assert status["walks_followed"] >= 1 and status["files_fetched_ahead"] >= 2, status
    subs = [pc for pc in dataset["pointclouds"] if pc.get("cluster_id") == cluster["id"]]
    checked = 0
    for pc in subs:
        if pc["attributes"]["kind"] != "sub":
            continue
        for kind, name in (
            ("cpc", pc["attributes"]["name"]),
            ("mesh", "mesh.zip"),
            ("ply", "pointcloud.ply"),
        ):
            if pc["files"][kind] is not None:
                assert sha256_of(copy / str(pc["id"]) / name) == pc["files"][kind]["sha256"]
                checked += 1
    assert checked >= 8
    # Everything else (documents, mesh members, LAS) as a second reading shows it.
    subprocess.run(["diff", "-r", str(source), str(copy)], check=True, timeout=120)
    shutil.rmtree(copy)


def test_a_copy_asks_storage_once_for_each_file_whose_size_the_api_stated(
    mounter: Any, fake: FakeServer, dataset: dict[str, Any], tmp_path: Path
) -> None:
    """A file fetched whole needs no size probe first: the fetch's own response confirms
    the size the API stated. So it is for the files walked to, and for the first one,
    which cp opens before there is a walk: its open sends that fetch. (A file within the
    probe's 64 KiB is fetched by the probe.)"""
    cluster = next(c for c in dataset["clusters"] if c["name"] == "Cluster 1")
    with mounter() as m:
        source = m.path / "clusters" / str(cluster["id"])
        first, *later = os.listdir(source)  # readdir order, as cp walks it
        fake.stats.reset()
        subprocess.run(["cp", "-r", str(source), str(tmp_path / "copy")], check=True, timeout=120)
        ranges = fake.stats.snapshot()["blob_ranges"]
    by_id = {str(pc["id"]): pc for pc in dataset["pointclouds"]}
    stated = [
        by_id[sub]["files"]["cpc"]
        for sub in [first, *later]
        if by_id[sub].get("stated_size", "true") == "true"
        and by_id[sub]["files"]["cpc"]["size"] > 64 * 1024
    ]
    assert stated, "the test needs a later sub with a stated size beyond the probe's"
    assert stated[0] is by_id[first]["files"]["cpc"], "the first sub must qualify too"
    for cpc in stated:
        asked = [[start, end] for blob, start, end in ranges if blob == cpc["blob_id"]]
        assert asked == [[0, cpc["size"] - 1]], (cpc, ranges)


def test_a_file_fetched_before_the_kernel_knew_it_is_in_its_page_cache_once_opened(
    mounted: Mount, fake: FakeServer, dataset: dict[str, Any], tmp_path: Path
) -> None:
    """The walk lists the next sub before its reader does, and the kernel takes no pushes
    for files it does not know yet: their blocks wait in memory, and go into the page
    cache at the file's open, before its first read, which then never reaches cupixfs."""
    if shutil.which("fincore") is None:
        pytest.skip("fincore (util-linux) is not installed")
    cluster = next(c for c in dataset["clusters"] if c["name"] == "Cluster 1")
    source = mounted.path / "clusters" / str(cluster["id"])
    subs = os.listdir(source)  # readdir order
    # A copy of the first two subs: from the first into the second, it walks on past.
    subprocess.run(
        ["cp", "-r", str(source / subs[0]), str(source / subs[1]), str(tmp_path)],
        check=True,
        timeout=120,
    )
    _settled(fake, mounted, fetched=1)
    later = next(
        source / sub / pc["attributes"]["name"]
        for sub in subs[2:]
        for pc in dataset["pointclouds"]
        if str(pc["id"]) == sub and pc["files"]["cpc"]["size"] > 64 * 1024
    )
    os.listdir(later.parent)  # the kernel learns the file here
    fake.stats.reset()
    before = mounted.status()["memory_hits"]
    # fincore opens the file and asks which of its pages are cached, reading none.
    resident = subprocess.run(
        ["fincore", "-nb", "-o", "RES", str(later)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(resident[0]) >= later.stat().st_size - 4096, resident
    assert len(_cat(later)) == later.stat().st_size
    assert mounted.status()["memory_hits"] == before  # no read reached cupixfs
    assert fake.stats.snapshot()["blob_requests"] == 0
