"""The filesystem as our own types: the namespace's tree joined to the data layer's sizes.

`fuse_ops` calls only this (and speaks pyfuse3); this module speaks neither
FUSE nor HTTP. Keeping the join here lets tests drive the whole filesystem
logic without a kernel, and keeps `fuse_ops` a translator.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from datetime import datetime

import trio

from cupixfs.core.errors import AuthError, CupixError, NotFound, unwrap
from cupixfs.data.fetch import PROBES_AT_ONCE
from cupixfs.data.sources import DerivedFile, FileSource, RemoteFile, StaticFile
from cupixfs.data.store import Buffer, DataStore, OpenFile
from cupixfs.fs.pagecache import KernelCache
from cupixfs.fs.walk import WalkAhead
from cupixfs.namespace.nodes import DirNode, FileNode, LinkNode, Node
from cupixfs.namespace.tree import Namespace

log = logging.getLogger(__name__)

#: Inodes dropped between two returns of freed memory to the system (`give_back`).
GIVE_BACK_AFTER = 4096


@dataclass(frozen=True)
class Attr:
    """What `stat` shows of one entry. *size* None means "not known right now"."""

    inode: int
    is_dir: bool
    size: int | None
    mtime: datetime
    ctime: datetime
    is_link: bool = False


class IsADirectory(CupixError):
    """open() on a directory."""


class NotADirectory(CupixError):
    """readdir() or lookup() in a file."""


class NotALink(CupixError):
    """readlink() of something that is not a symbolic link."""


class Vfs:
    """Lookup, attributes, listings, and reads by inode.

    It keeps the kernel's lookup counts in the namespace (`remember`, `forget`) and pins
    what is open, so that what the kernel has forgotten is dropped, with everything kept
    for it here and in the data layer.
    """

    def __init__(
        self,
        namespace: Namespace,
        data: DataStore,
        started: datetime,
        kernel: KernelCache | None = None,
    ) -> None:
        self.namespace = namespace
        self.data = data
        #: The kernel's page cache (pushes ahead of sequential readers, drops on change).
        self.kernel = kernel or KernelCache()
        self._started = started
        self._handles: dict[int, tuple[int, OpenFile]] = {}
        self._next_fh = itertools.count(1)
        #: The version each inode's pages in the kernel's page cache belong to.
        self._kernel_version: dict[int, str] = {}
        #: Files fetched ahead of the kernel's knowing them, pushed at their open (the
        #: version fetched is the one in `_kernel_version`).
        self._unpushed: set[int] = set()
        self._dropped_since_give_back = 0
        namespace.on_drop = self._dropped
        #: Fetches ahead of a reader walking the tree (``cp -r``); runs once `start`ed.
        self.walk = WalkAhead(
            namespace, namespace.listdir, self._fetch_ahead, self._weight, list_full=self.listdir
        )

    def start(self, nursery: trio.Nursery) -> None:
        """Run what works in the background (the walk-ahead) in *nursery*."""
        self.walk.start(nursery)

    def _attr(self, inode: int, node: Node, size: int | None) -> Attr:
        mtime = node.mtime or self._started
        return Attr(
            inode,
            isinstance(node, DirNode),
            size,
            mtime,
            node.ctime or mtime,
            is_link=isinstance(node, LinkNode),
        )

    async def getattr(self, inode: int) -> Attr:
        """Attributes of one inode (the same as a listing gives them)."""
        node = self.namespace.node(inode)
        if isinstance(node, FileNode) and isinstance(node.source, StaticFile) and node.source.live:
            return self._attr(inode, node, None)  # a live document: never cache its size
        if isinstance(node, FileNode) and node.source is not None:
            return self._attr(inode, node, await self.data.size(node.source))
        return self._attr(inode, node, _local_size(node))

    async def lookup(self, parent: int, name: str) -> Attr:
        """The entry the kernel asks for; it counts as one lookup of its inode."""
        try:
            inode = await self.namespace.lookup(parent, name)
        except NotADirectoryError:
            raise NotADirectory(name) from None
        self.namespace.ref(inode)  # held while its attributes are learnt, kept if they are
        try:
            return await self.getattr(inode)
        except BaseException:
            self.namespace.unref(inode)
            raise

    # -- what the kernel knows -------------------------------------------------------------

    def remember(self, inode: int) -> bool:
        """Count one lookup of an entry a listing returned to the kernel; False (count
        nothing, return nothing) when that inode has been dropped meanwhile."""
        return self.namespace.ref(inode)

    def known(self, inode: int) -> bool:
        return self.namespace.known(inode)

    def forget(self, lookups: list[tuple[int, int]]) -> bool:
        """The kernel's ``forget``: it no longer knows these inodes by so many lookups.

        True when so much has been dropped since the last time that the freed memory is
        worth giving back to the system (`cupixfs.core.memory.give_back`).
        """
        for inode, count in lookups:
            self.namespace.unref(inode, count)
        if self._dropped_since_give_back < GIVE_BACK_AFTER:
            return False
        self._dropped_since_give_back = 0
        return True

    def opendir(self, inode: int, pid: int = 0) -> None:
        """An open directory handle pins its inode until `releasedir`. *pid* is the
        listing process's: the walk-ahead lists ahead of a process that scans the tree."""
        self.namespace.node(inode)
        self.namespace.ref(inode)
        self.walk.listed(inode, pid)

    def releasedir(self, inode: int) -> None:
        self.namespace.unref(inode)

    def _dropped(self, inode: int, last_of: str | None) -> None:
        """The namespace dropped *inode*; *last_of* is the key of the file whose last
        inode it was, whose sizes, documents and signed URL can go too."""
        self._kernel_version.pop(inode, None)
        self._unpushed.discard(inode)
        self.walk.forget(inode)
        self._dropped_since_give_back += 1
        self.kernel.forget(inode)
        if last_of is not None:
            self.data.forget(last_of)

    def table_sizes(self) -> dict[str, int]:
        return {
            **self.namespace.table_sizes(),
            **self.data.table_sizes(),
            "kernel_versions": len(self._kernel_version),
            "open_files": len(self._handles),
        }

    def readlink(self, inode: int) -> str:
        node = self.namespace.node(inode)
        if not isinstance(node, LinkNode):
            raise NotALink(str(inode))
        return node.target

    async def listdir(self, inode: int) -> list[tuple[str, Attr]]:
        """Every child with its attributes; file sizes are learnt concurrently.

        A file whose size cannot be learnt now is still listed (size None), so
        one broken file does not hide its siblings; if every probe fails, the
        listing fails with the first error.
        """
        try:
            entries = await self.namespace.listdir(inode)
        except NotADirectoryError:
            raise NotADirectory(str(inode)) from None
        nodes = [(name, child, self.namespace.node(child)) for name, child in entries]
        sizes: dict[int, int | None] = {}
        errors: list[BaseException] = []
        # Sizes are learnt at once, as far as the data layer's own bound on probes (and
        # the API's on redirects) allows: ``ls -l`` must not stat files one by one.
        limiter = trio.CapacityLimiter(PROBES_AT_ONCE)

        async def probe(child: int, source: FileSource) -> None:
            async with limiter:
                try:
                    sizes[child] = await self.data.size(source)
                except AuthError:
                    raise
                except CupixError as exc:
                    errors.append(exc)
                    sizes[child] = None

        try:
            async with trio.open_nursery() as nursery:
                for _name, child, node in nodes:
                    if isinstance(node, FileNode) and node.source is not None:
                        nursery.start_soon(probe, child, node.source)
        except BaseExceptionGroup as group:
            raise unwrap(group) from None
        if errors and len(errors) == len(sizes):
            raise errors[0]
        for exc in errors:
            log.warning("listing: a file's size is unknown for now: %s", exc)
        return [
            (name, self._attr(child, node, sizes.get(child, _local_size(node))))
            for name, child, node in nodes
        ]

    async def open(self, inode: int, pid: int = 0) -> tuple[int, bool, bool]:
        """A handle for reading *inode*, whether the kernel may keep the pages it already
        has of it, and whether it must bypass its page cache altogether.

        *pid* is the opening process's: the walk-ahead follows each process's opens.
        Live documents (the status file) change between opens, so they bypass the
        page cache. A remote file's pages may be kept across opens only while its
        version is the one they were read from.
        """
        node = self.namespace.node(inode)
        if not isinstance(node, FileNode) or node.source is None:
            raise IsADirectory(str(inode))
        live = isinstance(node.source, StaticFile) and node.source.live
        pushed = isinstance(node.source, RemoteFile | DerivedFile)
        push = self.kernel.pusher(inode) if pushed else None
        handle = await self.data.open(
            node.source, self._kernel_version.get(inode), push, fetch=True
        )
        keep = handle.shown or (isinstance(node.source, StaticFile) and not live)
        unpushed = inode in self._unpushed
        self._unpushed.discard(inode)
        if keep and unpushed and isinstance(node.source, RemoteFile) and handle.version:
            # Fetched ahead before the kernel knew the file: what has arrived goes into
            # its page cache now, before the reader's first read (which then never
            # reaches us); what arrives later comes in the replies to its reads.
            try:
                await self.kernel.push_now(inode, self.data.held(node.source, handle.version))
            except BaseException:
                self.data.release(handle)
                raise
        if not self.namespace.ref(inode):  # pinned while open
            self.data.release(handle)
            raise NotFound(f"inode {inode} was forgotten while it was being opened")
        fh = next(self._next_fh)
        self._handles[fh] = (inode, handle)
        if handle.version is not None:
            self._kernel_version[inode] = handle.version
        self.walk.opened(inode, pid)
        return fh, keep, live

    def _weight(self, inode: int) -> int | None:
        """For the walk-ahead: the bytes a reader will read of *inode*, as far as is
        known without a request (None: not known yet)."""
        node = self.namespace.node(inode) if self.namespace.known(inode) else None
        source = node.source if isinstance(node, FileNode) else None
        if not isinstance(source, RemoteFile):
            return 0
        return self.data.known_size(source)

    async def _fetch_ahead(self, inode: int, whole: bool = True) -> None:
        """For the walk-ahead: get *inode* ready for a reader about to open it, as its
        listing, open and (with *whole*) first read would.

        A file open now is its reader's business, and is left alone. Its pages pushed
        into the kernel's page cache belong to the version checked here, which is
        recorded as the kernel's: the reader's open then keeps them (``keep_cache``), and
        its reads never reach this process.
        """
        if not self.namespace.known(inode) or any(i == inode for i, _ in self._handles.values()):
            return
        node = self.namespace.node(inode)
        source = node.source if isinstance(node, FileNode) else None
        if isinstance(source, StaticFile) and not source.live:
            await self.data.size(source)  # a document from the API: loaded once, kept
            return
        if not isinstance(source, RemoteFile):
            return  # derived files are made from their archive as they are read
        if not whole:
            await self.data.check_ahead(source)
            return
        # The kernel takes pushes only for inodes it knows, and the walk often gets to a
        # file before its reader's listing does: such a file's blocks wait in memory, and
        # those that have arrived by its open are pushed then (see `open`).
        known = node.refs > 0
        version = await self.data.fetch_ahead(
            source, lambda: self.kernel.pusher(inode) if known else None
        )
        if version is not None and self.namespace.known(inode):
            self._kernel_version[inode] = version
            if not known:
                self._unpushed.add(inode)

    async def read(self, fh: int, offset: int, size: int) -> Buffer:
        try:
            _inode, handle = self._handles[fh]
        except KeyError:
            raise NotFound(f"no open file {fh}") from None
        return await self.data.read(handle, offset, size)

    def release(self, fh: int) -> None:
        opened = self._handles.pop(fh, None)
        if opened is not None:
            inode, handle = opened
            self.data.release(handle)
            self.namespace.unref(inode)

    def resized(self, source: FileSource) -> None:
        """*source* is larger than the kernel was told: it asks for its attributes again."""
        self.kernel.invalidate(self.inodes_of(source), attr_only=True)

    def changed(self, source: FileSource) -> None:
        """*source*'s remote file changed (or its size was corrected): the kernel's pages
        and attributes of every inode showing it are dropped."""
        self.kernel.invalidate(self.inodes_of(source))

    def xattrs(self, inode: int) -> dict[str, str]:
        node = self.namespace.node(inode)
        if isinstance(node, FileNode) and isinstance(node.source, RemoteFile):
            # What `cupixfs cache clear PATH` needs to find this file's blocks.
            return dict(node.xattrs, cache_key=node.source.key)
        if isinstance(node, FileNode) and isinstance(node.source, DerivedFile):
            return dict(node.xattrs, cache_key=node.source.base.key)  # computed from its base
        return dict(node.xattrs)

    def inodes_of(self, source: FileSource) -> list[int]:
        """Every inode whose bytes come from *source* (a sub shows up in several places)."""
        return self.namespace.inodes_with_source(source.key)


def _local_size(node: Node) -> int:
    """The size of what is not a file's bytes: a link's target's length; 0 for a folder."""
    return len(node.target.encode()) if isinstance(node, LinkNode) else 0
