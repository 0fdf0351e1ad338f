"""The inode table and the listing cache, sized by what is in use.

An inode lives while the kernel knows it (its lookup count, kept as libfuse
documents it: one per entry returned by lookup or readdirplus, less what
``forget`` gives back), while an open handle pins it, or while it is listed in
its directory's cached listing. When none of these holds any more, it is dropped
with its node, and so is every table entry keyed by it; the owner is told
(`Namespace.on_drop`) so it can drop what it keeps per inode or per file too.

Listings from the API are trusted for *listing_ttl* seconds; concurrent requests
for the same directory share one API call. They are held in a cache bounded by
the number of entries they list (least recently used first out), so memory
follows what is in use rather than everything ever listed.

Inode numbers are handed out per ``(parent inode, name)`` and never reused
during a mount: a path keeps its inode while it is known, and a different file
(another source, or a file that became a directory) always gets a new one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import cachetools
import trio

from cupixfs.core.errors import NotFound, Unavailable
from cupixfs.namespace.nodes import DirNode, FileNode, LinkNode, Node

log = logging.getLogger(__name__)

ROOT_INODE = 1
#: Entries held by cached listings at most (with their nodes: about 1 KiB each).
MAX_LISTED_ENTRIES = 100_000


@dataclass(slots=True)
class _Entry:
    node: Node
    parent: int
    name: str
    #: The kernel's lookup count plus the open handles on it.
    refs: int = 0
    #: Whether its directory's cached listing lists it.
    listed: bool = False


@dataclass(slots=True)
class _Listing:
    children: list[int]  # inodes, in listing order
    expires: float


class _Listings(cachetools.LRUCache[int, _Listing]):
    """Listings by directory inode, bounded by the entries they hold; evictions are kept
    in `evicted` for the namespace to settle (their children may be dropped)."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize, getsizeof=lambda listing: min(len(listing.children) + 1, maxsize))
        self.evicted: list[tuple[int, _Listing]] = []

    def popitem(self) -> tuple[int, _Listing]:
        key, listing = super().popitem()
        self.evicted.append((key, listing))
        return key, listing


def _identity(node: Node) -> tuple[type, str | None]:
    """What must stay the same for a name to keep its inode: its type, and the file its
    bytes come from (or the link's target)."""
    if isinstance(node, FileNode):
        return FileNode, node.source.key if node.source is not None else None
    if isinstance(node, LinkNode):
        return LinkNode, node.target
    return type(node), None


def _source_key(node: Node) -> str | None:
    return node.source.key if isinstance(node, FileNode) and node.source is not None else None


class Namespace:
    """Maps inodes to nodes, and names in a directory to inodes."""

    def __init__(
        self,
        root: DirNode,
        listing_ttl: float = 60.0,
        max_listed: int = MAX_LISTED_ENTRIES,
    ) -> None:
        self._entries: dict[int, _Entry] = {ROOT_INODE: _Entry(root, ROOT_INODE, "", refs=1)}
        self._inode_of: dict[tuple[int, str], int] = {}
        self._next_inode = ROOT_INODE + 1
        self._listings = _Listings(max_listed)
        self._loading: dict[int, trio.Event] = {}
        self._ttl = listing_ttl
        #: Live inodes per file source key: a file's data is forgotten with its last inode.
        self._key_refs: dict[str, int] = {}
        #: Called with every dropped inode, and the key of its source when it was that
        #: file's last inode (else None).
        self.on_drop: Callable[[int, str | None], None] | None = None

    # -- the table ---------------------------------------------------------------------

    def node(self, inode: int) -> Node:
        entry = self._entries.get(inode)
        if entry is None:
            raise NotFound(f"no inode {inode}")
        return entry.node

    def parent(self, inode: int) -> int:
        entry = self._entries.get(inode)
        return entry.parent if entry is not None else ROOT_INODE

    def known(self, inode: int) -> bool:
        return inode in self._entries

    def ref(self, inode: int) -> bool:
        """Count one more kernel lookup or open handle of *inode*; False if it is gone."""
        entry = self._entries.get(inode)
        if entry is None:
            return False
        entry.refs += 1
        return True

    def unref(self, inode: int, count: int = 1) -> None:
        """Give back *count* lookups or handles (the kernel's ``forget``, a ``release``)."""
        entry = self._entries.get(inode)
        if entry is None:
            return
        entry.refs = max(0, entry.refs - count)
        self._settle(inode)

    def table_sizes(self) -> dict[str, int]:
        """The sizes of what is kept (for the status file: memory follows use)."""
        return {
            "inodes": len(self._entries),
            "inode_names": len(self._inode_of),
            "listings": len(self._listings),
            "listed_entries": int(self._listings.currsize),
            "source_keys": len(self._key_refs),
        }

    def _adopt(self, parent: int, name: str, node: Node) -> int:
        """Give *node* the inode of ``parent/name`` (the same while it is the same file, else
        a new one) and record it."""
        key = (parent, name)
        inode = self._inode_of.get(key)
        entry = self._entries.get(inode) if inode is not None else None
        if inode is not None and entry is not None and _identity(entry.node) == _identity(node):
            entry.node = node
            return inode
        if inode is not None and entry is not None:
            # Another file (or a file became a directory): a new inode, so the kernel
            # never mixes the two; the old one lives on while the kernel knows it.
            entry.listed = False
            self._settle(inode)
        inode = self._next_inode
        self._next_inode += 1
        self._inode_of[key] = inode
        self._entries[inode] = _Entry(node, parent, name)
        source = _source_key(node)
        if source is not None:
            self._key_refs[source] = self._key_refs.get(source, 0) + 1
        return inode

    def _settle(self, inode: int) -> None:
        """Drop *inode* if nothing holds it any more, and what only it held."""
        pending = [inode]
        while pending:
            current = pending.pop()
            entry = self._entries.get(current)
            if entry is None or current == ROOT_INODE or entry.refs > 0 or entry.listed:
                continue
            del self._entries[current]
            if self._inode_of.get((entry.parent, entry.name)) == current:
                del self._inode_of[(entry.parent, entry.name)]
            listing = self._listings.pop(current, None)
            if listing is not None:
                pending += self._unlist(current, listing.children)
            last_of: str | None = None
            source = _source_key(entry.node)
            if source is not None:
                left = self._key_refs.get(source, 1) - 1
                if left > 0:
                    self._key_refs[source] = left
                else:
                    self._key_refs.pop(source, None)
                    last_of = source
            if self.on_drop is not None:
                self.on_drop(current, last_of)

    def _unlist(self, directory: int, children: list[int]) -> list[int]:
        """Mark *children* as no longer listed by *directory*; the ones to settle."""
        unlisted = []
        for child in children:
            entry = self._entries.get(child)
            if entry is not None and entry.parent == directory and entry.listed:
                entry.listed = False
                unlisted.append(child)
        return unlisted

    def _settle_evicted(self) -> None:
        while self._listings.evicted:
            directory, listing = self._listings.evicted.pop()
            for child in self._unlist(directory, listing.children):
                self._settle(child)

    # -- listings ----------------------------------------------------------------------

    def _dir(self, inode: int) -> DirNode:
        node = self.node(inode)
        if not isinstance(node, DirNode):
            raise NotADirectoryError(inode)
        return node

    def _fresh(self, inode: int, directory: DirNode) -> _Listing | None:
        listing = self._listings.get(inode)
        if listing is not None and (not directory.dynamic or listing.expires > trio.current_time()):
            return listing
        return None

    def _names(self, listing: _Listing) -> list[tuple[str, int]]:
        return [(self._entries[child].name, child) for child in listing.children]

    async def listdir(self, inode: int) -> list[tuple[str, int]]:
        """``(name, inode)`` of every child, from the cache or one (shared) API listing."""
        directory = self._dir(inode)
        while True:
            listing = self._fresh(inode, directory)
            if listing is not None:
                return self._names(listing)
            loading = self._loading.get(inode)
            if loading is None:
                break
            await loading.wait()  # someone else is listing it: use their result
        event = self._loading[inode] = trio.Event()
        try:
            old = self._listings.get(inode)
            try:
                children = await directory.list_children() if directory.list_children else []
            except Unavailable as exc:
                if old is None:
                    raise
                # Better an old listing than none while the API is down; retry soon.
                log.warning("serving a stale listing (inode %d): %s", inode, exc)
                old.expires = trio.current_time() + min(self._ttl, 5.0)
                return self._names(old)
            if not self.known(inode):
                raise NotFound(f"inode {inode} was forgotten while it was being listed")
            inodes = [self._adopt(inode, name, node) for name, node in children]
            for child in inodes:
                self._entries[child].listed = True
            new = _Listing(inodes, trio.current_time() + self._ttl)
            current = self._listings.pop(inode, None)  # never "evicted" by its own update
            if current is not None:
                kept = set(inodes)
                for child in self._unlist(inode, [c for c in current.children if c not in kept]):
                    self._settle(child)
            self._listings[inode] = new
            self._settle_evicted()
            return self._names(new)
        finally:
            del self._loading[inode]
            event.set()

    async def lookup(self, parent: int, name: str) -> int:
        """The inode of *name* in directory *parent*, or `NotFound`.

        A directory with a lookup of its own (``/captures/<id>``) asks it first when its
        listing is not at hand, rather than list the whole directory for one name.
        """
        if name == ".":
            return parent
        if name == "..":
            return self.parent(parent)
        directory = self._dir(parent)
        listing = self._fresh(parent, directory)
        if listing is not None:
            found = self._listed_child(parent, name)
            if found is not None:
                return found
        if directory.lookup_extra is not None:
            node = await directory.lookup_extra(name)  # NotFound: certainly not here
            if node is not None:
                return self._adopt_extra(parent, name, node)
        if listing is None:
            await self.listdir(parent)
            found = self._listed_child(parent, name)
            if found is not None:
                return found
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
            (inode, self._entries[child].name)
            for inode, listing in self._listings.items()
            for child in listing.children
            if child in self._entries
        ]

    def _listed_child(self, parent: int, name: str) -> int | None:
        child = self._inode_of.get((parent, name))
        if child is not None and self._entries[child].listed:
            return child
        return None

    def _adopt_extra(self, parent: int, name: str, node: Node) -> int:
        """A node found by a directory's own lookup: adopted, and shown in its listing."""
        inode = self._adopt(parent, name, node)
        listing = self._listings.get(parent)
        entry = self._entries[inode]
        if listing is not None and not node.hidden and not entry.listed:
            listing.children.append(inode)
            entry.listed = True
        return inode

    def inodes_with_source(self, key: str) -> list[int]:
        """Inodes of the files whose source has this key."""
        if key not in self._key_refs:
            return []
        return [inode for inode, entry in self._entries.items() if _source_key(entry.node) == key]
