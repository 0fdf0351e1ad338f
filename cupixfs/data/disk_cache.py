"""The persistent block cache: one checksummed file per block, bounded in bytes, LRU.

Files live under ``<cache_dir>/blocks/`` as `cupixfs.data.layout` names them: blocks
of two versions of a file never meet, and everything cached of one file is one
directory (``cupixfs cache clear PATH`` removes it). `cupixfs.data.block_file` says
what one file holds (a checked header, the payload) and how it is written and read
around the page cache; a block that fails its check is deleted and fetched again,
never served.

A block file is indexed only once it is written whole, and a file cut short
by a crash fails its length/CRC check when the next mount reads it. Disk I/O
runs in worker threads so the event loop never waits on the disk. When the
disk is full or the directory unwritable, the cache says so once and the mount
keeps serving from the network.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import trio

from cupixfs.core import cache_layout as layout
from cupixfs.data import block_file

log = logging.getLogger(__name__)


def prepare_cache_dir(path: Path) -> str | None:
    """Create *path* private (0700) and check it takes a file; the reason if it cannot.

    Checked once per mount so that an unusable directory is reported in one
    line, not once by each of the caches that live in it.
    """
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
        probe = path / f".write-test-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


MIN_AUTO_SIZE = 256 << 20
MAX_AUTO_SIZE = 20 << 30


def default_cache_size(cache_dir: Path) -> int:
    """A tenth of the free space where the cache lives, between 256 MiB and 20 GiB.

    Big enough to hold a few site captures, small enough never to fill a laptop's
    disk on its own (the size is fixed at mount time, not re-read).
    """
    probe = cache_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return MIN_AUTO_SIZE
    free = st.f_bavail * st.f_frsize
    return max(MIN_AUTO_SIZE, min(MAX_AUTO_SIZE, free // 10))


class DiskCache:
    """Blocks on disk, bounded by *max_bytes*, least recently used evicted first."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root / layout.BLOCKS
        self.max_bytes = max_bytes
        self._lru: OrderedDict[str, int] = OrderedDict()  # relative path -> file size
        self._bytes = 0
        self._lock = threading.Lock()  # the LRU is touched from worker threads
        self._dirs: set[Path] = set()  # block directories known to exist
        self.enabled = True
        self.hits = 0
        self.misses = 0
        self.corrupt = 0

    # -- set-up --------------------------------------------------------------------

    def open(self) -> None:
        """Create the directory (0700) and index what a previous mount left, oldest first."""
        if not block_file.FAST_CHECKSUM:
            log.warning(
                "google-crc32c has no compiled extension here: every cached block is "
                "checked in pure Python, which is slow (reinstall it from a wheel)"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.root.parent, 0o700)
            os.chmod(self.root, 0o700)
            found: list[tuple[float, str, int]] = []
            for top in os.scandir(self.root):
                if not top.is_dir(follow_symlinks=False):
                    continue
                for key_dir in os.scandir(top.path):
                    if not key_dir.is_dir(follow_symlinks=False):
                        continue
                    for entry in os.scandir(key_dir.path):
                        st = entry.stat(follow_symlinks=False)
                        rel = f"{top.name}/{key_dir.name}/{entry.name}"
                        found.append((st.st_mtime, rel, st.st_size))
        except OSError as exc:
            self._disable(exc)
            return
        for _mtime, rel, size in sorted(found):
            self._lru[rel] = size
            self._bytes += size
        self._evict(0)
        log.debug("disk cache: %d blocks, %d bytes", len(self._lru), self._bytes)

    @property
    def used_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._lru)

    def _path(self, version: str, index: int) -> tuple[str, Path]:
        rel = layout.block_file(version, index)
        return rel, self.root / rel

    def has(self, version: str, index: int) -> bool:
        """Whether the index holds this block: a dict lookup, so no thread hop is spent
        on blocks that are certainly not on disk."""
        return self.enabled and layout.block_file(version, index) in self._lru

    # -- blocking operations (run in worker threads) ------------------------------------

    def get_sync(self, version: str, index: int) -> bytes | None:
        if not self.enabled:
            return None
        rel, path = self._path(version, index)
        with self._lock:
            if rel not in self._lru:
                self.misses += 1
                return None
            self._lru.move_to_end(rel)
        try:
            payload = block_file.read(str(path))
        except OSError:
            self._forget(rel)
            self.misses += 1
            return None
        if payload is None:
            log.warning("disk cache: block %s is corrupt or truncated; fetching it again", rel)
            self.corrupt += 1
            self._remove(rel, path)
            return None
        self.hits += 1
        return payload

    def put_sync(self, version: str, index: int, payload: bytes) -> None:
        if not self.enabled:
            return
        rel, path = self._path(version, index)
        total = block_file.size_on_disk(len(payload))
        with self._lock:
            if rel in self._lru:
                return
            # Reserve the bytes before writing: several worker threads write at once,
            # and each must make room counting the others' blocks in flight.
            self._evict(total)
            if self._bytes + total > self.max_bytes:
                return  # the room is all taken by blocks being written: skip this one
            self._bytes += total
        try:
            if path.parent not in self._dirs:
                path.parent.parent.mkdir(exist_ok=True, mode=0o700)
                path.parent.mkdir(exist_ok=True, mode=0o700)
                self._dirs.add(path.parent)
            # Written in place: a block is indexed (and so ever read) only once whole,
            # and one cut short by a crash fails its length/CRC check at the next mount.
            try:
                block_file.write(str(path), payload)
            except FileNotFoundError:  # `cupixfs cache clear` removed the directory
                self._dirs.discard(path.parent)
                path.parent.parent.mkdir(exist_ok=True, mode=0o700)
                path.parent.mkdir(exist_ok=True, mode=0o700)
                block_file.write(str(path), payload)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(path)
            with self._lock:
                self._bytes -= total
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
                self._disable(exc)
            else:
                log.warning("disk cache: cannot write a block: %s", exc.strerror)
            return
        with self._lock:
            if rel in self._lru:  # another thread wrote the same block meanwhile
                self._bytes -= total
            else:
                self._lru[rel] = total

    # -- bookkeeping ---------------------------------------------------------------------

    def _evict(self, incoming: int) -> None:
        """Make room for *incoming* bytes (called with the lock held, or before threads)."""
        while self._lru and self._bytes + incoming > self.max_bytes:
            rel, size = self._lru.popitem(last=False)
            self._bytes -= size
            with contextlib.suppress(OSError):
                os.unlink(self.root / rel)

    def _forget(self, rel: str) -> None:
        with self._lock:
            size = self._lru.pop(rel, None)
            if size is not None:
                self._bytes -= size

    def _remove(self, rel: str, path: Path) -> None:
        self._forget(rel)
        with contextlib.suppress(OSError):
            os.unlink(path)

    def _disable(self, exc: OSError) -> None:
        if self.enabled:
            log.warning(
                "disk cache disabled (%s: %s); serving from the network only",
                self.root,
                exc.strerror or exc,
            )
        self.enabled = False

    # -- async front ---------------------------------------------------------------------

    # One thread hop per batch, not per block: handing a job to a worker thread
    # costs about as much as reading a cached 1 MiB block.

    async def get_many(self, version: str, indices: list[int]) -> dict[int, bytes]:
        """The blocks of *indices* that are on disk and intact."""
        if not self.enabled or not indices:
            return {}

        def read_all() -> dict[int, bytes]:
            found = {}
            for index in indices:
                payload = self.get_sync(version, index)
                if payload is not None:
                    found[index] = payload
            return found

        return await trio.to_thread.run_sync(read_all)

    async def put_many(self, version: str, blocks: list[tuple[int, bytes]]) -> None:
        if not self.enabled or not blocks:
            return

        def write_all() -> None:
            for index, payload in blocks:
                self.put_sync(version, index, payload)

        await trio.to_thread.run_sync(write_all)
