"""Derived views: files computed from remote files' bytes as they are read.

``mesh/`` shows the members of ``mesh.zip`` (`cupixfs.views.zips`) and
``pointcloud.las`` the points of ``pointcloud.ply`` (`cupixfs.views.lasview`). They sit
on top of the data layer and use only its public face (`DataStore.size`, ``open``,
``read``) on the underlying remote file, so every byte they use comes through the
block cache, the disk cache and the checked fetches like any other; `DataStore` hands
their sources (`cupixfs.data.sources.DerivedFile`) to `DerivedViews`.
"""

from __future__ import annotations

from cupixfs import __version__
from cupixfs.core.errors import NotFound
from cupixfs.data.sources import DerivedFile
from cupixfs.data.store import Buffer, DataStore, OpenFile
from cupixfs.data.stream import Push
from cupixfs.views.handles import DerivedHandle
from cupixfs.views.lasview import LasHandle, LasViews
from cupixfs.views.notes import Notes
from cupixfs.views.sources import LasView, ZipMember
from cupixfs.views.zips import ZipViews

__all__ = ["DerivedViews", "LasView", "ZipMember"]


class DerivedViews:
    """Sizes, opens and reads derived files: `DataStore`'s ``derived`` reader.

    *notes* (None: nothing kept across mounts) keep what a view learnt per file
    version; *inflated_bytes* bounds the memory of inflated zip members.
    """

    def __init__(self, store: DataStore, notes: Notes | None, inflated_bytes: int) -> None:
        self._store = store
        self.zips = ZipViews(store, inflated_bytes)
        self.las = LasViews(store, notes, software=f"cupixfs {__version__}")
        store.derived = self

    async def size(self, source: DerivedFile) -> int:
        if isinstance(source, ZipMember):
            return await self.zips.size(source)
        if isinstance(source, LasView):
            return await self.las.size(source)
        raise NotFound(f"{source.key}: not a derived file this mount knows")

    async def open(
        self, source: DerivedFile, cached_version: str | None, push: Push | None = None
    ) -> OpenFile:
        if isinstance(source, ZipMember):
            return await self.zips.open(source, cached_version)
        if isinstance(source, LasView):
            return await self.las.open(source, cached_version, push)
        raise NotFound(f"{source.key}: not a derived file this mount knows")

    async def read(self, handle: OpenFile, offset: int, size: int) -> Buffer:
        if isinstance(handle.source, ZipMember):
            return await self.zips.read(handle, offset, size)
        return await self.las.read(handle, offset, size)

    def release(self, handle: OpenFile) -> None:
        """The derived file was closed: so are its handles on the remote file (streams)."""
        bases = [handle.base] if isinstance(handle, DerivedHandle) else []
        if isinstance(handle, LasHandle):
            handle.closed = True
            bases.append(handle.ahead_base)
        for base in bases:
            if base is not None:
                self._store.release(base)
