"""Small helpers for tests that walk a mount."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cupixfs.fake.sample import SampleSpec, generate
from cupixfs.fake.server import FakeServer
from tests.conftest import TOKEN


@contextmanager
def sample_server(spec: SampleSpec, factory: pytest.TempPathFactory) -> Iterator[FakeServer]:
    """A fake server over *spec*'s sample data, written into a fresh temporary folder."""
    data = factory.mktemp(spec.name)
    generate(spec, data)
    with FakeServer(data, token=TOKEN) as server:
        yield server


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def walk_files(root: Path) -> set[str]:
    found: set[str] = set()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            found.add(str(Path(dirpath, name).relative_to(root)))
    return found


def stored_only(paths: set[str]) -> set[str]:
    """*paths* without the derived views (``mesh/`` members, ``pointcloud.las``), which
    the API does not list and test_views.py checks."""
    return {p for p in paths if "/mesh/" not in p and not p.endswith("/pointcloud.las")}


def blob_files(dataset: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every downloadable blob of the model, by blob id."""
    blobs = {v["file"]["blob_id"]: v["file"] for v in dataset["videos"]}
    for pc in dataset["pointclouds"]:
        for f in pc["files"].values():
            if f is not None:
                blobs[f["blob_id"]] = f
    return blobs


def hostile_capture(dataset: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in dataset["captures"] if c["name"] == "hostile")


def video_path(root: Path, video: dict[str, Any]) -> Path:
    """Where a video of the model appears under a mount."""
    return root / "captures" / str(video["capture_id"]) / "videos" / video["attributes"]["name"]
