"""API list and meta responses, kept on disk so ``--offline`` can browse what was seen.

Every complete listing (all pages) and every meta document the API returned is
saved under ``<cache_dir>/api/`` keyed by the call (path and query, without
paging). They hold what the API said about captures and pointclouds -- never
the token, and never a signed URL (those are not part of these responses).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import trio

from cupixfs.core import cache_layout as layout
from cupixfs.core.write_behind import WriteBehind

_PAGING = {"page", "per_page"}


class ResponseCache:
    def __init__(self, root: Path, writer: WriteBehind | None = None) -> None:
        self.root = root / layout.API
        self.enabled = True
        #: Writes the bodies (behind the loop, once the mount runs it).
        self.writer = writer or WriteBehind()

    def open(self) -> None:
        self.enabled = layout.make_private_dir(self.root, "API response cache")

    def _path(self, path: str, params: dict[str, Any]) -> Path:
        query = sorted((k, str(v)) for k, v in params.items() if k not in _PAGING)
        digest = hashlib.sha256(json.dumps([path, query]).encode()).hexdigest()[:32]
        return self.root / f"{digest}.json"

    async def load(self, path: str, params: dict[str, Any]) -> Any | None:
        """The saved body of this call, or None (read in a worker thread)."""
        if not self.enabled:
            return None
        target = self._path(path, params)
        queued = self.writer.pending(target)
        if queued is not None:
            return queued["body"]
        return await trio.to_thread.run_sync(self._load, target)

    async def save(self, path: str, params: dict[str, Any], body: Any) -> None:
        """Keep *body* for this call (encoded and written by the writer, in a worker
        thread). The caller must not change *body* afterwards."""
        if self.enabled:
            await self.writer.save(self._path(path, params), {"path": path, "body": body})

    @staticmethod
    def _load(target: Path) -> Any | None:
        try:
            return json.loads(target.read_text())["body"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
