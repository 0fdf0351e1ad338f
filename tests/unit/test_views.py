"""The derived views' pure parts: a zip's end records and central directory, a PLY header,
LAS records and header (read back by laspy)."""

from __future__ import annotations

import io
import zipfile

import laspy
import numpy as np
import pytest
import trio

from cupixfs.core.errors import ProtocolError, RemoteChanged
from cupixfs.data.sources import RemoteFile
from cupixfs.data.store import OpenFile
from cupixfs.views import las
from cupixfs.views.handles import read_on_new_version
from cupixfs.views.ply import NotConvertible, parse_header
from cupixfs.views.sources import ZipMember
from cupixfs.views.zipindex import find_end, parse_central, parse_end64
from cupixfs.views.zips import MemberHandle, ZipViews

MiB = 1 << 20


def _zip(comment: bytes = b"", prefix: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("a.txt", b"hello")
        zf.writestr(zipfile.ZipInfo("d/"), b"")
        zf.writestr("d/b.bin", b"x" * 1000, compress_type=zipfile.ZIP_DEFLATED)
        zf.comment = comment
    return prefix + buffer.getvalue()


def _index(raw: bytes) -> list[tuple[str, int, int]]:
    end, at64 = find_end(raw, 0)
    if at64 is not None:
        end = parse_end64(raw[at64 : at64 + 56], at64, at64)
    index = parse_central(raw[end.cd_offset : end.cd_offset + end.cd_size], end)
    return [(m.name, m.size, m.header_offset) for m in index.members]


def test_end_record_behind_a_comment_holding_its_signature() -> None:
    raw = _zip(comment=b"PK\x05\x06 is not the end record" + b"z" * 100)
    assert [name for name, _, _ in _index(raw)] == ["a.txt", "d/", "d/b.bin"]


def test_bytes_prepended_to_an_archive_move_every_offset() -> None:
    plain = _index(_zip())
    shifted = _index(_zip(prefix=b"#!/bin/sh\nexit 0\n"))
    assert [o for _, _, o in shifted] == [o + 17 for _, _, o in plain]


def test_zip64_end_records_are_followed() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for i in range(3):
            with zf.open(f"f{i}", "w", force_zip64=True) as f:
                f.write(b"%d" % i)
    raw = bytearray(buffer.getvalue())
    # Rewrite the end as Python does past 65535 entries: a Zip64 record and its locator.
    end, _ = find_end(bytes(raw), 0)
    eocd = raw.rindex(b"PK\x05\x06")
    record = b"PK\x06\x06" + (44).to_bytes(8, "little") + bytes([45, 0, 45, 0]) + bytes(8)
    record += (3).to_bytes(8, "little") * 2
    record += end.cd_size.to_bytes(8, "little") + end.cd_offset.to_bytes(8, "little")
    locator = b"PK\x06\x07" + bytes(4) + eocd.to_bytes(8, "little") + (1).to_bytes(4, "little")
    tail = b"PK\x05\x06" + bytes(4) + b"\xff\xff" * 2 + b"\xff\xff\xff\xff" * 2 + bytes(2)
    raw = raw[:eocd] + record + locator + tail
    assert [name for name, _, _ in _index(bytes(raw))] == ["f0", "f1", "f2"]


def test_not_a_zip_is_a_clear_error() -> None:
    with pytest.raises(ProtocolError, match="not a zip archive"):
        find_end(b"just some bytes" * 100, 0)


# -- PLY headers -------------------------------------------------------------------------


def _ply(*lines: str, newline: str = "\n") -> bytes:
    return newline.join(["ply", *lines, "end_header"]).encode() + newline.encode()


def test_ply_layouts_that_convert() -> None:
    header = _ply(
        "format binary_big_endian 1.0",
        "comment made by hand",
        "element camera 2",
        "property float f",
        "element vertex 7",
        "property double z",
        "property uchar red",
        "property int id",
        "property double x",
        "property uchar green",
        "property double y",
        "property uchar blue",
        "element face 1",
        "property list uchar int vertex_indices",
        newline="\r\n",
    )
    layout = parse_header(header + b"\0" * 100)
    assert layout.count == 7 and layout.stride == 8 + 1 + 4 + 8 + 1 + 8 + 1
    assert layout.vertex_start == len(header) + 2 * 4  # after the two cameras
    assert layout.has_colour and layout.dtype["x"].byteorder == ">"
    assert layout.dtype.fields is not None and layout.dtype.fields["x"][1] == 13


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        (["format ascii 1.0", "element vertex 1", "property float x"], "ASCII"),
        (["format binary_little_endian 1.0", "element face 1", "property float x"], "no vertex"),
        (
            [
                "format binary_little_endian 1.0",
                "element face 1",
                "property list uchar int vertex_indices",
                "element vertex 1",
                "property float x",
            ],
            "comes before the vertices",
        ),
        (
            [
                "format binary_little_endian 1.0",
                "element vertex 1",
                "property int x",
                "property int y",
                "property int z",
            ],
            "not float or double",
        ),
        (["format binary_little_endian 1.0", "element vertex 1", "property float y"], "no x"),
    ],
)
def test_ply_layouts_that_do_not(lines: list[str], reason: str) -> None:
    with pytest.raises(NotConvertible, match=reason):
        parse_header(_ply(*lines))


def test_no_end_header_is_not_convertible() -> None:
    with pytest.raises(NotConvertible):
        parse_header(b"ply\nformat binary_little_endian 1.0\n")
    with pytest.raises(NotConvertible, match="not a PLY"):
        parse_header(b"solid stl\n")


# -- LAS -----------------------------------------------------------------------------------


def test_las_records_and_header_read_back_by_laspy() -> None:
    header = _ply(
        "format binary_little_endian 1.0",
        "element vertex 4",
        "property double x",
        "property double y",
        "property double z",
        "property uchar red",
        "property uchar green",
        "property uchar blue",
    )
    layout = parse_header(header)
    vertices = np.zeros(4, layout.dtype)
    vertices["x"] = [512_345.6784, 512_346.0, np.nan, 512_340.0]
    vertices["y"] = [4_123_456.7891, 4_123_450.0, 4_123_451.0, 4_123_452.0]
    vertices["z"] = [100.0, 101.5, 99.9996, 1e12]  # the last is clamped
    vertices["red"] = [0, 255, 1, 128]
    data = vertices.tobytes()
    offsets = las.offsets_for(data[: layout.stride], layout)
    assert offsets == (512_000.0, 4_123_000.0, 0.0)
    box = las.bounds(data, layout, offsets)
    assert box is not None
    raw = las.header(4, offsets, box, None, "cupixfs test") + bytes(
        las.points(data, layout, offsets)
    )
    got = laspy.read(io.BytesIO(raw))
    assert got.header.point_count == 4 and got.header.point_format.id == 2
    assert list(np.asarray(got.red)) == [0, 65535, 257, 128 * 257]
    assert np.asarray(got.x)[0] == pytest.approx(512_345.678, abs=1e-6)
    assert np.asarray(got.x)[2] == pytest.approx(512_000.0)  # NaN: at the offset
    assert np.asarray(got.z)[3] == pytest.approx((2**31 - 1) * 0.001)
    assert list(got.header.maxs) == pytest.approx([np.asarray(got[a]).max() for a in "xyz"])
    assert list(got.header.mins) == pytest.approx([np.asarray(got[a]).min() for a in "xyz"])
    # The bounds taken on the way while converting (the pass that pushes) are the same.
    records, on_the_way = las.points_and_bounds(data, layout, offsets)
    assert bytes(records) == raw[las.HEADER_SIZE :] and on_the_way == box
    sane = vertices[:2].tobytes()  # finite and in range: the clamping is skipped
    assert las.points_and_bounds(sane, layout, offsets)[1] == las.bounds(sane, layout, offsets)
    assert las.points_and_bounds(b"", layout, offsets)[1] is None


def test_las_points_converted_run_by_run_are_those_converted_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Vertices go through a run at a time (for the CPU's cache): the records and the
    bounds are the same whatever the run, extremes, NaN and clamped values in any run."""
    header = _ply(
        "format binary_little_endian 1.0",
        "element vertex 1000",
        "property float x",
        "property float y",
        "property float z",
        "property uchar red",
        "property uchar green",
        "property uchar blue",
    )
    layout = parse_header(header)
    rng = np.random.default_rng(7)
    vertices = np.zeros(1000, layout.dtype)
    for axis in "xyz":
        vertices[axis] = rng.uniform(-500.0, 500.0, 1000)
    vertices["x"][10], vertices["y"][500], vertices["z"][999] = np.nan, 3e9, -3e9
    vertices["x"][777], vertices["y"][3] = 9_000.0, -9_000.0  # extremes in other runs
    for colour in ("red", "green", "blue"):
        vertices[colour] = rng.integers(0, 256, 1000)
    data = vertices.tobytes()
    offsets = las.offsets_for(data[: layout.stride], layout)
    whole = las.points_and_bounds(data, layout, offsets)
    assert whole[1] == las.bounds(data, layout, offsets)
    for run in (1, 7, 256):
        monkeypatch.setattr(las, "CONVERT_RUN", run)
        records, box = las.points_and_bounds(data, layout, offsets)
        assert bytes(records) == bytes(whole[0]) and box == whole[1], run


# -- inflating a member: checkpoints ---------------------------------------------------------


class _Store:
    """Just enough of `DataStore` for `ZipViews`: one remote file's bytes, reads counted."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.read_bytes = 0

    async def open(self, source: RemoteFile, cached_version: str | None = None) -> OpenFile:
        return OpenFile(source, version="v1")

    async def size(self, source: RemoteFile) -> int:
        return len(self.data)

    async def read(self, handle: OpenFile, offset: int, size: int, exact: bool = False) -> bytes:
        self.read_bytes += size
        return self.data[offset : offset + size]


def test_a_random_read_restarts_from_a_copy_of_the_inflater_not_the_start() -> None:
    rng = np.random.default_rng(5)
    # Text-like, compressible but not trivially so: about 3:1.
    words = [b"v %.6f %.6f\n" % tuple(rng.uniform(-9, 9, 2)) for _ in range(4000)]
    member = b"".join(words[i] for i in rng.integers(0, 4000, 400_000))[: 8 * MiB + 5]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.obj", member)
    store = _Store(buffer.getvalue())
    views = ZipViews(store, inflated_bytes=2 * MiB)  # type: ignore[arg-type]
    archive = RemoteFile("k", "p")
    source = ZipMember("k!0", archive, 0, "big.obj")

    async def main() -> None:
        handle = await views.open(source, None)
        for offset in range(0, len(member), MiB):  # sequential: copies taken on the way
            assert await views.read(handle, offset, MiB) == member[offset : offset + MiB]
        compressed = len(store.data) / len(member)
        for offset in (6 * MiB + 777, 2 * MiB - 3, 5):  # blocks long evicted
            store.read_bytes = 0
            assert await views.read(handle, offset, 4096) == member[offset : offset + 4096]
            # One block's worth of compressed input (plus a chunk's slack), not 6 blocks'.
            assert store.read_bytes <= compressed * MiB + (1 << 20), offset

    trio.run(main)


# -- reading on when the remote file changed -----------------------------------------------


class _Releases:
    def __init__(self) -> None:
        self.released: list[OpenFile] = []

    def release(self, handle: OpenFile) -> None:
        self.released.append(handle)


def test_a_read_that_showed_nothing_reopens_on_the_new_version_once_shown_it_fails() -> None:
    old_base, new_base = (
        OpenFile(RemoteFile("k", "p"), version="v1"),
        OpenFile(RemoteFile("k", "p"), version="v2"),
    )
    store = _Releases()

    def handle() -> MemberHandle:
        return MemberHandle(ZipMember("k!0", RemoteFile("k", "p"), 0, "a"), version="v1/0",
                            base=old_base, start=10)  # fmt: skip

    async def reopen() -> MemberHandle:
        return MemberHandle(ZipMember("k!0", RemoteFile("k", "p"), 0, "a"), version="v2/0",
                            base=new_base, start=99)  # fmt: skip

    async def main() -> None:
        calls: list[str] = []

        async def read_changing() -> bytes:
            calls.append(h.version or "")
            if h.version == "v1/0":
                raise RemoteChanged("k changed")
            return b"new"

        h = handle()
        got = await read_on_new_version(store, h, read_changing, reopen)  # type: ignore[arg-type]
        assert got == b"new" and calls == ["v1/0", "v2/0"]
        assert (h.base, h.start, h.shown) == (new_base, 99, True)
        assert store.released == [old_base]

        h = handle()
        h.shown = True  # a byte of v1 was shown: no silent switch
        with pytest.raises(RemoteChanged):
            await read_on_new_version(store, h, read_changing, reopen)  # type: ignore[arg-type]
        assert h.base is old_base

    trio.run(main)


def test_a_las_byte_range_maps_onto_the_vertices_that_hold_it() -> None:
    header, point = las.HEADER_SIZE, las.POINT_SIZE
    assert las.vertex_span(0, header) == (0, 0, 0)  # the header alone: no vertex
    assert las.vertex_span(0, header + 1) == (0, 1, 0)
    assert las.vertex_span(header + 5 * point + 3, header + 7 * point) == (5, 2, 3)
    assert las.vertex_span(header + 5 * point, header + 5 * point + 1) == (5, 1, 0)
