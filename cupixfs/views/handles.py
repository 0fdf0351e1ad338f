"""What an open derived file shares, whatever its view: the handle on the remote file
under it, and reading on when that file changed before a byte was shown."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Self

from cupixfs.core.errors import RemoteChanged
from cupixfs.data.store import Buffer, DataStore, OpenFile

#: A read retries this often when the remote file changed before it showed a byte.
REOPENS = 2


@dataclass
class DerivedHandle(OpenFile):
    """An open derived file: the remote file's own handle (pinned to one version)."""

    base: OpenFile | None = None

    def take_over(self, fresh: Self) -> None:
        """Become *fresh*, the same file opened on the remote file's new version (what
        the view learnt of the old version goes; this handle's own state stays)."""
        self.base, self.version = fresh.base, fresh.version


async def read_on_new_version(
    store: DataStore,
    handle: DerivedHandle,
    read: Callable[[], Awaitable[Buffer]],
    reopen: Callable[[], Awaitable[DerivedHandle]],
) -> Buffer:
    """``read()``; if the remote file changed and nothing was shown yet, the handle is
    reopened on its new version and the read made again (as a plain file's is), up to
    `REOPENS` times. Once a byte was shown, a change is the reader's error (EIO)."""
    for attempt in range(REOPENS + 1):
        try:
            data = await read()
        except RemoteChanged:
            if handle.shown or attempt == REOPENS:
                raise
            fresh = await reopen()
            if handle.base is not None:
                store.release(handle.base)
            handle.take_over(fresh)
            continue
        handle.shown = True
        return data
    raise AssertionError("unreachable")
