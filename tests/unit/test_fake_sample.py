"""The sample generator writes real, deterministic content and a model that matches it."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cupixfs.fake import sample
from cupixfs.fake.sample import LONG_UTF8_NAME, generate, profile


@pytest.fixture(scope="module")
def test_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(profile("test"), tmp_path_factory.mktemp("test-profile"))


def load(data: Path) -> dict[str, Any]:
    return json.loads((data / "dataset.json").read_text(encoding="utf-8"))


def all_files(model: dict[str, Any]) -> list[dict[str, Any]]:
    files = [v["file"] for v in model["videos"]]
    files += [f for pc in model["pointclouds"] for f in pc["files"].values() if f is not None]
    return files


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_file_matches_its_size_and_sha256(test_data: Path) -> None:
    files = all_files(load(test_data))
    assert len({f["blob_id"] for f in files}) == len(files)
    for f in files:
        path = test_data / "blobs" / f["blob_id"]
        assert path.stat().st_size == f["size"]
        assert sha256(path) == f["sha256"]
    assert sorted(p.name for p in (test_data / "blobs").iterdir()) == sorted(
        f["blob_id"] for f in files
    )


def test_captures_cover_the_pagination_and_empty_cases(test_data: Path) -> None:
    model = load(test_data)
    counts = {c["name"]: len(c["video_ids"]) for c in model["captures"][:4]}
    assert counts == {"main": 17, "single": 1, "empty": 0, "hostile": len(sample.HOSTILE_NAMES)}
    assert len(model["captures"]) > 3 * 5  # GET /captures: more than three pages of 5


def test_projects_place_captures_by_id(test_data: Path) -> None:
    model = load(test_data)
    facilities = {f["id"]: f for f in model["facilities"]}
    levels = {lv["id"]: lv for lv in model["levels"]}
    assert [f["name"] for f in model["facilities"]] == [p.name for p in sample.TEST_PROJECTS]
    assert len({f["key"] for f in facilities.values()}) == len(facilities)
    placed = unplaced = no_project = 0
    for capture in model["captures"]:
        if capture["facility_id"] is None:
            no_project += 1
            assert capture["level_id"] is None
        elif capture["level_id"] is None:
            unplaced += 1
        else:
            placed += 1
            assert levels[capture["level_id"]]["facility_id"] == capture["facility_id"]
        assert capture["captured_at"] and capture["created_at"] and capture["updated_at"]
    assert placed and unplaced and no_project
    walks = [c for c in model["captures"] if c["name"] == "Walk"]
    assert len(walks) == 2 and walks[0]["level_id"] == walks[1]["level_id"]
    assert walks[0]["captured_at"][:10] == walks[1]["captured_at"][:10]


def test_a_spec_field_added_later_leaves_old_hashes_alone() -> None:
    """Fields added for projects and stated sizes are hashed only when set, so a data set
    generated before them (the shared bench data) is not generated again for nothing."""
    bench = profile("bench")
    assert not any(c.project for c in bench.captures) and not bench.projects
    hashed = json.dumps(sample._hashed(bench))
    for later in ("project", "level", "captured_at", "stated_size", "projects"):
        assert f'"{later}"' not in hashed
    placed = sample.SampleSpec("x", (sample.CaptureSpec("c", project="p"),))
    plain = sample.SampleSpec("x", (sample.CaptureSpec("c"),))
    assert sample.spec_hash(placed, 0) != sample.spec_hash(plain, 0)


def test_hostile_names_and_edge_sizes(test_data: Path) -> None:
    model = load(test_data)
    hostile = next(c for c in model["captures"] if c["name"] == "hostile")
    videos = {v["id"]: v for v in model["videos"]}
    names = [videos[i]["attributes"]["name"] for i in hostile["video_ids"]]
    for name in ("../../etc/passwd", "a/b.insv", ".", "..", "", "new\nline.insv"):
        assert name in names
    assert any("\x00" in n for n in names)
    assert names.count("dup.insv") == 2
    assert len(LONG_UTF8_NAME.encode()) == 300 and LONG_UTF8_NAME in names
    sizes = {f["size"] for f in all_files(model) if not f["name"].endswith(".ply")}
    assert {0, 1} <= sizes
    assert all(s % 2 == 1 for s in sizes if s > 1), "sizes should not be multiples of 2^k"


def test_mesh_zips_are_valid_and_exactly_sized(test_data: Path) -> None:
    spec_meshes = [s.mesh for c in profile("test").clusters for s in c.subs if s.mesh]
    spec_meshes += [s.mesh for r in profile("test").records for s in r.subs if s.mesh]
    meshes = [pc["files"]["mesh"] for pc in load(test_data)["pointclouds"] if pc["files"]["mesh"]]
    assert len(meshes) == len(spec_meshes)
    methods: set[int] = set()
    for f, spec in zip(meshes, spec_meshes, strict=True):
        path = test_data / "blobs" / f["blob_id"]
        assert path.stat().st_size == spec.size
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            readable = [i for i in infos if not i.flag_bits & 1 and i.compress_type in (0, 8)]
            for info in readable:
                zf.read(info)  # checks the CRC
            methods.update(i.compress_type for i in readable if not i.is_dir())
            if not spec.hostile:
                assert len(infos) == spec.entries == len(readable)
    assert methods == {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}


def test_the_hostile_zip_has_every_odd_entry(test_data: Path) -> None:
    [hostile] = [
        pc["files"]["mesh"]
        for pc in load(test_data)["pointclouds"]
        if pc["files"]["mesh"] and pc["files"]["mesh"]["size"] == 2_900_037
    ]
    raw = (test_data / "blobs" / hostile["blob_id"]).read_bytes()
    assert b"PK\x06\x06" in raw[-200:] and b"PK\x06\x07" in raw[-200:]  # Zip64 end records
    with zipfile.ZipFile(test_data / "blobs" / hostile["blob_id"]) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        assert {"../../etc/passwd", "/abs/olute.obj", "café Ä.txt", "도면/평면도.txt"} <= set(infos)
        assert infos["café Ä.txt"].flag_bits & 0x800 == 0  # code page 437
        assert infos["secret.txt"].flag_bits & 1 and infos["packed.txt"].compress_type == 12
        assert infos["descriptor.obj"].flag_bits & 8
        assert [i.filename for i in zf.infolist()].count("dup.txt") == 2
        assert infos["big/scan.obj"].file_size > 5 << 20


def test_ply_header_parses_and_matches_the_vertex_data(test_data: Path) -> None:
    model = load(test_data)
    subs = [s for c in profile("test").clusters for s in c.subs]
    subs += [s for r in profile("test").records for s in r.subs]
    layouts = [s.ply_layout for s in subs if s.ply_vertices is not None]
    plys = [pc["files"]["ply"] for pc in model["pointclouds"] if pc["files"]["ply"]]
    assert len(plys) == len(layouts)
    assert set(layouts) == set(sample.PLY_LAYOUTS)
    for f, layout in zip(plys, layouts, strict=True):
        raw = (test_data / "blobs" / f["blob_id"]).read_bytes()
        header, sep, body = raw.partition(b"end_header\n")
        assert sep
        lines = header.decode("ascii").splitlines()
        fmt = sample.PLY_LAYOUTS[layout][0]
        assert lines[:2] == ["ply", f"format {fmt} 1.0"]
        count = int(next(ln for ln in lines if ln.startswith("element vertex")).split()[2])
        if fmt == "ascii":
            assert len(body.splitlines()) == count
            continue
        dtype = sample._ply_dtype(layout)
        vertices = np.frombuffer(body, dtype, count=count)
        assert len(body) == count * dtype.itemsize + (26 if sample.PLY_LAYOUTS[layout][2] else 0)
        x, z = vertices["x"].astype(float), vertices["z"].astype(float)
        centre = 512_345.0 if layout == "big_double" else 0.0
        assert (abs(x - centre) <= 20).all() and (z >= 0).all()


def test_pointcloud_model_follows_the_pages(test_data: Path) -> None:
    model = load(test_data)
    pcs = {pc["id"]: pc for pc in model["pointclouds"]}
    for pc in pcs.values():
        attrs = pc["attributes"]
        assert attrs["state"] == "done"
        assert len(attrs["meta"]["prop"]["tm"]) == 16 and len(attrs["meta"]["prop"]["wtm"]) == 16
        assert attrs["cluster"]["type"] == "Cluster"
        if attrs["kind"] == "group":
            assert attrs["parent"] == {"id": None}
            assert pc["files"] == {"cpc": None, "mesh": None, "ply": None}
            continue
        group = pcs[attrs["parent"]["id"]]
        assert group["attributes"]["kind"] == "group"
        assert attrs["cluster"] == group["attributes"]["cluster"]
        kinds = [r["kind"] for r in pc["resources"]]
        assert kinds[:2] == [None, "plane"]
        assert ("mesh" in kinds) == (attrs["mesh_uploaded_at"] is not None)
        assert ("ply" in kinds) == (attrs["ply_uploaded_at"] is not None)
        if attrs["pointcloud_type"] == "3d_reconstructed":
            assert pc["capture_id"] is not None
        else:
            assert pc["record_id"] is not None and pc["capture_id"] is None
    assert any(pc["attributes"]["pointcloud_type"] == "uploaded" for pc in pcs.values())


def test_wtm_composes_group_and_sub_transforms(test_data: Path) -> None:
    pcs = {pc["id"]: pc for pc in load(test_data)["pointclouds"]}
    sub = next(
        pc
        for pc in pcs.values()
        if pc["attributes"]["kind"] == "sub"
        and pc["attributes"]["meta"]["prop"]["tm"] != list(sample.IDENTITY)
    )
    prop = sub["attributes"]["meta"]["prop"]
    group_tm = pcs[sub["attributes"]["parent"]["id"]]["attributes"]["meta"]["prop"]["tm"]
    assert group_tm != list(sample.IDENTITY)
    # Column-major: translation lives in elements 12..14; wtm's is group_tm applied to tm's.
    tx, ty, tz = prop["tm"][12:15]
    expected = [
        sum(group_tm[k * 4 + row] * v for k, v in enumerate((tx, ty, tz, 1))) for row in range(3)
    ]
    assert prop["wtm"][12:15] == pytest.approx(expected, abs=1e-5)


def test_ids_are_distinct_and_timestamps_look_real(test_data: Path) -> None:
    model = load(test_data)
    ids = [
        x["id"]
        for key in ("records", "captures", "clusters", "videos", "pointclouds")
        for x in model[key]
    ]
    assert len(ids) == len(set(ids))
    stamp = model["videos"][0]["attributes"]["created_at"]
    assert len(stamp) == 24 and stamp.endswith("Z") and stamp[19] == "."


def test_generation_is_deterministic_and_idempotent(tmp_path: Path) -> None:
    spec = profile("test")
    a = generate(spec, tmp_path / "a", seed=7)
    b = generate(spec, tmp_path / "b", seed=7)
    assert load(a) == load(b)
    blob = a / "blobs" / "video-5000"
    mtime = blob.stat().st_mtime_ns
    os.utime(blob, ns=(mtime - 10**9, mtime - 10**9))
    generate(spec, a, seed=7)  # same spec hash: nothing rewritten
    assert blob.stat().st_mtime_ns == mtime - 10**9
    generate(spec, a, seed=8)  # different seed: regenerated with other bytes
    assert load(a)["videos"][0]["file"]["sha256"] != load(b)["videos"][0]["file"]["sha256"]


def test_profiles() -> None:
    demo, bench = profile("demo"), profile("bench")
    assert [len(c.video_sizes) for c in demo.captures] == [3, 3, 1, 1]
    assert {c.project for c in demo.captures} == {p.name for p in demo.projects}
    assert all(4 << 20 <= s <= 8 << 20 for c in demo.captures for s in c.video_sizes)
    assert len(demo.records) == 1 and 1 <= len(demo.records[0].subs) <= 2
    sizes = sorted(s for c in bench.captures for s in c.video_sizes)
    assert sizes[-1] >= 2 << 30 and sizes[-2] >= 512 << 20 and len(sizes) == 122
    meshes = [s.mesh for c in bench.clusters for s in c.subs if s.mesh]
    assert meshes[0].entries == 2000 and meshes[0].size >= 256 << 20
    assert max(len(c.subs) for c in bench.clusters) == 40
    with pytest.raises(ValueError):
        profile("nope")


def test_the_scale_profile_is_a_large_account() -> None:
    scale = profile("scale")
    assert len(scale.captures) == 2_000 and len(scale.projects) == 20
    assert all(len(p.levels) == 5 for p in scale.projects)
    assert sum(len(c.video_sizes) for c in scale.captures) == 500
    assert len(scale.clusters) == 300 and all(len(c.subs) == 20 for c in scale.clusters)
    ids = sample._Ids.for_spec(scale)
    assert ids.capture + 2_000 <= ids.cluster, "wide id ranges for a spec this large"
