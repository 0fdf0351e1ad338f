"""The mount is read-only: every kind of write fails with EROFS."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Mount


def test_writes_fail_with_erofs(mounted: Mount, dataset: dict[str, Any]) -> None:
    capture = dataset["captures"][0]["id"]
    videos = mounted.path / "captures" / str(capture) / "videos"
    existing = videos / sorted(os.listdir(videos))[0]
    attempts: list[Callable[[], object]] = [
        lambda: open(existing, "r+b"),  # noqa: SIM115
        lambda: open(existing, "ab"),  # noqa: SIM115
        lambda: open(videos / "new.insv", "wb"),  # noqa: SIM115
        lambda: os.mkdir(videos / "dir"),
        lambda: os.unlink(existing),
        lambda: os.rename(existing, videos / "renamed"),
        lambda: os.truncate(existing, 0),
        lambda: os.chmod(existing, 0o644),
        lambda: os.utime(existing, (0, 0)),
        lambda: os.symlink("x", videos / "link"),
        lambda: os.rmdir(videos),
        lambda: os.setxattr(existing, "user.x", b"1"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS, attempt
    assert os.statvfs(mounted.path).f_flag & os.ST_RDONLY
