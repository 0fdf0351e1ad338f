"""The log file of a background mount: private, follows rotation, bounded in size."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from cupixfs.mount.logs import LogFile


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test-logs-{id(handler)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_log_file_moved_away_is_followed_by_a_new_private_one(tmp_path: Path) -> None:
    path = tmp_path / "cupixfs.log"
    old_umask = os.umask(0o022)  # the mode must not depend on the caller's umask
    try:
        handler = LogFile(path)
        log = _logger(handler)
        log.info("before rotation")
        os.rename(path, tmp_path / "cupixfs.log.1")  # what logrotate does
        log.info("after rotation")
    finally:
        os.umask(old_umask)
        handler.close()
    assert (tmp_path / "cupixfs.log.1").read_text().splitlines() == ["before rotation"]
    assert path.read_text().splitlines() == ["after rotation"]
    assert _mode(path) == 0o600


def test_a_log_file_never_grows_past_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "cupixfs.log"
    handler = LogFile(path, max_bytes=1000)
    log = _logger(handler)
    try:
        for i in range(300):
            log.info("line %03d of a long-running mount", i)
    finally:
        handler.close()
    old, new = tmp_path / "cupixfs.log.1", path
    assert old.stat().st_size < 1100 and new.stat().st_size < 1100
    assert new.read_text().splitlines()[-1] == "line 299 of a long-running mount"
    assert _mode(old) == _mode(new) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cupixfs.log", "cupixfs.log.1"]
