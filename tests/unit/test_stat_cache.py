"""The persistent stat cache: what a mount saves, the next finds; a key with no entry is
answered without a look on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from cupixfs.data.fetch import RemoteStat
from cupixfs.data.stat_cache import StatCache


def _opened(root: Path) -> StatCache:
    cache = StatCache(root, ttl=3600)
    cache.open()
    assert cache.enabled
    return cache


def test_what_one_mount_saves_the_next_loads_and_an_absent_key_costs_no_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"videos/{n}" for n in range(200)]

    async def save_all() -> None:
        cache = _opened(tmp_path)
        for n, key in enumerate(keys):
            await cache.save(key, "hint", RemoteStat(n, f"etag-{n}", b""))

    trio.run(save_all)
    later = _opened(tmp_path)  # a remount: the filter comes from the directory
    looked: list[str] = []
    real_load = StatCache._load

    def counting_load(self: StatCache, key: str, hint: str) -> RemoteStat | None:
        looked.append(key)
        return real_load(self, key, hint)

    monkeypatch.setattr(StatCache, "_load", counting_load)

    async def load_all() -> None:
        for n, key in enumerate(keys):
            stat = await later.load(key, "hint")
            assert stat is not None and (stat.size, stat.etag) == (n, f"etag-{n}")
        absent = [f"pointclouds/{n}" for n in range(1000)]
        for key in absent:
            assert await later.load(key, "hint") is None
        # Only a few absent keys share a filter bit with a saved one.
        assert len(looked) - len(keys) <= 5

    trio.run(load_all)
    assert looked[: len(keys)] == keys
