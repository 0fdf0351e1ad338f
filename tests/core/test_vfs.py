"""`Vfs`: lookups, listings with sizes, opens and reads, by inode, as the kernel drives them."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from cupixfs.core.errors import NotFound
from cupixfs.fake.server import FakeServer
from cupixfs.fs.vfs import IsADirectory
from cupixfs.namespace.tree import ROOT_INODE
from tests.core.conftest import blob_bytes, inode_of, stack_of, video_path, videos


def test_a_listing_gives_every_video_with_its_true_size(
    server: FakeServer, capture_id: int, tmp_path: Path
) -> None:
    async def main() -> None:
        async with stack_of(server, tmp_path) as stack:
            folder = await inode_of(stack.vfs, f"captures/{capture_id}/videos")
            listing = await stack.vfs.listdir(folder)
            sizes = {name: attr.size for name, attr in listing}
            assert sizes == {v["attributes"]["name"]: v["file"]["size"] for v in videos(server)}
            assert [name for name, _ in await stack.vfs.listdir(ROOT_INODE)] == [
                "captures",
                "clusters",
                "projects",
                "records",
            ]

    trio.run(main)


def test_open_read_release_by_inode(server: FakeServer, capture_id: int, tmp_path: Path) -> None:
    video = videos(server)[1]
    expected = blob_bytes(server, video)

    async def main() -> None:
        async with stack_of(server, tmp_path) as stack:
            inode = await inode_of(stack.vfs, video_path(capture_id, video))
            fh, _keep_cache, direct = await stack.vfs.open(inode)
            assert not direct
            assert await stack.vfs.read(fh, 0, 100) == expected[:100]
            assert await stack.vfs.read(fh, len(expected) - 10, 100) == expected[-10:]
            assert await stack.vfs.read(fh, len(expected) + 5, 100) == b""
            stack.vfs.release(fh)
            with pytest.raises(NotFound):
                await stack.vfs.read(fh, 0, 1)

    trio.run(main)


def test_unknown_names_and_directories(server: FakeServer, capture_id: int, tmp_path: Path) -> None:
    async def main() -> None:
        async with stack_of(server, tmp_path) as stack:
            with pytest.raises(NotFound):
                await inode_of(stack.vfs, f"captures/{capture_id}/videos/nope.insv")
            with pytest.raises(NotFound):
                await inode_of(stack.vfs, "captures/999999")
            folder = await inode_of(stack.vfs, f"captures/{capture_id}")
            with pytest.raises(IsADirectory):
                await stack.vfs.open(folder)

    trio.run(main)
