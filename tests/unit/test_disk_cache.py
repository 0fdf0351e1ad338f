"""The disk cache's bound holds under concurrent writers, and its index matches the disk."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from cupixfs.data import block_file
from cupixfs.data.disk_cache import DiskCache

MiB = 1 << 20


def _on_disk(root: Path) -> int:
    return sum(f.stat().st_size for f in (root / "blocks").rglob("*") if f.is_file())


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
