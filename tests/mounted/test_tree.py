"""The mounted tree, seen through the kernel, is exactly what the API says."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from cupixfs.fake.server import FakeServer
from cupixfs.namespace.names import NAME_MAX
from tests.conftest import PER_PAGE, Mount
from tests.mounted.helpers import hostile_capture, stored_only, walk_files
from tests.mounted.oracle import Oracle


def test_top_level(mounted: Mount) -> None:
    assert sorted(os.listdir(mounted.path)) == ["captures", "clusters", "projects", "records"]


def test_full_tree_equals_the_api(
    mounted: Mount, fake: FakeServer, dataset: dict[str, Any]
) -> None:
    hostile = hostile_capture(dataset)["id"]
    captures = [c["id"] for c in dataset["captures"] if c["id"] != hostile]
    records = [r["id"] for r in dataset["records"]]
    expected = Oracle(fake).expected_tree(captures, records)
    found = {p for p in walk_files(mounted.path) if not p.startswith(f"captures/{hostile}/")}
    assert stored_only(found) == expected
    assert sorted(os.listdir(mounted.path / "captures")) == sorted(
        str(c["id"]) for c in dataset["captures"]
    )


def test_a_list_longer_than_three_pages_is_complete(
    mounted: Mount, fake: FakeServer, dataset: dict[str, Any]
) -> None:
    capture = max(dataset["captures"], key=lambda c: len(c["video_ids"]))
    oracle = Oracle(fake)
    assert oracle.pages("videos", fields="id", capture_id=capture["id"]) > 3
    listed = os.listdir(mounted.path / "captures" / str(capture["id"]) / "videos")
    assert len(listed) == len(capture["video_ids"]) > 3 * PER_PAGE
    requests = fake.stats.snapshot()["api_by_route"]
    assert any("videos" in route for route in requests)


def test_unknown_ids_are_enoent(mounted: Mount) -> None:
    for path in (
        "captures/999999999",
        "captures/not-a-number",
        "captures/0123",
        "records/888888888",
        "clusters/777777777",
        "captures/nothing-here/videos",
    ):
        with pytest.raises(FileNotFoundError):
            os.stat(mounted.path / path)


def test_every_capture_is_listed_across_pages(
    mounter: Any, fake: FakeServer, dataset: dict[str, Any]
) -> None:
    pages = Oracle(fake).pages("captures", fields="id")
    assert pages > 3
    with mounter() as m:
        fake.stats.reset()
        listed = os.listdir(m.path / "captures")
        assert fake.stats.snapshot()["api_by_route"]["GET /captures"] == pages  # each page once
    assert listed == [str(c["id"]) for c in sorted(dataset["captures"], key=lambda c: c["id"])]


def test_a_capture_resolves_on_lookup_when_the_api_cannot_list_captures(
    mounter: Any, fake: FakeServer, dataset: dict[str, Any]
) -> None:
    capture = dataset["captures"][0]["id"]
    fake.api.configure(refuse={"GET /captures": 403})
    with mounter() as m:
        assert os.listdir(m.path / "captures") == []
        assert "videos" in os.listdir(m.path / "captures" / str(capture))
        assert os.listdir(m.path / "captures") == [str(capture)]
        assert sorted(os.listdir(m.path / "captures" / str(capture) / "videos"))
        assert os.listdir(m.path / "projects") == []
        refusals = [line for line in m.log_text().splitlines() if "GET /captures is not" in line]
    assert len(refusals) == 1, refusals  # one line saying why, however often it is asked
    assert "403" in refusals[0] and "/projects stays empty" in refusals[0]


def test_hostile_names_are_safe_unique_and_readable(
    mounted: Mount, dataset: dict[str, Any]
) -> None:
    capture = hostile_capture(dataset)
    directory = mounted.path / "captures" / str(capture["id"]) / "videos"
    names = os.listdir(directory)
    assert len(names) == len(set(names)) == len(capture["video_ids"])
    for name in names:
        assert "/" not in name and "\0" not in name and name not in (".", "..")
        assert 0 < len(name.encode()) <= NAME_MAX
        assert (directory / name).is_file()
    assert not (mounted.path / "etc").exists()
    sizes = sorted(os.stat(directory / n).st_size for n in names)
    videos = {v["id"]: v for v in dataset["videos"]}
    assert sizes == sorted(videos[v]["file"]["size"] for v in capture["video_ids"])


def test_modes_owner_and_times(mounted: Mount, dataset: dict[str, Any]) -> None:
    capture = dataset["captures"][0]["id"]
    videos = mounted.path / "captures" / str(capture) / "videos"
    st = os.stat(videos)
    assert st.st_mode & 0o777 == 0o555 and st.st_uid == os.getuid()
    for name in os.listdir(videos):
        st = os.stat(videos / name)
        assert st.st_mode & 0o777 == 0o444
        assert st.st_mtime > 1_500_000_000  # a real date, never 1970


def test_stat_advises_the_io_size_of_a_local_file(mounted: Mount, dataset: dict[str, Any]) -> None:
    """cp, cat and stdio size their buffers by ``st_blksize``, and so every write a copy
    out of the mount makes to its destination: 128 KiB, as coreutils does for a local
    file (1 MiB writes made cp three times slower on the bench VM)."""
    capture = dataset["captures"][0]["id"]
    videos = mounted.path / "captures" / str(capture) / "videos"
    assert os.stat(videos).st_blksize == 128 * 1024
    for name in os.listdir(videos):
        assert os.stat(videos / name).st_blksize == 128 * 1024


def test_not_a_directory(mounted: Mount, dataset: dict[str, Any]) -> None:
    capture = dataset["captures"][0]["id"]
    videos = mounted.path / "captures" / str(capture) / "videos"
    first = sorted(os.listdir(videos))[0]
    with pytest.raises(NotADirectoryError):
        os.listdir(videos / first)
    with pytest.raises(OSError) as info:
        os.stat(videos / first / "x")
    assert info.value.errno == errno.ENOTDIR


def test_sub_directories_hold_the_right_files(mounted: Mount, dataset: dict[str, Any]) -> None:
    for pc in dataset["pointclouds"]:
        if pc["attributes"]["kind"] != "sub" or pc["capture_id"] is None:
            continue
        sub = mounted.path / "clusters" / str(pc["cluster_id"]) / str(pc["id"])
        names = set(os.listdir(sub))
        assert pc["attributes"]["name"] in names and "meta.json" in names
        assert ("mesh.zip" in names) == (pc["files"]["mesh"] is not None)
        assert ("pointcloud.ply" in names) == (pc["files"]["ply"] is not None)
        if pc.get("stated_size", "true") == "true":  # a wrong stated size shows until opened
            assert Path(sub / pc["attributes"]["name"]).stat().st_size == pc["files"]["cpc"]["size"]
