"""What a derived view learnt about one version of a remote file, kept on disk.

A LAS header's bounding box needs a pass over every point of the PLY; the result
is a few numbers, saved here (with the PLY's header) under the PLY's cache key, so a
remount answers ``ls -l`` and the LAS header with no pass and no request. An entry
names the version it describes and is trusted only for that version: a new version
of the file simply replaces it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import trio

from cupixfs.core import cache_layout as layout

log = logging.getLogger(__name__)


class Notes:
    """``(key, kind) -> JSON object`` for the current version of each file, one file each."""

    def __init__(self, cache_dir: Path) -> None:
        self.root = cache_dir / layout.DERIVED
        self.enabled = True

    def open(self) -> None:
        self.enabled = layout.make_private_dir(self.root, "derived notes")

    def _path(self, key: str, kind: str) -> Path:
        return self.root / layout.derived_file(key, kind)

    async def load(self, key: str, kind: str, version: str) -> dict[str, Any] | None:
        """The note saved for *version* of *key*, or None (absent, another version, corrupt)."""
        if not self.enabled:
            return None
        return await trio.to_thread.run_sync(self._load, key, kind, version)

    async def save(self, key: str, kind: str, version: str, body: dict[str, Any]) -> None:
        if self.enabled:
            await trio.to_thread.run_sync(self._save, key, kind, version, body)

    def _load(self, key: str, kind: str, version: str) -> dict[str, Any] | None:
        try:
            entry = json.loads(self._path(key, kind).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None
        if entry.get("version") != version or not isinstance(entry.get("body"), dict):
            return None
        return entry["body"]  # type: ignore[no-any-return]

    def _save(self, key: str, kind: str, version: str, body: dict[str, Any]) -> None:
        entry = {"key": key, "version": version, "body": body}
        try:
            layout.write_private_json(self._path(key, kind), entry)
        except OSError as exc:
            log.debug("cannot save a derived note: %s", exc.strerror)
