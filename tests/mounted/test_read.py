"""Every byte read through the kernel equals the blob's, whatever the access pattern."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

from cupixfs.fake.server import FakeServer
from tests.conftest import Mount
from tests.mounted.helpers import sha256_of
from tests.mounted.oracle import Oracle


def _files(mounted: Mount, dataset: dict[str, Any]) -> list[tuple[Path, dict[str, Any]]]:
    """(mounted path, blob entry) for every video and pointcloud file of the data set."""
    captures = {c["id"]: c for c in dataset["captures"]}
    pairs: list[tuple[Path, dict[str, Any]]] = []
    for capture in captures.values():
        if capture["name"] == "hostile":
            continue
        for video in dataset["videos"]:
            if video["capture_id"] == capture["id"]:
                path = mounted.path / "captures" / str(capture["id"]) / "videos"
                pairs.append((path / video["attributes"]["name"], video["file"]))
    for pc in dataset["pointclouds"]:
        if pc["attributes"]["kind"] != "sub":
            continue
        sub = mounted.path / "clusters" / str(pc["cluster_id"]) / str(pc["id"])
        for kind, name in (
            ("cpc", pc["attributes"]["name"]),
            ("mesh", "mesh.zip"),
            ("ply", "pointcloud.ply"),
        ):
            if pc["files"][kind] is not None:
                pairs.append((sub / name, pc["files"][kind]))
    return pairs


def test_every_file_has_the_right_size_and_bytes(mounted: Mount, dataset: dict[str, Any]) -> None:
    pairs = _files(mounted, dataset)
    assert len(pairs) > 20
    for path, blob in pairs:
        # Read first: a size the API states wrong (the test data has one) is corrected by
        # the first bytes fetched, and a stat after them shows the true size.
        assert sha256_of(path) == blob["sha256"], path
        assert path.stat().st_size == blob["size"], path


def test_random_offsets(mounted: Mount, dataset: dict[str, Any], test_data: Path) -> None:
    rng = random.Random(1234)
    pairs = [(p, b) for p, b in _files(mounted, dataset) if b["size"] > 0]
    for path, blob in rng.sample(pairs, min(12, len(pairs))):
        expected = (test_data / "blobs" / blob["blob_id"]).read_bytes()
        fd = os.open(path, os.O_RDONLY)
        try:
            for _ in range(25):
                offset = rng.randrange(0, blob["size"] + 10)
                length = rng.choice([1, 7, 4096, 65536, 131072, 1 << 20, 3 << 20])
                assert os.pread(fd, length, offset) == expected[offset : offset + length]
        finally:
            os.close(fd)


def test_mesh_zip_passes_unzip_t(mounted: Mount, dataset: dict[str, Any]) -> None:
    meshes = [p for p, b in _files(mounted, dataset) if p.name == "mesh.zip"]
    assert meshes
    for mesh in meshes:
        # The hostile archive's encrypted member needs a password unzip has not got.
        result = subprocess.run(
            ["unzip", "-tq", str(mesh), "-x", "secret.txt"],
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "No errors detected" in result.stdout


def test_ply_parses(mounted: Mount, dataset: dict[str, Any]) -> None:
    plys = [p for p, b in _files(mounted, dataset) if p.name == "pointcloud.ply"]
    assert plys
    for ply in plys:
        with open(ply, "rb") as f:
            assert f.readline() == b"ply\n"
            header = []
            while (line := f.readline()) != b"end_header\n":
                header.append(line.decode().strip())
            body = f.read()
        count = next(int(h.split()[2]) for h in header if h.startswith("element vertex"))
        if "format binary_little_endian 1.0" not in header or any(
            h.startswith("element face") for h in header
        ):
            continue  # the other layouts are read in test_views.py
        props = [h.split()[1] for h in header if h.startswith("property")]
        record = struct.Struct(
            "<" + "".join({"float": "f", "uchar": "B", "ushort": "H"}[p] for p in props)
        )
        assert len(body) == count * record.size
        x, y, z, *_ = record.unpack_from(body, (count - 1) * record.size)
        assert all(v == v for v in (x, y, z))  # real floats, not NaN


def test_meta_json_is_the_api_meta(
    mounted: Mount, fake: FakeServer, dataset: dict[str, Any]
) -> None:
    oracle = Oracle(fake)
    subs = [pc for pc in dataset["pointclouds"] if pc["attributes"]["kind"] == "sub"]
    for pc in subs[:4]:
        path = mounted.path / "clusters" / str(pc["cluster_id"]) / str(pc["id"]) / "meta.json"
        text = path.read_text()
        assert json.loads(text) == oracle.meta(pc["id"])
        assert path.stat().st_size == len(text.encode())


def test_cp_r_of_a_cluster(mounted: Mount, dataset: dict[str, Any], tmp_path: Path) -> None:
    cluster = dataset["clusters"][0]
    target = tmp_path / "copy"
    shutil.copytree(mounted.path / "clusters" / str(cluster["id"]), target)
    pcs = {pc["id"]: pc for pc in dataset["pointclouds"]}
    for sub_id in cluster["sub_ids"]:
        pc = pcs[sub_id]
        copied = target / str(sub_id) / pc["attributes"]["name"]
        assert sha256_of(copied) == pc["files"]["cpc"]["sha256"]


def test_concurrent_readers_of_one_file_fetch_each_block_once(
    mounted: Mount, dataset: dict[str, Any], fake: FakeServer
) -> None:
    import threading

    path, blob = max(_files(mounted, dataset), key=lambda pb: pb[1]["size"])
    fake.stats.reset()
    digests: list[str] = []
    threads = [threading.Thread(target=lambda: digests.append(sha256_of(path))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert digests == [blob["sha256"]] * 4
    # Four readers, but each byte crossed the wire at most about once (+ the size probe).
    assert fake.stats.snapshot()["blob_bytes"] <= blob["size"] + (1 << 20)
