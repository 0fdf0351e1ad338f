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
