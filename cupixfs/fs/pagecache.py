"""The kernel's page cache of our files: blocks pushed into it ahead of a reader, and
pages dropped when a file's remote version changes.

Pushing (``notify_store``) costs the kernel one copy and this process nearly nothing,
whereas answering a read costs a whole request through the FUSE loop; so bytes a
sequential reader is about to read are pushed, and its reads never reach us (see
`cupixfs.data.stream`). Two rules keep the pages true:

- **Versions never mix.** Every inode has an *epoch*; a push carries the epoch it was
  made for and is dropped unless that epoch is still current. A change of the remote
  file starts a new epoch *before* its pages are dropped, and pushes and drops take one
  lock, so a push of old bytes either lands before the drop (and is dropped with the
  rest) or not at all.
- **Never from the event loop**, where they could wait: both write to /dev/fuse, and
  may wait for the kernel (a drop waits for reads of those pages in flight, which this
  very process answers), so they run in worker threads. Dropping only a file's
  attributes (its size was wrong) waits for nothing, and is done at once.
"""

from __future__ import annotations

import errno
import functools
import logging
import threading
from collections.abc import Iterable

import pyfuse3
import trio

from cupixfs.data.stream import Push

log = logging.getLogger(__name__)


class KernelCache:
    """Pushes to and drops from the kernel's page cache; off until `enable` (at mount)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epochs: dict[int, object] = {}
        #: Only once the FUSE session exists (pyfuse3.init): before, there is no kernel.
        self.enabled = False
        self.pushed_bytes = 0

    def enable(self) -> None:
        self.enabled = True

    def disable(self) -> None:
        """No more pushes (the FUSE session is closing); waits for one in flight."""
        with self._lock:
            self.enabled = False

    def pusher(self, inode: int) -> Push | None:
        """What pushes blocks of *inode*'s current version (None when pushing is off)."""
        if not self.enabled:
            return None
        epoch = self._epochs.setdefault(inode, object())
        return functools.partial(self._push, inode, epoch)

    def _push(self, inode: int, epoch: object, offset: int, data: bytes | memoryview) -> None:
        with self._lock:
            if not self.enabled or self._epochs.get(inode) is not epoch:
                return  # the file changed since: these bytes must not reach the kernel
            try:
                # Typed as bytes, but it takes any contiguous buffer (PyObject_GetBuffer):
                # a memoryview of converted points is pushed without a copy here.
                pyfuse3.notify_store(pyfuse3.InodeT(inode), offset, data)  # type: ignore[arg-type]
            except OSError as exc:
                if exc.errno == errno.ENOSYS:
                    log.info("the kernel cannot take pushed pages; reads go through FUSE")
                    self.enabled = False
                else:  # ENOENT: the kernel forgot the inode meanwhile; nothing to do
                    log.debug("notify_store(%d): %s", inode, exc)
                return
            self.pushed_bytes += len(data)

    async def push_now(self, inode: int, blocks: list[tuple[int, bytes | memoryview]]) -> None:
        """Push *blocks* (``(offset, bytes)``) of *inode*'s current version, and return
        once they are in (from a worker thread: a push may wait for the kernel)."""
        if not self.enabled or not blocks:
            return
        epoch = self._epochs.setdefault(inode, object())

        def push() -> None:
            for offset, data in blocks:
                self._push(inode, epoch, offset, data)

        await trio.to_thread.run_sync(push)

    def invalidate(self, inodes: Iterable[int], attr_only: bool = False) -> None:
        """Drop the kernel's pages and attributes of *inodes* (their remote file changed),
        or with *attr_only* just their attributes (the bytes are right, the size was not)."""
        inodes = list(inodes)
        if not attr_only:
            for inode in inodes:
                self._epochs.pop(inode, None)  # later pushes of the old version are void
        if not inodes or not self.enabled:
            return
        if attr_only:
            # At once, from the event loop: the kernel must know before the reply that
            # follows (an open's), and dropping attributes waits for nothing.
            for inode in inodes:
                try:
                    pyfuse3.invalidate_inode(pyfuse3.InodeT(inode), True)
                except OSError as exc:
                    log.debug("invalidate_inode(%d, attributes): %s", inode, exc)
            return

        def drop() -> None:
            with self._lock:
                for inode in inodes:
                    try:
                        pyfuse3.invalidate_inode(pyfuse3.InodeT(inode))
                    except OSError as exc:  # ENOENT: the kernel had already forgotten it
                        log.debug("invalidate_inode(%d): %s", inode, exc)

        trio.lowlevel.spawn_system_task(trio.to_thread.run_sync, drop)

    def forget(self, inode: int) -> None:
        """The kernel forgot *inode*: nothing of it is cached there any more."""
        self._epochs.pop(inode, None)
