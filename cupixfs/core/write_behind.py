"""Small cache files (sizes and ETags, API responses) written behind the event loop.

Whoever saves such an entry holds what it says in memory already: the file serves a
later mount, or this one once memory has let the entry go. So a save only queues the
entry and returns, and one task writes everything queued, a batch per hop to a worker
thread. Saved one by one, each entry cost its caller a hop and the file's creation
before it could answer: on the 500-video ``ls -l``, a size waited for its file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import trio

from cupixfs.core import cache_layout as layout

log = logging.getLogger(__name__)

#: Entries queued at most. Past it a save is dropped and counted: the entry is only a
#: cache, so a later mount misses it, nothing more. 8,192 small bodies are a few MiB.
QUEUED_AT_MOST = 8192


class WriteBehind:
    """Entries (JSON files, see `cache_layout.write_private_json`) written by `run`.

    Until `run` is started, and after `aclose`, a save writes its entry itself, in a
    worker thread, as it returns.
    """

    def __init__(self) -> None:
        #: Queued entries by file; a later save of a file replaces its queued entry.
        self._queued: dict[Path, Any] = {}
        #: The batch a worker thread is writing now.
        self._writing: dict[Path, Any] = {}
        self._wake = trio.Event()
        #: One batch at a time, so that a later entry of a file is never overtaken.
        self._one_batch = trio.Lock()
        self._running = False
        #: Entries not written: dropped from a full queue, or failed (a full disk).
        self.dropped = 0
        self.failed = 0

    def pending(self, path: Path) -> Any | None:
        """The entry saved for *path* and not yet on disk, or None."""
        found = self._queued.get(path)
        return found if found is not None else self._writing.get(path)

    def discard(self, path: Path) -> None:
        """Forget the entry queued for *path*, if any (its file is being removed)."""
        self._queued.pop(path, None)

    async def save(self, path: Path, body: Any) -> None:
        """Have *body* written to *path*; at once, unless `run` is running."""
        if not self._running:
            await trio.to_thread.run_sync(self._write_all, {path: body})
            return
        if path in self._queued:
            del self._queued[path]
        elif len(self._queued) >= QUEUED_AT_MOST:
            self.dropped += 1
            return
        self._queued[path] = body
        self._wake.set()

    async def run(self) -> None:
        """Write what is queued, as long as the mount runs (in its background nursery)."""
        self._running = True
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await self._write_queued()
        finally:
            self._running = False

    async def aclose(self) -> None:
        """At unmount: write everything still queued; later saves are written at once."""
        self._running = False
        while self._queued:
            await self._write_queued()

    async def _write_queued(self) -> None:
        async with self._one_batch:
            self._writing, self._queued = self._queued, {}
            try:
                await trio.to_thread.run_sync(self._write_all, self._writing)
            finally:
                self._writing = {}

    def _write_all(self, entries: dict[Path, Any]) -> None:
        for path, body in entries.items():
            try:
                layout.write_private_json(path, body)
            except (OSError, TypeError, ValueError) as exc:
                self.failed += 1  # a counter read on the loop: a lost increment is harmless
                log.debug("cannot write %s: %s", path, getattr(exc, "strerror", None) or exc)
