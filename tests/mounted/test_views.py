"""Derived views through a real mount: ``mesh/`` beside ``mesh.zip``, ``pointcloud.las``
beside ``pointcloud.ply``.

The expected bytes come from an independent reader of the server's blob files: Python's
``zipfile`` for members, numpy on the PLY for points, ``laspy`` for the LAS side.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import laspy
import numpy as np
import pytest

from cupixfs.fake import sample
from cupixfs.fake.server import FakeServer
from tests.conftest import Mount
from tests.mounted.helpers import walk_files

MiB = 1 << 20
HOSTILE_SIZE = 2_900_037  # the test profile's hostile mesh.zip


def _subs(dataset: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [pc for pc in dataset["pointclouds"] if pc["files"].get(kind)]


def _sub_dir(root: Path, pc: dict[str, Any]) -> Path:
    return root / "clusters" / str(pc["cluster_id"]) / str(pc["id"])


def _expected_path(info: zipfile.ZipInfo, entry: int, infos: list[zipfile.ZipInfo]) -> str:
    """Where the mount shows a member, worked out by hand for every odd name."""
    by_name = {
        "../../etc/passwd": "_../_../etc/passwd",
        "/abs/olute.obj": "abs/olute.obj",
        "./dot/./x.txt": "dot/x.txt",
        "unicode_extra_x.txt": "unicode_extra_✓.txt",
        "ctl\x01char.txt": "ctl_char.txt",
        "n" * 300 + ".txt": "n" * 251 + ".txt",
    }
    name = info.filename
    if name == "clash/inner.txt":  # a file "clash" comes first: the folder is told apart
        return f"clash~{entry}/inner.txt"
    first = next(i for i, other in enumerate(infos) if other.filename == name)
    if first != entry:  # a second member of the same name
        stem, ext = os.path.splitext(name)
        return f"{stem}~{entry}{ext}"
    return by_name.get(name, name)


def test_cp_r_of_mesh_gives_every_member_exactly(
    mounted: Mount, dataset: dict[str, Any], test_data: Path, tmp_path: Path
) -> None:
    meshes = _subs(dataset, "mesh")
    assert any(pc["files"]["mesh"]["size"] == HOSTILE_SIZE for pc in meshes)
    methods: set[int] = set()
    for pc in meshes:
        blob = test_data / "blobs" / pc["files"]["mesh"]["blob_id"]
        copy = tmp_path / f"copy-{pc['id']}"
        done = subprocess.run(
            ["cp", "-r", str(_sub_dir(mounted.path, pc) / "mesh"), str(copy)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        expected: dict[str, bytes] = {}
        with zipfile.ZipFile(blob) as zf:
            infos = zf.infolist()
            for entry, info in enumerate(infos):
                if info.is_dir() or info.filename in ("secret.txt", "packed.txt", "link"):
                    continue
                expected[_expected_path(info, entry, infos)] = zf.read(info)
                methods.add(info.compress_type)
        assert walk_files(copy) == set(expected)
        for path, data in expected.items():
            assert (copy / path).read_bytes() == data, path
    assert methods == {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}


def test_member_sizes_times_and_what_is_left_out(mounted: Mount, dataset: dict[str, Any]) -> None:
    [pc] = [pc for pc in _subs(dataset, "mesh") if pc["files"]["mesh"]["size"] == HOSTILE_SIZE]
    mesh = _sub_dir(mounted.path, pc) / "mesh"
    assert os.stat(mesh / "big" / "scan.obj").st_size > 5 * MiB
    assert os.stat(mesh / "empty_deflated.txt").st_size == 0

    def utc(path: Path) -> datetime:
        return datetime.fromtimestamp(os.stat(path).st_mtime, UTC).replace(tzinfo=None)

    assert utc(mesh / "ut_time.txt") == datetime(2021, 6, 1, 12, 0, 0)  # extended timestamp
    assert utc(mesh / "dot" / "x.txt") == datetime(2023, 10, 30, 2, 35, 4)  # DOS time
    assert utc(mesh / "deep") == datetime(2022, 2, 2, 2, 2, 2)  # its own directory entry
    for hidden in ("secret.txt", "packed.txt", "link"):
        assert not os.path.lexists(mesh / hidden)
    assert os.getxattr(mesh / "clash", "user.cupix.kind") == b"mesh_member"
    assert os.getxattr(mesh / "_..", "user.cupix.kind") == b"mesh_folder"
    lines = [ln for ln in mounted.log_text().splitlines() if "not shown in mesh/" in ln]
    assert len(lines) == 1, lines
    assert (
        "3 of 32 zip entries are not shown in mesh/: 1 compressed with bzip2 (method 12), "
        "1 encrypted, 1 symbolic link" in lines[0]
    )


def test_a_small_member_costs_less_than_its_archive(
    mounter: Any, dataset: dict[str, Any], fake: FakeServer, test_data: Path
) -> None:
    [pc] = [pc for pc in _subs(dataset, "mesh") if pc["files"]["mesh"]["size"] == HOSTILE_SIZE]
    names = ["ut_time.txt", "padded_local.txt"]  # the second's local header is 4 KiB longer
    with zipfile.ZipFile(test_data / "blobs" / pc["files"]["mesh"]["blob_id"]) as zf:
        expected = [zf.read(name) for name in names]
    with mounter() as m:
        fake.stats.reset()
        for name, data in zip(names, expected, strict=True):
            assert (_sub_dir(m.path, pc) / "mesh" / name).read_bytes() == data
        moved = fake.stats.snapshot()["blob_bytes"]
        ranges = fake.stats.snapshot()["blob_ranges"]
    # The probe (64 KiB) and the blocks at the archive's end that hold its central
    # directory (kept on disk, for a remount or --offline); then each member with its
    # local header as one exact range, not a 1 MiB block.
    directory = [r for r in ranges if r[2] == HOSTILE_SIZE - 1]
    members = [r for r in ranges if r[1] != 0 and r not in directory]
    assert len(directory) == 1 and directory[0][1] % MiB == 0, ranges
    assert len(members) >= len(names), ranges
    assert all(last - first < 128 * 1024 for _blob, first, last in members), ranges
    assert moved <= 64 * 1024 + (HOSTILE_SIZE - directory[0][1]) + 32 * 1024, (moved, ranges)


def test_reads_in_the_middle_of_a_deflated_member(
    mounter: Any, dataset: dict[str, Any], test_data: Path
) -> None:
    [pc] = [pc for pc in _subs(dataset, "mesh") if pc["files"]["mesh"]["size"] == HOSTILE_SIZE]
    with zipfile.ZipFile(test_data / "blobs" / pc["files"]["mesh"]["blob_id"]) as zf:
        assert zf.getinfo("big/scan.obj").compress_type == zipfile.ZIP_DEFLATED
        expected = zf.read("big/scan.obj")
    spots = [(3 * MiB + 12_345, 100_000), (MiB - 50, 100), (len(expected) - 10, 100), (5, 7)]
    # A small memory cache keeps 2 inflated blocks: going back restarts from a copy of the
    # inflater taken on the way (or from the start), never from a wrong place.
    with mounter("--memory-cache", "8M") as m:
        path = _sub_dir(m.path, pc) / "mesh" / "big" / "scan.obj"
        fd = os.open(path, os.O_RDONLY)
        try:
            for offset, length in spots:  # the first one starts in the middle, cold
                assert os.pread(fd, length, offset) == expected[offset : offset + length]
        finally:
            os.close(fd)


# -- pointcloud.las ----------------------------------------------------------------------


def _ply_layouts() -> list[str]:
    spec = sample.profile("test")
    subs = [s for c in spec.clusters for s in c.subs] + [s for r in spec.records for s in r.subs]
    return [s.ply_layout for s in subs if s.ply_vertices is not None]


def _ply_vertices(blob: Path, layout: str) -> np.ndarray:
    raw = blob.read_bytes()
    body = raw[raw.index(b"end_header\n") + len(b"end_header\n") :]
    header = raw[: len(raw) - len(body)].decode()
    count = int(header.split("element vertex ")[1].split()[0])
    return np.frombuffer(body, sample._ply_dtype(layout), count=count)


def test_pointcloud_las_holds_the_ply_points(
    mounted: Mount, dataset: dict[str, Any], test_data: Path
) -> None:
    plys = _subs(dataset, "ply")
    layouts = _ply_layouts()
    assert len(plys) == len(layouts) and "big_double" in layouts and "ascii" in layouts
    for pc, layout in zip(plys, layouts, strict=True):
        las_path = _sub_dir(mounted.path, pc) / "pointcloud.las"
        if layout == "ascii":
            assert not las_path.exists() and las_path.with_suffix(".ply").exists()
            continue
        _check_las(
            las_path, _ply_vertices(test_data / "blobs" / pc["files"]["ply"]["blob_id"], layout)
        )


def _check_las(las_path: Path, ply: np.ndarray) -> None:
    """*las_path* holds the points of *ply*, each within the scale, and a right header."""
    assert las_path.stat().st_size == 227 + 26 * len(ply)
    las = laspy.read(las_path)
    assert (las.header.version.major, las.header.version.minor) == (1, 2)
    assert las.header.point_format.id == 2 and las.header.point_count == len(ply)
    assert list(las.header.scales) == [0.001] * 3
    for axis in "xyz":
        stored = np.asarray(las[axis])
        assert np.abs(stored - ply[axis].astype(np.float64)).max() <= 0.0005 + 1e-6, axis
    for colour in ("red", "green", "blue"):
        expected = ply[colour].astype(np.uint16) * 257 if colour in ply.dtype.names else 0
        assert (np.asarray(las[colour]) == expected).all(), colour
    lows = [np.asarray(las[a]).min() for a in "xyz"]
    highs = [np.asarray(las[a]).max() for a in "xyz"]
    assert list(las.header.mins) == pytest.approx(lows, abs=1e-9)
    assert list(las.header.maxs) == pytest.approx(highs, abs=1e-9)


def test_the_bounding_box_pass_pushes_the_points_it_converts(
    mounter: Any, dataset: dict[str, Any], fake: FakeServer, test_data: Path
) -> None:
    """The header's pass converts every point: those past the first 4 MiB go into the
    page cache, so the rest of a read from the start costs no second pass over the PLY."""
    [pc] = [
        pc
        for pc, layout in zip(_subs(dataset, "ply"), _ply_layouts(), strict=True)
        if layout == "big_double"
    ]
    ply_blob = pc["files"]["ply"]["blob_id"]
    with mounter() as m:
        path = _sub_dir(m.path, pc) / "pointcloud.las"
        size = path.stat().st_size
        assert size > 5 * MiB
        with path.open("rb") as f:
            f.read(227)
            pushed = m.status()["pushed_bytes"]
            assert pushed >= size - 4 * MiB, (pushed, size)
            fake.stats.reset()
            f.read()  # the rest: its first 4 MiB are converted as read, then the kernel's
            ranges = [r for r in fake.stats.snapshot()["blob_ranges"] if r[0] == ply_blob]
        assert all(first < 4 * MiB for _blob, first, _last in ranges), ranges
        _check_las(path, _ply_vertices(test_data / "blobs" / ply_blob, "big_double"))


def test_las_ranges_map_to_ply_ranges(
    mounted: Mount, dataset: dict[str, Any], test_data: Path
) -> None:
    """Reading a point in the middle of the LAS gives that vertex, whole file unread."""
    [pc] = [
        pc
        for pc, layout in zip(_subs(dataset, "ply"), _ply_layouts(), strict=True)
        if layout == "big_double"
    ]
    ply = _ply_vertices(test_data / "blobs" / pc["files"]["ply"]["blob_id"], "big_double")
    path = _sub_dir(mounted.path, pc) / "pointcloud.las"
    whole = laspy.read(path)
    index = len(ply) * 2 // 3
    with open(path, "rb") as f:
        f.seek(227 + 26 * index + 3)
        tail = f.read(26 - 3)
    assert tail == bytes(whole.points.array[index : index + 1].tobytes())[3:]


def test_the_bounding_box_is_kept_for_a_remount(
    mounter: Any, dataset: dict[str, Any], fake: FakeServer, tmp_path: Path
) -> None:
    [pc] = [
        pc
        for pc, layout in zip(_subs(dataset, "ply"), _ply_layouts(), strict=True)
        if layout == "big_double"
    ]
    cache = tmp_path / "kept"
    with mounter(cache_dir=cache) as m:
        path = _sub_dir(m.path, pc) / "pointcloud.las"
        header = path.open("rb").read(227)
        assert "bounding box of" in m.log_text()
    with mounter(cache_dir=cache) as m:
        fake.stats.reset()
        path = _sub_dir(m.path, pc) / "pointcloud.las"
        assert path.stat().st_size == 227 + 26 * 300_001
        assert path.open("rb").read(227) == header
        stats = fake.stats.snapshot()
        assert stats["blob_requests"] == 0 and stats["blob_bytes"] == 0, stats
        assert "bounding box of" not in m.log_text()


def test_listing_a_sub_reads_only_the_ply_header(
    mounter: Any, dataset: dict[str, Any], fake: FakeServer
) -> None:
    """Deciding whether pointcloud.las is listed costs the PLY's size probe, nothing more."""
    [pc] = [
        pc
        for pc, layout in zip(_subs(dataset, "ply"), _ply_layouts(), strict=True)
        if layout == "big_double"
    ]
    with mounter() as m:
        fake.stats.reset()
        assert "pointcloud.las" in os.listdir(_sub_dir(m.path, pc))
        ply = [r for r in fake.stats.snapshot()["blob_ranges"] if r[0].endswith("-ply")]
    assert ply and all(r[2] < 64 * 1024 for r in ply), ply


def test_reading_a_stored_member_fetches_nothing_past_it(
    mounter: Any, dataset: dict[str, Any], fake: FakeServer, test_data: Path
) -> None:
    [pc] = [pc for pc in _subs(dataset, "mesh") if pc["files"]["mesh"]["size"] == HOSTILE_SIZE]
    blob = test_data / "blobs" / pc["files"]["mesh"]["blob_id"]
    with zipfile.ZipFile(blob) as zf:
        stored = [i for i in zf.infolist() if i.compress_type == zipfile.ZIP_STORED]
        info = max(stored, key=lambda i: i.file_size)
        assert info.file_size > 512 * 1024 and info.header_offset < MiB
        expected = zf.read(info)
    with mounter() as m:
        fake.stats.reset()
        # O_DIRECT: the kernel passes each 64 KiB read on as it is, as a slow reader's.
        fd = os.open(_sub_dir(m.path, pc) / "mesh" / info.filename, os.O_RDONLY | os.O_DIRECT)
        buffer = mmap.mmap(-1, 64 * 1024)
        got = bytearray()
        try:
            while n := os.readv(fd, [buffer]):
                got += buffer[:n]
        finally:
            os.close(fd)
        assert got == expected
        ranges = [r for r in fake.stats.snapshot()["blob_ranges"] if r[0] == blob.name]
    last_block = (info.header_offset + 200 + info.file_size) // MiB
    # Its own blocks and the central directory's (the last one); the blocks between untouched.
    for _blob, first, last in ranges:
        assert first // MiB <= last_block or first // MiB == (HOSTILE_SIZE - 1) // MiB, (
            first,
            last,
        )


def test_mesh_listed_online_lists_offline(
    mounter: Any, dataset: dict[str, Any], tmp_path: Path
) -> None:
    """A `mesh/` folder listed with the network lists the same without it: its central
    directory is kept in the disk cache, as any folder listed online is kept."""
    [pc] = [pc for pc in _subs(dataset, "mesh") if pc["files"]["mesh"]["size"] == HOSTILE_SIZE]
    cache = tmp_path / "kept"
    with mounter(cache_dir=cache) as m:
        online = sorted(walk_files(_sub_dir(m.path, pc) / "mesh"))
    with mounter("--offline", cache_dir=cache, token="") as m:
        assert sorted(walk_files(_sub_dir(m.path, pc) / "mesh")) == online
    assert online
