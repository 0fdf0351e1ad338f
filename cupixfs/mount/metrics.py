"""Live figures of a mount: for ``cupixfs status`` (the control file) and ``cache stats``.

The counters live where the work happens (fetcher, block cache, API client,
FUSE error mapping); this module only gathers them into one snapshot, serves
it as ``<mount>/.cupixfs/status`` and saves it as ``<cache_dir>/last-mount.json``
every few seconds and at unmount, so the figures survive the mount.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from cupixfs.core import cache_layout as layout

log = logging.getLogger(__name__)

SAVE_EVERY = 10.0


class Metrics:
    """A mount's counters, gathered on demand from the layers that own them."""

    def __init__(self, mountpoint: Path, cache_dir: Path, cache_size: int) -> None:
        self.mountpoint = mountpoint
        self.cache_dir = cache_dir
        self.cache_size = cache_size
        self._sources: list[Callable[[], dict[str, int]]] = []
        self.started = time.time()

    def add_source(self, source: Callable[[], dict[str, int]]) -> None:
        """Register a function returning some of the counters (called at each snapshot)."""
        self._sources.append(source)

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        figures: dict[str, Any] = {
            "mountpoint": str(self.mountpoint),
            "cache_dir": str(self.cache_dir),
            "cache_size": self.cache_size,
            "started": self.started,
            "updated": now,
            "uptime_s": round(now - self.started, 1),
        }
        for source in self._sources:
            figures.update(source())
        return figures

    async def render(self) -> bytes:
        return (json.dumps(self.snapshot(), indent=2, sort_keys=True) + "\n").encode()

    def save(self, figures: dict[str, Any]) -> None:
        """Write *figures* to ``last-mount.json`` (atomically; a failure is only logged)."""
        path = self.cache_dir / layout.LAST_MOUNT
        try:
            layout.write_private_json(path, figures, indent=2, sort_keys=True)
        except OSError as exc:
            log.debug("cannot save %s: %s", path, exc.strerror)

    async def save_periodically(self) -> None:
        """Save now, every `SAVE_EVERY` seconds, and once more when cancelled (at unmount).

        The snapshot is taken on the event loop (the counters live there); only the
        file write goes to a worker thread, so the loop never waits on the disk.
        """
        try:
            while True:
                await trio.to_thread.run_sync(self.save, self.snapshot())
                await trio.sleep(SAVE_EVERY)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.save, self.snapshot())
