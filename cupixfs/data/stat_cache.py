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
from typing import Any

import trio

from cupixfs.core import cache_layout as layout
from cupixfs.core.write_behind import WriteBehind
from cupixfs.data.fetch import RemoteStat

log = logging.getLogger(__name__)

#: The filter of saved entries has ``2**FILTER_BITS`` bits (256 KiB), one per value of
#: the first bits of an entry's file name (a hash): with 100,000 entries saved, one key
#: in twenty that has none still costs a look on disk.
FILTER_BITS = 21


class StatCache:
    """Persistent ``key -> (size, etag, hint, probed_at)`` entries, one small JSON file each."""

    def __init__(self, root: Path, ttl: float, writer: WriteBehind | None = None) -> None:
        self.root = root / layout.STATS
        self.ttl = ttl
        self.enabled = True
        #: Offline, an entry is trusted however old it is: there is nothing to ask.
        self.offline = False
        #: A bit per entry file name's prefix, set for every entry on disk (and some
        #: more): a key whose bit is clear has no entry, and costs no look on disk.
        self._saved = bytearray(1 << FILTER_BITS >> 3)
        #: Writes the entries (behind the loop, once the mount runs it).
        self.writer = writer or WriteBehind()

    def open(self) -> None:
        """Create the directory; note the entries a previous mount left (in a worker
        thread, at mount start: one listing of the directory)."""
        self.enabled = layout.make_private_dir(self.root, "stat cache")
        if not self.enabled:
            return
        try:
            with os.scandir(self.root) as entries:
                for entry in entries:
                    self._note(entry.name)
        except OSError as exc:  # the filter then says "maybe" of everything
            log.debug("stat cache: cannot list %s (%s)", self.root, exc.strerror)
            self._saved[:] = b"\xff" * len(self._saved)

    def _path(self, key: str) -> Path:
        return self.root / layout.stat_file(key)

    def _bit(self, name: str) -> tuple[int, int] | None:
        """Where the filter keeps the file *name* (byte, mask); None for a name that is not
        an entry's."""
        try:
            prefix = int(name[:6], 16) >> (24 - FILTER_BITS)
        except ValueError:
            return None
        return prefix >> 3, 1 << (prefix & 7)

    def _note(self, name: str) -> None:
        bit = self._bit(name)
        if bit is not None:
            self._saved[bit[0]] |= bit[1]

    def may_have(self, key: str) -> bool:
        """False when *key* certainly has no entry on disk."""
        bit = self._bit(layout.stat_file(key))
        return bit is not None and bool(self._saved[bit[0]] & bit[1])

    # The files are small, but the event loop never waits on the disk: a load is one
    # hop to a worker thread, unless the filter or the writer's queue answers it; a save
    # is queued for the writer.

    async def load(self, key: str, hint: str) -> RemoteStat | None:
        """The saved size and ETag of *key*, if saved for this *hint* and fresh enough."""
        if not self.enabled or not self.may_have(key):
            return None
        queued = self.writer.pending(self._path(key))
        if queued is not None:
            return self._entry(queued, key, hint)
        return await trio.to_thread.run_sync(self._load, key, hint)

    async def save(self, key: str, hint: str, stat: RemoteStat) -> None:
        if self.enabled:
            self._note(layout.stat_file(key))  # here, on the loop: no two threads set bits
            body = {
                "key": key,
                "hint": hint,
                "size": stat.size,
                "etag": stat.etag,
                "probed_at": time.time(),
            }
            await self.writer.save(self._path(key), body)

    async def drop(self, key: str) -> None:
        self.writer.discard(self._path(key))
        await trio.to_thread.run_sync(self._drop, key)

    def _load(self, key: str, hint: str) -> RemoteStat | None:
        try:
            entry = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None  # missing or corrupt: probe again
        return self._entry(entry, key, hint)

    def _entry(self, entry: Any, key: str, hint: str) -> RemoteStat | None:
        """What *entry* (a saved file's body) says of *key*, if it is for this *hint*,
        fresh enough and well formed."""
        try:
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
        except (AttributeError, ValueError, KeyError, TypeError):
            return None

    def _drop(self, key: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._path(key))
