"""Remote files' sizes and ETags, kept on disk beside the blocks.

A remount must answer ``ls -l`` and serve cached blocks with no request to
storage, so what a probe learnt (size, ETag) is saved per remote file, with
the *hint* the API gave for that file when it was probed (its ``updated_at``).
An entry is trusted while the hint is unchanged and it is younger than the
TTL; a different hint means the file changed, and it is probed again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

import trio

from cupixfs.core import cache_layout as layout
from cupixfs.data.fetch import RemoteStat

log = logging.getLogger(__name__)


class StatCache:
    """Persistent ``key -> (size, etag, hint, probed_at)`` entries, one small JSON file each."""

    def __init__(self, root: Path, ttl: float) -> None:
        self.root = root / layout.STATS
        self.ttl = ttl
        self.enabled = True
        #: Offline, an entry is trusted however old it is: there is nothing to ask.
        self.offline = False

    def open(self) -> None:
        self.enabled = layout.make_private_dir(self.root, "stat cache")

    def _path(self, key: str) -> Path:
        return self.root / layout.stat_file(key)

    # The files are small, but the event loop never waits on the disk: each call is
    # one hop to a worker thread.

    async def load(self, key: str, hint: str) -> RemoteStat | None:
        """The saved size and ETag of *key*, if saved for this *hint* and fresh enough."""
        if not self.enabled:
            return None
        return await trio.to_thread.run_sync(self._load, key, hint)

    async def save(self, key: str, hint: str, stat: RemoteStat) -> None:
        if self.enabled:
            await trio.to_thread.run_sync(self._save, key, hint, stat, time.time())

    async def drop(self, key: str) -> None:
        await trio.to_thread.run_sync(self._drop, key)

    def _load(self, key: str, hint: str) -> RemoteStat | None:
        try:
            entry = json.loads(self._path(key).read_text())
            if (
                entry.get("key") != key
                or entry.get("hint") != hint
                or (not self.offline and time.time() - float(entry["probed_at"]) > self.ttl)
            ):
                return None
            size = entry["size"]
            etag = entry["etag"]
            if not isinstance(size, int) or size < 0 or not (etag is None or isinstance(etag, str)):
                return None
            return RemoteStat(size, etag, b"")
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or corrupt: probe again

    def _save(self, key: str, hint: str, stat: RemoteStat, now: float) -> None:
        body = {"key": key, "hint": hint, "size": stat.size, "etag": stat.etag, "probed_at": now}
        try:
            layout.write_private_json(self._path(key), body)
        except OSError as exc:
            log.debug("cannot save a stat entry: %s", exc.strerror)

    def _drop(self, key: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._path(key))
