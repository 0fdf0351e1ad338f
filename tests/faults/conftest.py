"""Shared pieces of the fault-injection suite: files of the data set, reads that really reach
the filesystem, a private fake server tests may stop or modify, and mounts of it.

The session ``fake`` (from ``tests/conftest.py``) is fine while a test only turns fault knobs.
A test that stops the server or replaces blobs uses ``private_fake`` instead (mounted with
``mounter(..., server=private_fake)``): its own copy of the data on its own port, so no other
test ever sees the damage.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cupixfs.fake.server import FakeServer
from tests.conftest import PER_PAGE, TOKEN

BLOCK = 1 << 20


@dataclass(frozen=True)
class DataFile:
    """A downloadable file as the mount shows it, with the blob the server serves for it."""

    rel: str  # path relative to the mount root
    blob_id: str
    size: int
    sha256: str


def pin_args(dataset: dict[str, Any]) -> list[str]:
    """``--capture``/``--record`` for every capture and record, so all of the tree shows."""
    args: list[str] = []
    for capture in dataset["captures"]:
        args += ["--capture", str(capture["id"])]
    for record in dataset["records"]:
        args += ["--record", str(record["id"])]
    return args


def data_files(dataset: dict[str, Any]) -> list[DataFile]:
    """Every video and point-cloud file of the model at its mounted path (no hostile names)."""
    files: list[DataFile] = []
    captures = {c["id"]: c for c in dataset["captures"] if c["name"] != "hostile"}
    for video in dataset["videos"]:
        if video["capture_id"] in captures:
            rel = f"captures/{video['capture_id']}/videos/{video['attributes']['name']}"
            files.append(_entry(rel, video["file"]))
    for pc in dataset["pointclouds"]:
        if pc["attributes"]["kind"] != "sub":
            continue
        base = f"clusters/{pc['cluster_id']}/{pc['id']}"
        for kind, name in (("cpc", pc["attributes"]["name"]), ("mesh", "mesh.zip")):
            if pc["files"][kind] is not None:
                files.append(_entry(f"{base}/{name}", pc["files"][kind]))
        if pc["files"]["ply"] is not None:
            files.append(_entry(f"{base}/pointcloud.ply", pc["files"]["ply"]))
    return files


def _entry(rel: str, blob: dict[str, Any]) -> DataFile:
    return DataFile(rel, blob["blob_id"], blob["size"], blob["sha256"])


def largest(dataset: dict[str, Any]) -> DataFile:
    """The largest video (3 blocks): these tests read a video across faults."""
    return max((f for f in data_files(dataset) if "/videos/" in f.rel), key=lambda f: f.size)


def blob_bytes(server: FakeServer, blob_id: str) -> bytes:
    """What the server holds for a blob right now (the reference for every byte read)."""
    return (server.dataset.dir / "blobs" / blob_id).read_bytes()


def drop_page_cache(fd: int) -> None:
    """Make the kernel forget its cached pages of a file, so the next read reaches cupixfs."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def pread_fresh(path: Path, offset: int, length: int) -> bytes:
    """``pread`` a range, past the kernel's page cache (each call is a real FUSE read)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        drop_page_cache(fd)
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def sha256_fresh(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a whole file, read past the kernel's page cache."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        drop_page_cache(fd)
        while block := os.read(fd, chunk):
            digest.update(block)
    finally:
        os.close(fd)
    return digest.hexdigest()


def timed_errno(operation: Callable[[], object]) -> tuple[int | None, float]:
    """Run *operation*; return (errno it failed with or None, seconds it took)."""
    start = time.monotonic()
    try:
        operation()
    except OSError as exc:
        return exc.errno, time.monotonic() - start
    return None, time.monotonic() - start


def errno_name(code: int | None) -> str:
    return "no error" if code is None else errno.errorcode.get(code, str(code))


def log_lines(text: str, *needles: str) -> list[str]:
    """Lines of a log that contain any of *needles* (case-insensitive)."""
    lowered = [n.lower() for n in needles]
    return [line for line in text.splitlines() if any(n in line.lower() for n in lowered)]


@pytest.fixture
def private_fake(test_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeServer]:
    """A fake server of its own over a private copy of the data: free to stop, restart or edit."""
    data_dir = tmp_path_factory.mktemp("private-data") / "data"
    shutil.copytree(test_data, data_dir)
    server = FakeServer(data_dir, token=TOKEN, per_page=PER_PAGE).start()
    try:
        yield server
    finally:
        server.stop()


def restart_on_same_port(server: FakeServer) -> FakeServer:
    """A stopped server's replacement: same data, same port (so the mount's URLs still work)."""
    return FakeServer(server.dataset.dir, token=TOKEN, per_page=PER_PAGE, port=server.port).start()
