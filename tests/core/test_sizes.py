"""Sizes the API states (a pointcloud's ``filesize``, a resource's ``size``) reach the file
nodes as `RemoteFile.size`, as stated; where none is stated (or not a positive integer), None."""

from __future__ import annotations

from pathlib import Path

import trio

from cupixfs.data.sources import RemoteFile
from cupixfs.fake.server import FakeServer
from cupixfs.namespace.nodes import FileNode
from tests.core.conftest import TOKEN, inode_of, stack_of


def test_stated_sizes_reach_the_file_nodes(test_data: Path, tmp_path: Path) -> None:
    with FakeServer(test_data, token=TOKEN, per_page=5) as server:
        subs = [p for p in server.dataset.pointclouds.values() if p["attributes"]["kind"] == "sub"]

        def stated(pc: dict[str, object], size: int) -> int | None:
            return {"true": size, "wrong": size + 4_099, "short": max(1, size // 2)}.get(
                str(pc["stated_size"])
            )

        async def main() -> None:
            async with stack_of(server, tmp_path, captures=[]) as stack:
                seen = set()
                for pc in subs:
                    folder = await inode_of(stack.vfs, f"clusters/{pc['cluster_id']}/{pc['id']}")
                    for name, child in await stack.vfs.namespace.listdir(folder):
                        node = stack.vfs.namespace.node(child)
                        if not isinstance(node, FileNode) or not isinstance(
                            node.source, RemoteFile
                        ):
                            continue  # a document, a folder, or a view of another file
                        kind = {"mesh.zip": "mesh", "pointcloud.ply": "ply"}.get(name, "cpc")
                        real = pc["files"][kind]["size"]  # type: ignore[index]
                        assert node.source.size == stated(pc, real), (pc["id"], name)
                        seen.add((pc["stated_size"], kind))
                assert {("true", "cpc"), ("true", "mesh"), ("true", "ply")} <= seen
                assert {("wrong", "cpc"), ("null", "cpc"), ("missing", "mesh")} <= seen

        trio.run(main)
