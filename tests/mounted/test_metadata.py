"""Metadata where tools can see it: xattrs, transform.json, the status control file."""

from __future__ import annotations

import json
import os
from typing import Any

from cupixfs.namespace.transform import compose
from tests.conftest import Mount
from tests.mounted.helpers import video_path


def _subs(dataset: dict[str, Any]) -> list[dict[str, Any]]:
    return [pc for pc in dataset["pointclouds"] if pc["attributes"]["kind"] == "sub"]


def test_xattrs_on_files_and_directories(mounted: Mount, dataset: dict[str, Any]) -> None:
    video = dataset["videos"][0]
    path = video_path(mounted.path, video)
    names = os.listxattr(path)
    for key in ("id", "kind", "state", "created_at", "updated_at", "cache_key"):
        assert f"user.cupix.{key}" in names
    assert os.getxattr(path, "user.cupix.id") == str(video["id"]).encode()
    assert os.getxattr(path, "user.cupix.kind") == b"video"
    assert os.getxattr(path, "user.cupix.updated_at") == video["attributes"]["updated_at"].encode()
    sub = _subs(dataset)[0]
    sub_dir = mounted.path / "clusters" / str(sub["cluster_id"]) / str(sub["id"])
    assert os.getxattr(sub_dir, "user.cupix.pointcloud_type") == b"3d_reconstructed"
    tm = json.loads(os.getxattr(sub_dir, "user.cupix.tm"))
    assert tm == sub["attributes"]["meta"]["prop"]["tm"]
    assert (
        json.loads(os.getxattr(sub_dir, "user.cupix.wtm"))
        == sub["attributes"]["meta"]["prop"]["wtm"]
    )


def test_transform_json_composes_group_and_sub(mounted: Mount, dataset: dict[str, Any]) -> None:
    groups = {pc["id"]: pc for pc in dataset["pointclouds"] if pc["attributes"]["kind"] == "group"}
    identity = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    non_identity = 0
    for sub in _subs(dataset):
        path = (
            mounted.path / "clusters" / str(sub["cluster_id"]) / str(sub["id"]) / "transform.json"
        )
        doc = json.loads(path.read_text())
        prop = sub["attributes"]["meta"]["prop"]
        group_tm = groups[sub["attributes"]["parent"]["id"]]["attributes"]["meta"]["prop"]["tm"]
        assert "column-major" in doc["convention"]
        assert doc["sub_tm"] == prop["tm"] and doc["group_tm"] == group_tm
        expected = compose(tuple(group_tm), tuple(prop["tm"]))
        assert all(abs(a - b) < 1e-6 for a, b in zip(doc["world_tm"], expected, strict=True))
        assert all(abs(a - b) < 1e-4 for a, b in zip(doc["world_tm"], prop["wtm"], strict=True))
        non_identity += doc["world_tm"] != identity
    assert non_identity > 0  # the data set really exercises the composition


def test_status_control_file(mounted: Mount, dataset: dict[str, Any]) -> None:
    assert ".cupixfs" not in os.listdir(mounted.path)  # never picked up by cp -r / rsync
    video = dataset["videos"][0]
    path = video_path(mounted.path, video)
    before = mounted.status()
    path.read_bytes()
    after = mounted.status()
    assert after["bytes"] >= before["bytes"] + video["file"]["size"] - 65536
    assert after["requests"] > before["requests"]
    for key in ("memory_hits", "disk_hits", "fetched", "retries", "errors", "uptime_s"):
        assert key in after
    assert ".cupixfs" not in os.listdir(mounted.path)
