"""pointcloud.las pushes converted points into the kernel's page cache ahead of a sequential
reader; what it pushes must be exactly what a read would have answered."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import laspy
import numpy as np
import pytest
import trio

from cupixfs.data.sources import DerivedFile
from cupixfs.fake import sample
from cupixfs.fake.sample import CaptureSpec, ClusterSpec, SampleSpec, SubSpec, generate
from cupixfs.fake.server import FakeServer
from cupixfs.namespace.nodes import FileNode
from tests.core.conftest import TOKEN, MiB, inode_of, stack_of

POINTS = 400_003  # about 10 MiB of LAS: several pieces past the push gap


@pytest.fixture(scope="module")
def cloud_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeServer]:
    data = tmp_path_factory.mktemp("las-push")
    spec = SampleSpec(
        "las-push",
        (CaptureSpec("c", ()),),
        (ClusterSpec("k", "c", (SubSpec(1_001, None, POINTS, ply_layout="extra"),)),),
    )
    generate(spec, data)
    with FakeServer(data, token=TOKEN) as server:
        yield server


def test_pushed_points_are_the_points(cloud_server: FakeServer, tmp_path: Path) -> None:
    [pc] = [p for p in cloud_server.dataset.model["pointclouds"] if p["files"]["ply"]]
    las_path = f"clusters/{pc['cluster_id']}/{pc['id']}/pointcloud.las"
    pushed: dict[int, bytes] = {}
    read: dict[int, bytes] = {}

    def push(offset: int, data: bytes) -> None:  # the kernel's page cache
        pushed[offset] = bytes(data)

    async def main() -> None:
        async with stack_of(cloud_server, tmp_path, captures=[]) as stack:
            node = stack.vfs.namespace.node(await inode_of(stack.vfs, las_path))
            assert isinstance(node, FileNode) and isinstance(node.source, DerivedFile)
            size = await stack.data.size(node.source)
            handle = await stack.data.open(node.source, None, push)
            offset = 0
            while offset < size:  # a reader whose reads reach us only where nothing was pushed
                if offset in pushed:
                    offset += len(pushed[offset])
                    continue
                data = bytes(await stack.data.read(handle, offset, MiB))
                read[offset] = data
                offset += len(data)
                await trio.sleep(0.05)  # a slow reader: the pushing gets ahead
            stack.data.release(handle)

    trio.run(main)
    assert pushed, "nothing was pushed ahead of a sequential reader"
    pieces = sorted({**read, **pushed}.items())
    whole = b"".join(data for _, data in pieces)
    assert [o for o, _ in pieces] == [
        sum(len(d) for _, d in pieces[:i]) for i in range(len(pieces))
    ]
    got = laspy.read(io.BytesIO(whole))
    raw = (cloud_server.dataset.dir / "blobs" / pc["files"]["ply"]["blob_id"]).read_bytes()
    body = raw[raw.index(b"end_header\n") + len(b"end_header\n") :]
    ply = np.frombuffer(body, sample._ply_dtype("extra"), count=POINTS)
    assert got.header.point_count == POINTS
    for axis in "xyz":
        assert np.abs(np.asarray(got[axis]) - ply[axis].astype(np.float64)).max() <= 0.0005 + 1e-6
    assert (np.asarray(got.red) == ply["red"].astype(np.uint16) * 257).all()
