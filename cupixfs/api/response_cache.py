"""API list and meta responses, kept on disk so ``--offline`` can browse what was seen.

Every complete listing (all pages) and every meta document the API returned is
saved under ``<cache_dir>/api/`` keyed by the call (path and query, without
paging). They hold what the API said about captures and pointclouds -- never
the token, and never a signed URL (those are not part of these responses).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import trio

from cupixfs.core import cache_layout as layout

log = logging.getLogger(__name__)

_PAGING = {"page", "per_page"}


class ResponseCache:
    def __init__(self, root: Path) -> None:
        self.root = root / layout.API
        self.enabled = True

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
        return await trio.to_thread.run_sync(self._load, self._path(path, params))

    async def save(self, path: str, params: dict[str, Any], body: Any) -> None:
        """Keep *body* for this call (encoded and written in a worker thread)."""
        if self.enabled:
            await trio.to_thread.run_sync(self._save, self._path(path, params), path, body)

    @staticmethod
    def _load(target: Path) -> Any | None:
        try:
            return json.loads(target.read_text())["body"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @staticmethod
    def _save(target: Path, path: str, body: Any) -> None:
        try:
            layout.write_private_json(target, {"path": path, "body": body})
        except (OSError, TypeError, ValueError) as exc:
            log.debug("cannot save an API response: %s", exc)
