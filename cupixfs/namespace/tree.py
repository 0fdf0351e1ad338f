"""The inode table and the listing cache, sized by what is in use.

An inode lives while the kernel knows it: its lookup count, kept as libfuse
documents it (one per entry returned by lookup or readdirplus, less what
``forget`` gives back), plus one per open handle. When that count returns to 0
the inode is dropped with its node, and so is every table entry keyed by it;
the owner is told (`Namespace.on_drop`) so it can drop what it keeps per inode
or per file too. An inode handed out by a listing but not (yet) to the kernel
lives as long as that listing.

A listing holds what the API said a directory contains (names and nodes). It
is trusted for *listing_ttl* seconds; concurrent requests for one directory
share one API call. Listings go with their directory's inode, and are held in a
cache bounded by the number of entries they list (least recently used first
out), so memory follows what is in use rather than everything ever listed.

Inode numbers are handed out per ``(parent inode, name)`` and never reused
during a mount: a path keeps its inode while the kernel knows it, and a
different file (another source, or a file that became a directory) always gets
a new one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
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


@dataclass(slots=True)
class _Listing:
    names: dict[str, Node]  # in listing order
    expires: float


class _Listings(cachetools.LRUCache[int, _Listing]):
    """Listings by directory inode, bounded by the entries they hold; evictions are kept
    in `evicted` for the namespace to settle (inodes only they held are dropped)."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize, getsizeof=lambda listing: min(len(listing.names) + 1, maxsize))
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
        """Give back *count* lookups or handles (the kernel's ``forget``, a ``release``);
        at 0 the inode is dropped."""
        entry = self._entries.get(inode)
        if entry is None or inode == ROOT_INODE:
            return
        entry.refs = max(0, entry.refs - count)
        if entry.refs == 0:
            self._drop(inode)

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
        """The inode of ``parent/name`` for *node*: the one it has while it is the same file,
        else a new one."""
        key = (parent, name)
        inode = self._inode_of.get(key)
        entry = self._entries.get(inode) if inode is not None else None
        if inode is not None and entry is not None:
            if _identity(entry.node) == _identity(node):
                entry.node = node
                return inode
            # Another file (or a file became a directory): a new inode, so the kernel
            # never mixes the two; the old one lives on while the kernel knows it.
            del self._inode_of[key]
            if entry.refs == 0:
                self._drop(inode)
        inode = self._next_inode
        self._next_inode += 1
        self._inode_of[key] = inode
        self._entries[inode] = _Entry(node, parent, name)
        source = _source_key(node)
        if source is not None:
            self._key_refs[source] = self._key_refs.get(source, 0) + 1
        return inode

    def _drop(self, inode: int) -> None:
        """Drop *inode*, its listing, and the inodes only that listing held."""
        pending = [inode]
        while pending:
            current = pending.pop()
            entry = self._entries.pop(current, None)
            if entry is None:
                continue
            if self._inode_of.get((entry.parent, entry.name)) == current:
                del self._inode_of[(entry.parent, entry.name)]
            listing = self._listings.pop(current, None)
            if listing is not None:
                pending += self._unheld(current, listing.names)
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

    def _unheld(self, directory: int, names: Iterable[str]) -> list[int]:
        """The inodes of *names* in *directory* that the kernel does not hold: a listing
        that goes takes them along."""
        unheld = []
        for name in names:
            child = self._inode_of.get((directory, name))
            if child is not None and self._entries[child].refs == 0:
                unheld.append(child)
        return unheld

    def _settle_evicted(self) -> None:
        while self._listings.evicted:
            directory, listing = self._listings.evicted.pop()
            for child in self._unheld(directory, listing.names):
                self._drop(child)

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

    def _names(self, directory: int, listing: _Listing) -> list[tuple[str, int]]:
        return [(name, self._adopt(directory, name, node)) for name, node in listing.names.items()]

    async def listdir(self, inode: int) -> list[tuple[str, int]]:
        """``(name, inode)`` of every child, from the cache or one (shared) API listing."""
        directory = self._dir(inode)
        while True:
            listing = self._fresh(inode, directory)
            if listing is not None:
                return self._names(inode, listing)
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
                return self._names(inode, old)
            if not self.known(inode):
                raise NotFound(f"inode {inode} was forgotten while it was being listed")
            new = _Listing(dict(children), trio.current_time() + self._ttl)
            current = self._listings.pop(inode, None)  # never "evicted" by its own update
            if current is not None:
                gone = [name for name in current.names if name not in new.names]
                for child in self._unheld(inode, gone):
                    self._drop(child)
            self._listings[inode] = new
            self._settle_evicted()
            return self._names(inode, new)
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
        if listing is not None and name in listing.names:
            return self._adopt(parent, name, listing.names[name])
        if directory.lookup_extra is not None:
            node = await directory.lookup_extra(name)  # NotFound: certainly not here
            if node is not None:
                current = self._listings.get(parent)
                if current is not None and not node.hidden:
                    current.names[name] = node  # shown in the listing from now on
                return self._adopt(parent, name, node)
        if listing is None:
            await self.listdir(parent)
            listing = self._listings.get(parent)
            if listing is not None and name in listing.names:
                return self._adopt(parent, name, listing.names[name])
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
        if key not in self._key_refs:
            return []
        return [inode for inode, entry in self._entries.items() if _source_key(entry.node) == key]
