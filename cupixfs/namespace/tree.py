"""The inode table and the listing cache.

Inode numbers are handed out per ``(parent inode, name)`` and never reused
during a mount, so a path keeps its inode when its directory is listed again.
Listings from the API are cached for *listing_ttl* seconds; concurrent
requests for the same directory share one API call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from cupixfs.core.errors import NotFound, Unavailable
from cupixfs.namespace.nodes import DirNode, FileNode, Node

log = logging.getLogger(__name__)

ROOT_INODE = 1


@dataclass
class _Listing:
    names: dict[str, int]  # name -> inode, in listing order
    expires: float


class Namespace:
    """Maps inodes to nodes, and names in a directory to inodes."""

    def __init__(self, root: DirNode, listing_ttl: float = 60.0) -> None:
        self._nodes: dict[int, Node] = {ROOT_INODE: root}
        self._parents: dict[int, int] = {ROOT_INODE: ROOT_INODE}
        self._inode_of: dict[tuple[int, str], int] = {}
        self._next_inode = ROOT_INODE + 1
        self._listings: dict[int, _Listing] = {}
        self._loading: dict[int, trio.Event] = {}
        self._ttl = listing_ttl

    def node(self, inode: int) -> Node:
        try:
            return self._nodes[inode]
        except KeyError:
            raise NotFound(f"no inode {inode}") from None

    def parent(self, inode: int) -> int:
        return self._parents.get(inode, ROOT_INODE)

    def _adopt(self, parent: int, name: str, node: Node) -> int:
        """Give *node* the inode of ``parent/name`` (new or reused) and record it."""
        key = (parent, name)
        inode = self._inode_of.get(key)
        if inode is None:
            inode = self._next_inode
            self._next_inode += 1
            self._inode_of[key] = inode
        old = self._nodes.get(inode)
        if old is not None and type(old) is not type(node):
            # A file became a directory (or back): a new inode, so the kernel does not mix them.
            inode = self._next_inode
            self._next_inode += 1
            self._inode_of[key] = inode
        self._nodes[inode] = node
        self._parents[inode] = parent
        return inode

    def _dir(self, inode: int) -> DirNode:
        node = self.node(inode)
        if not isinstance(node, DirNode):
            raise NotADirectoryError(inode)
        return node

    async def listdir(self, inode: int) -> list[tuple[str, int]]:
        """``(name, inode)`` of every child, from the cache or one (shared) API listing."""
        directory = self._dir(inode)
        while True:
            listing = self._listings.get(inode)
            if listing is not None and (
                not directory.dynamic or listing.expires > trio.current_time()
            ):
                return list(listing.names.items())
            loading = self._loading.get(inode)
            if loading is None:
                break
            await loading.wait()  # someone else is listing it: use their result
        event = self._loading[inode] = trio.Event()
        try:
            try:
                children = await directory.list_children() if directory.list_children else []
            except Unavailable as exc:
                if listing is None:
                    raise
                # Better an old listing than none while the API is down; retry soon.
                log.warning("serving a stale listing (inode %d): %s", inode, exc)
                listing.expires = trio.current_time() + min(self._ttl, 5.0)
                return list(listing.names.items())
            names = {name: self._adopt(inode, name, node) for name, node in children}
            self._listings[inode] = _Listing(names, trio.current_time() + self._ttl)
            return list(names.items())
        finally:
            del self._loading[inode]
            event.set()

    async def lookup(self, parent: int, name: str) -> int:
        """The inode of *name* in directory *parent*, or `NotFound`."""
        if name == ".":
            return parent
        if name == "..":
            return self.parent(parent)
        directory = self._dir(parent)
        for child_name, child in await self.listdir(parent):
            if child_name == name:
                return child
        if directory.lookup_extra is not None:
            node = await directory.lookup_extra(name)
            if node is not None:
                inode = self._adopt(parent, name, node)
                listing = self._listings.get(parent)
                if listing is not None and not node.hidden:
                    listing.names[name] = inode
                return inode
        raise NotFound(f"no entry {name!r}")

    def expire_listings(self) -> list[tuple[int, str]]:
        """Make every cached listing stale (a reload): the next lookup or listing asks the API.

        Inodes stay, so a path listed again keeps its inode, and a stale listing is
        still served while the API is unreachable, as after its TTL. Returns the
        ``(directory inode, name)`` of each entry they held: names the kernel may cache.
        """
        for listing in self._listings.values():
            listing.expires = float("-inf")
        return [
            (inode, name) for inode, listing in self._listings.items() for name in listing.names
        ]

    def inodes_with_source(self, key: str) -> list[int]:
        """Inodes of the files whose source has this key."""
        return [
            inode
            for inode, node in self._nodes.items()
            if isinstance(node, FileNode) and node.source is not None and node.source.key == key
        ]
