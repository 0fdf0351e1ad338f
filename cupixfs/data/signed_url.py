"""Signed storage URLs: resolved once per file, reused until shortly before they expire.

A download endpoint answers 302 to a pre-signed URL. Resolving costs an API
round trip, so each file's URL is kept and shared by all reads of that file;
it is refreshed ahead of its expiry (when the URL says when that is) and
dropped at once when storage refuses it (403), so the next read resolves anew.
"""

from __future__ import annotations

import calendar
import logging
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import trio

from cupixfs.api.client import CupixClient
from cupixfs.data.sources import RemoteFile

log = logging.getLogger(__name__)

#: Refresh this long before expiry (capped at a quarter of the URL's lifetime).
REFRESH_MARGIN = 30.0


def url_expiry(url: str, now: float) -> float | None:
    """Wall-clock expiry of a pre-signed URL, from S3 v4 (``X-Amz-Date`` +
    ``X-Amz-Expires``) or v2 / CloudFront (``Expires``) query parameters."""
    query = parse_qs(urlsplit(url).query)
    try:
        if "X-Amz-Expires" in query:
            lifetime = float(query["X-Amz-Expires"][0])
            issued = now
            if "X-Amz-Date" in query:
                stamp = time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
                issued = min(float(calendar.timegm(stamp)), now)
            return issued + lifetime
        if "Expires" in query:
            return float(query["Expires"][0])
    except (ValueError, IndexError):
        return None
    return None


@dataclass
class _Entry:
    url: str
    refresh_at: float  # wall-clock time after which we resolve again


class SignedUrls:
    """One live signed URL per remote file."""

    def __init__(self, client: CupixClient, default_lifetime: float = 600.0) -> None:
        self._client = client
        self._default_lifetime = default_lifetime
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, trio.Lock] = {}
        self.resolves = 0

    async def get(self, remote: RemoteFile) -> str:
        entry = self._entries.get(remote.key)
        if entry is not None and time.time() < entry.refresh_at:
            return entry.url
        lock = self._locks.setdefault(remote.key, trio.Lock())
        async with lock:  # concurrent readers of one file share one resolve
            entry = self._entries.get(remote.key)
            now = time.time()
            if entry is not None and now < entry.refresh_at:
                return entry.url
            url = await self._client.resolve_download(remote.download_path)
            self.resolves += 1
            expiry = url_expiry(url, now)
            if expiry is None:
                refresh_at = now + self._default_lifetime
            else:
                lifetime = max(expiry - now, 0.0)
                refresh_at = expiry - min(REFRESH_MARGIN, lifetime / 4)
            self._entries[remote.key] = _Entry(url, refresh_at)
            return url

    def forget(self, key: str) -> None:
        """Drop the URL of a file nobody uses any more (the kernel forgot it)."""
        self._entries.pop(key, None)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]

    def invalidate(self, remote: RemoteFile, url: str) -> None:
        """Storage refused *url*: forget it (unless another task already replaced it)."""
        entry = self._entries.get(remote.key)
        if entry is not None and entry.url == url:
            del self._entries[remote.key]
