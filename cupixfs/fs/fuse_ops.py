"""pyfuse3 operations: translate kernel requests to `Vfs` calls, and errors to errno.

No policy lives here: no HTTP, no caching decisions, no JSON. Every handler
goes through `_errors`, the one place where our exceptions become errno values
and where anything unexpected is logged once and answered with EIO, never
left to reach pyfuse3.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from cupixfs.core.errors import (
    AuthError,
    CupixError,
    NotCached,
    NotFound,
    ProtocolError,
    RemoteChanged,
    Unavailable,
    unwrap,
)
from cupixfs.core.memory import give_back
from cupixfs.fs.vfs import Attr, IsADirectory, NotADirectory, NotALink, Vfs

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

AUTH_LOG_EVERY = 300.0
DIR_MODE = 0o040555
FILE_MODE = 0o100444
LINK_MODE = 0o120777
#: The I/O size ``stat`` advises (``st_blksize``): what cp, cat and stdio size their
#: buffers by, and so the size of every write a copy out of the mount makes to its
#: destination. 128 KiB is coreutils' own choice for a local file. At 1 MiB, a cold ``cp``
#: of a 512 MiB file spent 1.30 s in 1 MiB writes to its destination's page cache, 2.5 ms
#: per MiB, against 0.42 s in 128 KiB ones, 0.8 ms per MiB (``strace -c -w``, this 2-CPU
#: VM): that cp took 1.43-1.48 s -> 0.65-0.73 s, and ``cp -r`` of a 40-file cluster
#: 1.16-1.23 s -> 0.70-0.79 s (alternating fresh mounts), the mount's own CPU unchanged.
IO_SIZE = 128 * 1024

_ERRNO: list[tuple[type[BaseException], int]] = [
    (NotFound, errno.ENOENT),
    (AuthError, errno.EACCES),
    (IsADirectory, errno.EISDIR),
    (NotADirectory, errno.ENOTDIR),
    (NotALink, errno.EINVAL),
    (Unavailable, errno.EIO),
    (ProtocolError, errno.EIO),
    (RemoteChanged, errno.EIO),
    (CupixError, errno.EIO),
]


def errno_for(exc: BaseException) -> int:
    for cls, code in _ERRNO:
        if isinstance(exc, cls):
            return code
    return errno.EIO


def _errors(
    handler: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Turn every exception of *handler* into a `pyfuse3.FUSEError`."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except (trio.Cancelled, KeyboardInterrupt):
            raise
        except BaseException as raw:
            ops = args[0]
            assert isinstance(ops, CupixOperations)
            raise pyfuse3.FUSEError(ops.report(handler.__name__, unwrap(raw))) from None

    return wrapper


def _ns(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000_000)


class CupixOperations(pyfuse3.Operations):
    """The kernel's view of a `Vfs`: read-only, private to the mounting user."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, vfs: Vfs, attr_timeout: float = 60.0) -> None:
        super().__init__()
        self._vfs = vfs
        self._timeout = attr_timeout
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._dir_inode: dict[int, int] = {}  # directory handle -> inode
        self._listings: dict[int, list[tuple[str, Attr]]] = {}
        self._next_dir_fh = 1
        self._last_auth_log = -AUTH_LOG_EVERY
        #: Requests answered with an error other than ENOENT.
        self.errors = 0

    def report(self, operation: str, exc: BaseException) -> int:
        """Log *exc* as it deserves and return its errno; count it for `cupixfs status`.

        An auth failure is logged once per five minutes, not once per block: a
        revoked token would otherwise flood the log while a copy runs.
        """
        code = errno_for(exc)
        if code != errno.ENOENT:
            self.errors += 1
        if isinstance(exc, NotCached):
            log.info("%s: %s", operation, exc)
        elif isinstance(exc, NotFound | IsADirectory | NotADirectory | NotALink):
            log.debug("%s: %s", operation, exc)
        elif isinstance(exc, AuthError):
            now = time.monotonic()
            if now - self._last_auth_log >= AUTH_LOG_EVERY:
                self._last_auth_log = now
                log.error("%s: %s; answering EACCES until the token works again", operation, exc)
        elif isinstance(exc, CupixError):
            log.warning("%s: %s", operation, exc)
        else:
            log.error("%s: unexpected %s: %s", operation, type(exc).__name__, exc)
            log.debug("traceback of the unexpected error", exc_info=exc)
        return code

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = pyfuse3.InodeT(attr.inode)
        entry.generation = 0
        known = attr.size is not None
        # An unknown size is never cached by the kernel: the next stat asks again.
        entry.entry_timeout = self._timeout if known else 0
        entry.attr_timeout = self._timeout if known else 0
        mode = DIR_MODE if attr.is_dir else LINK_MODE if attr.is_link else FILE_MODE
        entry.st_mode = pyfuse3.ModeT(mode)
        entry.st_nlink = 2 if attr.is_dir else 1
        entry.st_uid = self._uid
        entry.st_gid = self._gid
        entry.st_size = attr.size or 0
        entry.st_blksize = IO_SIZE
        entry.st_blocks = ((attr.size or 0) + 511) // 512
        entry.st_mtime_ns = _ns(attr.mtime)
        entry.st_ctime_ns = _ns(attr.ctime)
        entry.st_atime_ns = entry.st_mtime_ns
        return entry

    # -- lookups and attributes ----------------------------------------------------

    @_errors
    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        decoded = os.fsdecode(name)
        return self._entry(await self._vfs.lookup(parent_inode, decoded))

    @_errors
    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._entry(await self._vfs.getattr(inode))

    @_errors
    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> bytes:
        return os.fsencode(self._vfs.readlink(inode))

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        """The kernel gives back lookups; what it no longer knows is dropped (never raises)."""
        try:
            if self._vfs.forget([(int(inode), count) for inode, count in inode_list]):
                await trio.to_thread.run_sync(give_back)
        except Exception as exc:
            log.error("forget: unexpected %s: %s", type(exc).__name__, exc)

    # -- directories -----------------------------------------------------------------

    @_errors
    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        self._vfs.opendir(inode, ctx.pid)
        fh = self._next_dir_fh
        self._next_dir_fh += 1
        # The listing is taken on the first readdir (not here) and kept for the
        # handle's life, so offsets stay valid across the kernel's readdir calls.
        self._listings[fh] = []
        self._dir_inode[fh] = inode
        return pyfuse3.FileHandleT(fh)

    @_errors
    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        if start_id == 0 or not self._listings.get(fh):
            self._listings[fh] = await self._vfs.listdir(self._dir_inode[fh])
        entries = self._listings[fh]
        for index in range(start_id, len(entries)):
            name, attr = entries[index]
            if not self._vfs.known(attr.inode):
                continue  # dropped since this handle's listing was taken
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._entry(attr), index + 1):
                break
            self._vfs.remember(attr.inode)  # readdirplus: each entry is one lookup

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self._listings.pop(fh, None)
        inode = self._dir_inode.pop(fh, None)
        if inode is not None:
            self._vfs.releasedir(inode)

    # -- files -------------------------------------------------------------------------

    @_errors
    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT):
            raise pyfuse3.FUSEError(errno.EROFS)
        fh, keep, live = await self._vfs.open(inode, ctx.pid)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=keep, direct_io=live)

    @_errors
    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        # A memoryview of a cached block goes out without a copy (pyfuse3 takes any buffer).
        return await self._vfs.read(fh, off, size)  # type: ignore[return-value]

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        self._vfs.release(fh)

    # -- extended attributes -----------------------------------------------------------

    @_errors
    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[bytes]:
        return [f"user.cupix.{k}".encode() for k, v in self._vfs.xattrs(inode).items() if v]

    @_errors
    async def getxattr(
        self, inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> bytes:
        key = os.fsdecode(name)
        value = (
            self._vfs.xattrs(inode).get(key.removeprefix("user.cupix."))
            if key.startswith("user.cupix.")
            else None
        )
        if not value:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value.encode()

    # -- the filesystem ----------------------------------------------------------------

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        stat = pyfuse3.StatvfsData()
        stat.f_bsize = stat.f_frsize = 1 << 20
        stat.f_namemax = 255
        return stat

    # -- everything that would write: read-only ------------------------------------------

    async def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only  # type: ignore[assignment]
    write = create = setxattr = removexattr = _read_only  # type: ignore[assignment]
