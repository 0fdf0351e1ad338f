"""The disk cache's bound holds under concurrent writers, and its index matches the disk."""

from __future__ import annotations

import errno
import logging
import os
import threading
from pathlib import Path

import pytest

from cupixfs.data import block_file
from cupixfs.data.disk_cache import DiskCache
from tests.pagecache import resident_pages

MiB = 1 << 20


def _on_disk(root: Path) -> int:
    """Bytes the block files take on disk (they are sparse: not their length)."""
    return sum(f.stat().st_blocks * 512 for f in (root / "blocks").rglob("*") if f.is_file())


def _files(root: Path) -> list[Path]:
    return [f for f in (root / "blocks").rglob("*") if f.is_file()]


def test_concurrent_writers_never_exceed_the_bound(tmp_path: Path) -> None:
    bound = 3 * MiB
    cache = DiskCache(tmp_path, bound)
    cache.open()
    payload = os.urandom(MiB)
    seen: list[int] = []

    def writer(n: int) -> None:
        for i in range(40):
            cache.put_sync(f"videos/{n}#etag#{MiB}", i, payload)
            seen.append(cache.used_bytes)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(seen) <= bound
    assert 0 < cache.used_bytes <= bound
    assert _on_disk(tmp_path) == cache.used_bytes


def test_a_reopened_cache_finds_its_blocks_and_evicts_oldest_first(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 10 * MiB)
    cache.open()
    for i in range(4):
        cache.put_sync("pointclouds/1#e#9", i, bytes([i]) * 1000)
    again = DiskCache(tmp_path, 10 * MiB)
    again.open()
    assert len(again) == 4
    assert again.get_sync("pointclouds/1#e#9", 2) == bytes([2]) * 1000
    assert again.get_sync("pointclouds/1#other-etag#9", 2) is None  # versions never mix


def test_a_slow_checksum_is_said_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(block_file, "FAST_CHECKSUM", False)
    with caplog.at_level(logging.WARNING):
        DiskCache(tmp_path, 1 << 20).open()
    assert "google-crc32c has no compiled extension" in caplog.text
    caplog.clear()
    monkeypatch.setattr(block_file, "FAST_CHECKSUM", True)
    with caplog.at_level(logging.WARNING):
        DiskCache(tmp_path, 1 << 20).open()
    assert "google-crc32c" not in caplog.text


def test_one_file_per_version_and_evicted_blocks_are_punched_out(tmp_path: Path) -> None:
    slot = block_file.SLOT
    cache = DiskCache(tmp_path, 4 * slot)
    cache.open()
    payload = os.urandom(MiB)
    for i in range(6):  # blocks 0 and 1 are evicted, oldest first
        cache.put_sync("videos/1#e#6", i, payload)
    assert len(_files(tmp_path)) == 1
    assert _on_disk(tmp_path) == cache.used_bytes == 4 * slot
    assert [cache.has("videos/1#e#6", i) for i in range(6)] == [False] * 2 + [True] * 4
    assert cache.get_sync("videos/1#e#6", 0) is None
    assert cache.get_sync("videos/1#e#6", 5) == payload
    # A block of another file evicts block 2 (the oldest); once a file has no block
    # left, it is deleted.
    cache.put_sync("videos/2#e#1", 0, payload)
    assert not cache.has("videos/1#e#6", 2)
    for i in range(4):
        cache.put_sync("videos/2#e#4", i, payload)
    assert len(_files(tmp_path)) == 1 and _on_disk(tmp_path) == 4 * slot
    assert cache.get_sync("videos/2#e#4", 3) == payload


def test_without_holes_a_file_is_evicted_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cannot(path: str, index: int, size: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(block_file, "punch", cannot)
    slot = block_file.SLOT
    cache = DiskCache(tmp_path, 4 * slot)
    cache.open()
    payload = os.urandom(MiB)
    for i in range(3):
        cache.put_sync("videos/1#e#3", i, payload)
    for i in range(2):  # the second one evicts block 0 of videos/1, and so all of it
        cache.put_sync("videos/2#e#2", i, payload)
    assert [cache.has("videos/1#e#3", i) for i in range(3)] == [False] * 3
    assert cache.used_bytes == 2 * slot == _on_disk(tmp_path)
    assert len(_files(tmp_path)) == 1


def test_a_reopened_cache_counts_only_written_slots_and_drops_a_corrupt_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = DiskCache(tmp_path, 10 * MiB)
    cache.open()
    for i in (0, 3, 4):
        cache.put_sync("videos/1#e#5", i, bytes([i]) * 5000)
    (path,) = _files(tmp_path)
    with open(path, "r+b") as f:  # a bit flipped in block 3's payload
        f.seek(3 * block_file.SLOT + block_file.PAGE + 10)
        f.write(b"!")
    again = DiskCache(tmp_path, 10 * MiB)
    again.open()
    assert len(again) == 3 and again.used_bytes == cache.used_bytes
    assert [again.has("videos/1#e#5", i) for i in range(5)] == [True, False, False, True, True]
    with caplog.at_level(logging.WARNING):
        assert again.get_sync("videos/1#e#5", 3) is None
    assert "corrupt" in caplog.text and again.corrupt == 1
    assert not again.has("videos/1#e#5", 3) and len(again) == 2
    assert again.get_sync("videos/1#e#5", 4) == bytes([4]) * 5000
    assert block_file.slots(str(path)).keys() == {0, 4}  # its slot given back


def test_a_file_that_cannot_be_read_at_mount_is_skipped_not_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = DiskCache(tmp_path, 10 * MiB)
    cache.open()
    for name in ("videos/1#e#2", "videos/2#e#2"):
        cache.put_sync(name, 0, bytes(1000))
    unreadable = str(_files(tmp_path)[0])
    real_slots = block_file.slots

    def slots(path: str) -> dict[int, int]:
        if path == unreadable:
            raise PermissionError(13, "Permission denied")
        return real_slots(path)

    monkeypatch.setattr(block_file, "slots", slots)
    again = DiskCache(tmp_path, 10 * MiB)
    again.open()
    assert again.enabled and len(again) == 1


def test_a_run_is_read_in_order_through_the_page_cache_and_dropped_behind(
    tmp_path: Path,
) -> None:
    """`RunReader` gives what `read` gives, and leaves none of the file in memory."""
    path = tmp_path / "version"
    blocks = {i: os.urandom(MiB) for i in range(40) if i != 7}  # slot 7: a hole
    blocks[39] = b"end" * 1000
    for i, payload in blocks.items():
        block_file.write(str(path), i, payload)
    with open(path, "r+b") as f:  # a bit flipped in block 12's payload
        f.seek(12 * block_file.SLOT + block_file.PAGE + 5)
        f.write(b"!")
        f.flush()
        os.fsync(f.fileno())  # (pages written back can be dropped)
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    assert resident_pages(path) == 0
    reader = block_file.RunReader(str(path))
    try:
        for i in range(40):
            if i == 7:
                with pytest.raises(block_file.Missing):
                    reader.read(i)
            elif i == 12:
                assert reader.read(i) is None
            else:
                assert reader.read(i) == blocks[i]
            if i == 3:  # read through the page cache (read-ahead beyond, even)
                assert resident_pages(path) >= 4 * block_file.SLOT // 4096
        with pytest.raises(block_file.Missing):
            reader.read(40)  # past the end
        # Dropped behind the reader as it goes, not only at the end.
        assert resident_pages(path) <= 2 * block_file.RunReader.DROP_EVERY * block_file.SLOT // 4096
    finally:
        reader.close()
    assert resident_pages(path) == 0


def test_a_run_finds_blocks_of_a_file_made_anew_while_it_read(tmp_path: Path) -> None:
    """A run's reader holds the file it opened; the blocks of one made since at the same
    path are still found (not called missing, and so forgotten)."""
    cache = DiskCache(tmp_path, 10 * MiB)
    cache.open()
    version = "videos/1#e#3"
    for i in range(3):
        cache.put_sync(version, i, bytes([i]) * 5000)
    reader = cache.open_run(version)
    try:
        assert reader is not None
        assert cache.get_sync(version, 0, reader) == bytes([0]) * 5000
        # Meanwhile its blocks are evicted (punched out, the file deleted with the last)
        # and written again, into a new file.
        (path,) = _files(tmp_path)
        for i in (1, 2):
            block_file.punch(str(path), i, block_file.SLOT)
        path.unlink()
        for i in (1, 2):
            block_file.write(str(path), i, bytes([i]) * 5000)
        assert cache.get_sync(version, 1, reader) == bytes([1]) * 5000
        assert cache.get_sync(version, 2, reader) == bytes([2]) * 5000
    finally:
        if reader is not None:
            reader.close()
    assert cache.has(version, 1) and cache.has(version, 2) and cache.misses == 0


def _frame_payload(data: bytes, garbage: int = 0xFF) -> memoryview:
    """A frame's payload filled with *data*, its header page and padding left as
    *garbage* (a frame's memory is not zeroed: what the write must not leak)."""
    view = block_file.new_payload(len(data))
    frame = view.obj
    assert isinstance(frame, block_file.Frame)
    memoryview(frame)[:] = bytes([garbage]) * len(frame)
    view[:] = data
    return view.toreadonly()


@pytest.mark.parametrize("length", [MiB, 5000, 1])
def test_a_frame_is_written_as_its_slot_and_read_back_as_one(tmp_path: Path, length: int) -> None:
    data = os.urandom(length)
    payload = _frame_payload(data)
    path = str(tmp_path / "version")
    assert block_file.write(path, 2, payload) == block_file.size_on_disk(length)
    # Byte for byte the slot `encode` lays out: header, payload, zeros (no garbage).
    with open(path, "rb") as f:
        f.seek(2 * block_file.SLOT)
        assert f.read(block_file.size_on_disk(length)) == block_file.encode(data)
    assert block_file.slots(path).keys() == {2}
    # Read back, either way, into a frame: a read-only view of its payload, checked;
    # a short block is copied out, not held in a frame with room for a whole one.
    for got in (block_file.read(path, 2), block_file.RunReader(path).read(2)):
        assert got == data
        if length == MiB:
            assert isinstance(got, memoryview) and got.readonly
            assert isinstance(got.obj, block_file.Frame)
        else:
            assert isinstance(got, bytes)
        # Written again (a block read from disk into another cache), it is its own slot.
        block_file.write(str(tmp_path / "copy"), 0, got)
        assert block_file.read(str(tmp_path / "copy"), 0) == data
    with pytest.raises(block_file.Missing):
        block_file.read(path, 1)  # a hole before it


def test_a_piece_of_a_frame_is_written_as_a_block_of_its_own(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    piece = _frame_payload(data)[100:4200]  # not the frame's payload: laid out anew
    path = str(tmp_path / "version")
    block_file.write(path, 0, piece)
    assert block_file.read(path, 0) == data[100:4200]


def test_a_frame_read_from_a_corrupt_slot_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "version")
    block_file.write(path, 0, _frame_payload(b"x" * 9000))
    with open(path, "r+b") as f:
        f.seek(block_file.PAGE + 8999)
        f.write(b"y")
    assert block_file.read(path, 0) is None
    assert block_file.RunReader(path).read(0) is None


def test_the_checksum_without_its_library_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where google-crc32c's compiled library is not found, frames are checked through
    the package's own function (a copy): the same CRC."""
    view = block_file.new_payload(3000)
    view[:] = os.urandom(3000)
    assert block_file._crc_view is not None  # this machine has it: both ways are tested
    fast = block_file._crc(view)
    monkeypatch.setattr(block_file, "_crc_view", None)
    assert block_file._crc(view) == fast
