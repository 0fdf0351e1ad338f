"""The concurrent core driven in-process: a real `Stack` (API client, fetcher, block cache,
data store, namespace, vfs) against a real fake server on loopback, with no kernel.

Each test runs its own ``trio.run``; the fake server runs in its own threads, so its
latency and faults apply exactly as they do to a mount.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from cupixfs.config.settings import resolve
from cupixfs.fake.sample import CaptureSpec, SampleSpec, generate
from cupixfs.fake.server import FakeServer
from cupixfs.fs.vfs import Vfs
from cupixfs.mount.stack import Stack, open_stack
from cupixfs.namespace.tree import ROOT_INODE

TOKEN = "core-token"
MiB = 1 << 20
CAPTURE_NAME = "core"
#: A video longer than what is fetched whole at once, one shorter, one of a few blocks,
#: one smaller than a block.
VIDEO_SIZES = (40 * MiB + 3, 12 * MiB + 5, 3 * MiB + 1, 300_001)


@pytest.fixture(scope="session")
def core_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("core-data")
    generate(SampleSpec("core", (CaptureSpec(CAPTURE_NAME, VIDEO_SIZES),)), data_dir)
    return data_dir


@pytest.fixture
def server(core_data: Path) -> Iterator[FakeServer]:
    with FakeServer(core_data, token=TOKEN, per_page=2) as fake:
        yield fake


@pytest.fixture
def capture_id(server: FakeServer) -> int:
    return next(iter(server.dataset.captures))


def videos(server: FakeServer) -> list[dict[str, Any]]:
    """The videos of the data set, largest first."""
    return sorted(server.dataset.videos.values(), key=lambda v: -v["file"]["size"])


def blob_bytes(server: FakeServer, video: dict[str, Any]) -> bytes:
    return (server.dataset.dir / "blobs" / video["file"]["blob_id"]).read_bytes()


@asynccontextmanager
async def stack_of(server: FakeServer, tmp_path: Path, **settings: Any) -> AsyncIterator[Stack]:
    """A mount's stack without the mount: every layer, its pools and background tasks."""
    values = {
        "api_url": server.api_url,
        "cache_dir": tmp_path / "cache",
        "cache_size": 256 * MiB,
        "captures": sorted(server.dataset.captures),
        "timeout": 10.0,
        **settings,
    }
    async with open_stack(resolve(tmp_path / "mnt", TOKEN, values)) as stack:
        yield stack


async def inode_of(vfs: Vfs, path: str) -> int:
    """Walk *path* from the root by `Vfs.lookup`, as the kernel would."""
    inode = ROOT_INODE
    for name in path.strip("/").split("/"):
        inode = (await vfs.lookup(inode, name)).inode
    return inode


def video_path(capture_id: int, video: dict[str, Any]) -> str:
    return f"captures/{capture_id}/videos/{video['attributes']['name']}"
