"""The persistent block cache: a checksummed slot per block, bounded in bytes, LRU.

Files live under ``<cache_dir>/blocks/`` as `cupixfs.core.cache_layout` names them: one
file per version of a remote file, so blocks of two versions never meet, and
everything cached of one file is one directory (``cupixfs cache clear PATH`` removes
it). `cupixfs.data.block_file` says what a slot holds (a checked header, the payload)
and how it is written and read around the page cache; a block that fails its check is
dropped and fetched again, never served.

The bound and the LRU order are per block: an evicted block's slot is punched out of
its file, and a file whose last block goes is deleted. Where the filesystem cannot
punch holes, the blocks of the whole file go at once.

A block is indexed only once it is written whole, and a slot cut short by a crash
fails its length/CRC check when the next mount reads it. Disk I/O
runs in worker threads so the event loop never waits on the disk. When the
disk is full or the directory unwritable, the cache says so once and the mount
keeps serving from the network.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import trio

from cupixfs.core import cache_layout as layout
from cupixfs.data import block_file
from cupixfs.data.block_file import Block

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


@functools.lru_cache(maxsize=1024)
def _file_of(version: str) -> str:
    """The file of *version*'s blocks: two SHA-256s, asked for every block a stream
    passes (`has`, on the event loop), now the same for all of a version's blocks."""
    return layout.block_file(version)


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
        #: (file relative to root, block index) -> the slot's bytes on disk.
        self._lru: OrderedDict[tuple[str, int], int] = OrderedDict()
        #: Blocks per file, indexed or being written: a file is deleted only at none.
        self._in_file: dict[str, int] = {}
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
            found: list[tuple[float, str, dict[int, int]]] = []
            for top in os.scandir(self.root):
                if not top.is_dir(follow_symlinks=False):
                    continue
                for key_dir in os.scandir(top.path):
                    if not key_dir.is_dir(follow_symlinks=False):
                        continue
                    for entry in os.scandir(key_dir.path):
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        rel = f"{top.name}/{key_dir.name}/{entry.name}"
                        try:
                            mtime = entry.stat(follow_symlinks=False).st_mtime
                            slots = block_file.slots(entry.path)
                        except OSError as exc:  # gone meanwhile, or unreadable: not ours
                            log.debug("disk cache: skipping %s: %s", rel, exc.strerror or exc)
                            continue
                        found.append((mtime, rel, slots))
        except OSError as exc:
            self._disable(exc)
            return
        # Oldest file first; within a file, block order (a file is read front to back).
        for _mtime, rel, slots in sorted(found, key=lambda item: (item[0], item[1])):
            for index, size in sorted(slots.items()):
                self._lru[rel, index] = size
                self._bytes += size
            if slots:
                self._in_file[rel] = len(slots)
        self._evict(0)
        log.debug("disk cache: %d blocks, %d bytes", len(self._lru), self._bytes)

    @property
    def used_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._lru)

    def _path(self, version: str) -> tuple[str, Path]:
        rel = _file_of(version)
        return rel, self.root / rel

    def has(self, version: str, index: int) -> bool:
        """Whether the index holds this block: a dict lookup, so no thread hop is spent
        on blocks that are certainly not on disk."""
        return self.enabled and (_file_of(version), index) in self._lru

    # -- blocking operations (run in worker threads) ------------------------------------

    def get_sync(
        self, version: str, index: int, reader: block_file.RunReader | None = None
    ) -> Block | None:
        """Block *index* of *version*, or None; read by *reader* (a run in order), if given."""
        if not self.enabled:
            return None
        rel, path = self._path(version)
        with self._lock:
            if (rel, index) not in self._lru:
                self.misses += 1
                return None
            self._lru.move_to_end((rel, index))
        try:
            payload = self._read(path, index, reader)
        except (OSError, block_file.Missing):  # gone (cache clear), or a hole
            self._forget(rel, index)
            self.misses += 1
            return None
        if payload is None:
            with self._lock:
                evicted = (rel, index) not in self._lru  # punched out while we read it
            if not evicted:
                log.warning(
                    "disk cache: block %s:%d is corrupt or truncated; fetching it again", rel, index
                )
                self.corrupt += 1
                self._forget(rel, index)
            self.misses += 1
            return None
        self.hits += 1
        return payload

    def open_run(self, version: str) -> block_file.RunReader | None:
        """What reads *version*'s blocks in ascending order, for `get_sync`; its owner
        closes it (None: the file is not there, and each block is read alone)."""
        try:
            return block_file.RunReader(str(self._path(version)[1]))
        except OSError:
            return None

    @staticmethod
    def _read(path: Path, index: int, reader: block_file.RunReader | None) -> Block | None:
        """Block *index* of the file at *path*, by *reader* if given.

        A run's reader holds its file open for the run: if the file was deleted and made
        anew meanwhile (all its blocks evicted, then some written again), it reads the old
        one. What it finds missing or corrupt is read once more from the file now at
        *path* before the block is given up.
        """
        if reader is not None:
            with contextlib.suppress(block_file.Missing):
                payload = reader.read(index)
                if payload is not None:
                    return payload
        return block_file.read(str(path), index)

    def put_sync(self, version: str, index: int, payload: Block) -> None:
        if not self.enabled:
            return
        rel, path = self._path(version)
        total = block_file.size_on_disk(len(payload))
        with self._lock:
            if (rel, index) in self._lru:
                return
            # Reserve the bytes before writing: several worker threads write at once,
            # and each must make room counting the others' blocks in flight.
            self._evict(total)
            if self._bytes + total > self.max_bytes:
                return  # the room is all taken by blocks being written: skip this one
            self._bytes += total
            self._in_file[rel] = self._in_file.get(rel, 0) + 1
        try:
            if path.parent not in self._dirs:
                path.parent.parent.mkdir(exist_ok=True, mode=0o700)
                path.parent.mkdir(exist_ok=True, mode=0o700)
                self._dirs.add(path.parent)
            # Written in place: a block is indexed (and so ever read) only once whole,
            # and one cut short by a crash fails its length/CRC check at the next mount.
            try:
                block_file.write(str(path), index, payload)
            except FileNotFoundError:  # `cupixfs cache clear` removed the directory
                self._dirs.discard(path.parent)
                path.parent.parent.mkdir(exist_ok=True, mode=0o700)
                path.parent.mkdir(exist_ok=True, mode=0o700)
                block_file.write(str(path), index, payload)
        except OSError as exc:
            with self._lock:
                self._bytes -= total
                self._drop_slot(rel, index, total)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
                self._disable(exc)
            else:
                log.warning("disk cache: cannot write a block: %s", exc.strerror)
            return
        with self._lock:
            if (rel, index) in self._lru:  # another thread wrote the same block meanwhile
                self._bytes -= total
                self._in_file[rel] -= 1
            else:
                self._lru[rel, index] = total

    # -- bookkeeping (with the lock held, or before threads) -------------------------------

    def _evict(self, incoming: int) -> None:
        """Make room for *incoming* bytes."""
        while self._lru and self._bytes + incoming > self.max_bytes:
            (rel, index), size = self._lru.popitem(last=False)
            self._bytes -= size
            self._drop_slot(rel, index, size)

    def _drop_slot(self, rel: str, index: int, size: int) -> None:
        """Block *index* of *rel* is no longer indexed: give its bytes back to the disk.

        The file goes with its last block. A filesystem that cannot punch a hole
        keeps the bytes until the file goes, so the file's other blocks go now: the
        bound counts bytes on disk.
        """
        left = self._in_file.get(rel, 1) - 1
        path = self.root / rel
        if left <= 0:
            self._in_file.pop(rel, None)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return
        self._in_file[rel] = left
        try:
            block_file.punch(str(path), index, size)
        except FileNotFoundError:
            pass
        except OSError:
            others = [key for key in self._lru if key[0] == rel]
            for key in others:
                self._bytes -= self._lru.pop(key)
            left -= len(others)
            if left > 0:  # blocks still being written: they index a file made anew
                self._in_file[rel] = left
            else:
                self._in_file.pop(rel, None)
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _forget(self, rel: str, index: int) -> None:
        """A block found missing or corrupt: out of the index, its slot given back."""
        with self._lock:
            size = self._lru.pop((rel, index), None)
            if size is not None:
                self._bytes -= size
                self._drop_slot(rel, index, size)

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

    async def get_many(self, version: str, indices: list[int]) -> dict[int, Block]:
        """The blocks of *indices* that are on disk and intact."""
        if not self.enabled or not indices:
            return {}

        def read_all() -> dict[int, Block]:
            found = {}
            for index in indices:
                payload = self.get_sync(version, index)
                if payload is not None:
                    found[index] = payload
            return found

        return await trio.to_thread.run_sync(read_all)

    async def put_many(self, version: str, blocks: list[tuple[int, Block]]) -> None:
        if not self.enabled or not blocks:
            return

        def write_all() -> None:
            for index, payload in blocks:
                self.put_sync(version, index, payload)

        await trio.to_thread.run_sync(write_all)
