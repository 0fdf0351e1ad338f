"""Parsers at the HTTP boundary: Content-Range, signed-URL expiry, API items, sizes."""

import calendar
import os
import time
from pathlib import Path

import pytest

from cupixfs.api.models import Capture, Facility, Level, Pointcloud, Resource, Video, error_message
from cupixfs.config.settings import parse_size
from cupixfs.core.errors import ProtocolError
from cupixfs.core.redact import redact_url
from cupixfs.data.blocks import runs
from cupixfs.data.fetch import parse_content_range
from cupixfs.data.signed_url import url_expiry


def test_content_range() -> None:
    assert parse_content_range("bytes 0-99/1000") == (0, 99, 1000)
    assert parse_content_range("bytes */0") == (None, None, 0)
    assert parse_content_range("bytes 5-9/*") == (5, 9, None)
    assert parse_content_range("garbage") == (None, None, None)
    assert parse_content_range(None) == (None, None, None)


def test_url_expiry_s3_v4() -> None:
    issued = calendar.timegm(time.strptime("20261125T100000Z", "%Y%m%dT%H%M%SZ"))
    url = "https://s3/x?X-Amz-Date=20261125T100000Z&X-Amz-Expires=60&X-Amz-Signature=abc"
    assert url_expiry(url, now=issued + 10) == issued + 60
    assert url_expiry("https://s3/x?Expires=1700000000", now=0) == 1700000000
    assert url_expiry("https://s3/x", now=5) is None


def test_redact_url_hides_query_and_userinfo() -> None:
    redacted = redact_url("https://user:pw@host:8443/path/f.insv?X-Amz-Signature=secret")
    assert "secret" not in redacted and "pw" not in redacted
    assert redacted.startswith("https://host:8443/path/f.insv")


def test_runs() -> None:
    assert runs([1, 2, 3, 5, 6, 9], max_len=2) == [(1, 2), (3, 3), (5, 6), (9, 9)]
    assert runs([], max_len=4) == []


def test_parse_size() -> None:
    assert parse_size("2G") == 2 << 30
    assert parse_size("512M") == 512 << 20
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size("1000") == 1000
    with pytest.raises(ValueError):
        parse_size("lots")


def test_video_item() -> None:
    video = Video.from_item(
        {
            "id": "7",
            "type": "video",
            "attributes": {
                "id": 7,
                "name": "a.insv",
                "state": "done",
                "updated_at": "2023-10-30T02:35:05.544Z",
            },
        }
    )
    assert video.id == 7 and video.name == "a.insv"
    assert video.updated_at is not None and video.updated_at.year == 2023


def test_malformed_items_raise_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        Video.from_item({"id": "7", "attributes": {"id": 7}})  # no name
    with pytest.raises(ProtocolError):
        Video.from_item({"id": "x", "attributes": {"name": "a"}})  # no numeric id
    with pytest.raises(ProtocolError):
        Pointcloud.from_item({"id": "1", "attributes": {"id": 1, "name": "n"}})  # no kind
    with pytest.raises(ProtocolError):
        Video.from_item(["not", "a", "dict"])


def test_pointcloud_item() -> None:
    pc = Pointcloud.from_item(
        {
            "id": "5310",
            "attributes": {
                "id": 5310,
                "name": "12116.cpc",
                "kind": "sub",
                "parent": {"id": 5309},
                "cluster": {"id": 3416, "name": "Cluster 1"},
                "mesh_uploaded_at": None,
                "meta": {"prop": {"tm": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]}},
            },
        }
    )
    assert pc.is_sub and pc.cluster_id == 3416 and pc.parent_id == 5309
    assert pc.resources_known and pc.mesh_uploaded_at is None
    assert pc.tm is not None and len(pc.tm) == 16


def test_split_chunks_recuts_without_losing_bytes() -> None:
    import random

    from cupixfs.data.fetch import split_chunks

    rng = random.Random(5)
    for _ in range(200):
        data = rng.randbytes(rng.randrange(0, 5000))
        chunks, position = [], 0
        while position < len(data):
            step = rng.randrange(1, 900)
            chunks.append(data[position : position + step])
            position += step
        piece = rng.randrange(1, 1200)
        pieces = split_chunks(chunks, piece)
        assert b"".join(pieces) == data
        assert all(len(p) == piece for p in pieces[:-1])
        assert all(isinstance(p, bytes) for p in pieces)


def test_block_files_detect_corruption(tmp_path: Path) -> None:
    from cupixfs.data import block_file

    payload = bytes(range(256)) * 100
    raw = block_file.encode(payload)
    assert len(raw) % block_file.PAGE == 0  # whole pages, as O_DIRECT writes them
    assert block_file.decode(raw) == payload
    assert block_file.decode(raw[:-1]) is None  # truncated
    assert block_file.decode(raw + b"x") is None  # trailing garbage
    assert block_file.decode(raw + b"x", exact=False) == payload  # the next slot's bytes
    flipped = bytearray(raw)
    flipped[block_file.PAGE + 100] ^= 1
    assert block_file.decode(bytes(flipped)) is None
    assert block_file.decode(b"XXXX" + raw[4:]) is None
    for hole in (b"", bytes(block_file.PAGE), bytes(len(raw))):
        with pytest.raises(block_file.Missing):
            block_file.decode(hole)
    # Written and read back through the filesystem (O_DIRECT where it takes it): one
    # file, each block in its slot, the others holes.
    path = str(tmp_path / "version")
    full = bytes(range(256)) * (block_file.MAX_PAYLOAD // 256)
    assert block_file.write(path, 0, full) == block_file.SLOT
    assert block_file.write(path, 2, payload) == len(raw)
    assert block_file.read(path, 0) == full
    assert block_file.read(path, 2) == payload
    for absent in (1, 3, 1000):  # a hole, and past the file's end
        with pytest.raises(block_file.Missing):
            block_file.read(path, absent)
    assert block_file.slots(path) == {0: block_file.SLOT, 2: len(raw)}
    # Punched out: a hole again, the disk's bytes given back, the other block intact.
    used = os.stat(path).st_blocks
    block_file.punch(path, 0, block_file.SLOT)
    assert os.stat(path).st_blocks <= used - block_file.SLOT // 512
    with pytest.raises(block_file.Missing):
        block_file.read(path, 0)
    assert block_file.slots(path) == {2: len(raw)}
    assert block_file.read(path, 2) == payload
    # Corrupt and cut short.
    with open(path, "r+b") as f:
        f.seek(2 * block_file.SLOT + block_file.PAGE + 7)
        f.write(b"!")
    assert block_file.read(path, 2) is None
    block_file.write(path, 2, payload)
    assert block_file.read(path, 2) == payload
    os.truncate(path, 2 * block_file.SLOT + len(raw) - 1)
    assert block_file.read(path, 2) is None


@pytest.mark.parametrize(
    ("stated", "size"),
    [
        (1234, 1234),
        (None, None),
        (0, None),
        (-5, None),
        (12.5, None),
        ("1234", None),
        ("3.63 MB", None),
        (True, None),
        ("absent", None),
    ],
)
def test_stated_sizes_are_positive_integers_or_none(stated: object, size: int | None) -> None:
    attrs: dict[str, object] = {"id": 1, "name": "a.cpc", "kind": "sub"}
    if stated != "absent":
        attrs["filesize"] = stated
    assert Pointcloud.from_item({"id": "1", "attributes": attrs}).filesize == size
    resource = {"id": "2", "attributes": {"name": "m.zip", "kind": "mesh"}}
    if stated != "absent":
        resource["attributes"]["size"] = stated  # type: ignore[index]
    assert Resource.from_item(resource).size == size


def test_a_pointcloud_keeps_its_transforms_not_its_meta() -> None:
    pc = Pointcloud.from_item(
        {
            "id": "5",
            "attributes": {
                "id": 5,
                "name": "n",
                "kind": "sub",
                "meta": {"prop": {"tm": [1, 0, 0, 0] * 4, "original_file_name": "x"}, "potree": {}},
            },
        }
    )
    assert pc.tm == (1.0, 0.0, 0.0, 0.0) * 4
    assert not hasattr(pc, "meta") and not hasattr(pc, "__dict__")  # slotted, no raw dicts


def test_captures_projects_and_levels_carry_bare_ids() -> None:
    capture = Capture.from_item(
        {
            "id": "9",
            "attributes": {
                "id": 9,
                "name": "Walk",
                "facility": {"id": 400},
                "level": {},
                "record": {"id": "602"},
                "captured_at": "2023-11-17T10:00:00.000Z",
            },
        }
    )
    assert (capture.facility_id, capture.level_id, capture.record_id) == (400, None, 602)
    assert capture.captured_at is not None and capture.captured_at.day == 17
    assert Capture.from_item({"id": "3", "attributes": {}}).name == "capture 3"
    facility = Facility.from_item({"id": "1", "attributes": {"name": "P", "key": "k1"}})
    assert (facility.id, facility.key, facility.name) == (1, "k1", "P")
    with pytest.raises(ProtocolError):
        Facility.from_item({"id": "1", "attributes": {"name": "P"}})  # no key: no levels
    assert Level.from_item({"id": "20", "attributes": {"name": "L1"}}).name == "L1"


def test_the_error_message_of_an_error_body() -> None:
    vendor = {
        "result": {"code": 401, "type": "x", "reason": "Unauthorized", "message": "Bad\ttoken"}
    }
    assert error_message(vendor) == "Bad token"
    assert error_message({"result": {"reason": "Forbidden"}}) == "Forbidden"
    assert error_message({"error": "nope"}) == "nope"
    assert error_message({"message": "x" * 500}) == "x" * 199 + "…"
    assert error_message(["no"]) is None and error_message({"result": {}}) is None
