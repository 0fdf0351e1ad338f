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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import cachetools
import trio

from cupixfs.core.errors import NotFound, Unavailable
from cupixfs.namespace.nodes import DirNode, FileNode, LinkNode, Node

log = logging.getLogger(__name__)

ROOT_INODE = 1
#: Listings whose order `Namespace.listed_after` keeps (the ones a walk is in).
ORDERS_KEPT = 8
#: Entries held by cached listings at most (with their nodes: about 1 KiB each).
MAX_LISTED_ENTRIES = 100_000


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
    """Maps inodes to nodes, and names in a directory to inodes.

    The inode table is the nodes themselves (`Node.inode`, `Node.refs`): a listing maps
    names to nodes, and a node the kernel was given knows its inode.
    """

    def __init__(
        self,
        root: DirNode,
        listing_ttl: float = 60.0,
        max_listed: int = MAX_LISTED_ENTRIES,
    ) -> None:
        root.inode, root.parent_inode, root.refs = ROOT_INODE, ROOT_INODE, 1
        self._nodes: dict[int, Node] = {ROOT_INODE: root}
        self._next_inode = ROOT_INODE + 1
        self._listings = _Listings(max_listed)
        self._loading: dict[int, trio.Event] = {}
        #: The order of the listings last asked of by `listed_after` (listing, names,
        #: name -> position): a few, so that nothing is kept per entry for the others.
        self._orders: cachetools.LRUCache[int, tuple[_Listing, tuple[str, ...], dict[str, int]]] = (
            cachetools.LRUCache(ORDERS_KEPT)
        )
        self._ttl = listing_ttl
        #: Live inodes per file source key: a file's data is forgotten with its last inode.
        self._key_refs: dict[str, int] = {}
        #: Placed nodes no cached listing holds, by directory and name: found by a lookup
        #: of its own, or held by the kernel when their listing was evicted. A listing
        #: made later gives them their inode back.
        self._unlisted: dict[int, dict[str, Node]] = {}
        #: Called with every dropped inode, and the key of its source when it was that
        #: file's last inode (else None).
        self.on_drop: Callable[[int, str | None], None] | None = None

    # -- the table ---------------------------------------------------------------------

    def node(self, inode: int) -> Node:
        node = self._nodes.get(inode)
        if node is None:
            raise NotFound(f"no inode {inode}")
        return node

    def parent(self, inode: int) -> int:
        node = self._nodes.get(inode)
        return node.parent_inode if node is not None else ROOT_INODE

    def known(self, inode: int) -> bool:
        return inode in self._nodes

    def ref(self, inode: int) -> bool:
        """Count one more kernel lookup or open handle of *inode*; False if it is gone."""
        node = self._nodes.get(inode)
        if node is None:
            return False
        node.refs += 1
        return True

    def unref(self, inode: int, count: int = 1) -> None:
        """Give back *count* lookups or handles (the kernel's ``forget``, a ``release``);
        at 0 the inode is dropped."""
        node = self._nodes.get(inode)
        if node is None or inode == ROOT_INODE:
            return
        node.refs = max(0, node.refs - count)
        if node.refs == 0:
            self._drop(inode)

    def table_sizes(self) -> dict[str, int]:
        """The sizes of what is kept (for the status file: memory follows use)."""
        return {
            "inodes": len(self._nodes),
            "listings": len(self._listings),
            "listed_entries": int(self._listings.currsize),
            "source_keys": len(self._key_refs),
            "unlisted": sum(len(names) for names in self._unlisted.values()),
        }

    def _placed(self, node: Node | None) -> bool:
        return node is not None and node.inode != 0 and self._nodes.get(node.inode) is node

    def _place(self, parent: int, name: str, node: Node, before: Node | None) -> int:
        """The inode of *node*, listed as ``parent/name`` where *before* was listed until
        now: *before*'s while it is the same file, else a new one."""
        if self._placed(node):
            if node.parent_inode != parent:
                raise ValueError(f"a node listed in two places ({name!r})")
            return node.inode
        if before is not None and before is not node and self._placed(before):
            if _identity(before) == _identity(node):
                node.inode, node.parent_inode, node.refs = before.inode, parent, before.refs
                node.name = name
                self._nodes[node.inode] = node
                self._forget_unlisted(before)
                return node.inode
            # Another file (or a file became a directory): a new inode, so the kernel
            # never mixes the two; the old one lives on while the kernel knows it.
            if before.refs == 0:
                self._drop(before.inode)
        node.inode, node.parent_inode, node.refs = self._next_inode, parent, 0
        node.name = name
        self._next_inode += 1
        self._nodes[node.inode] = node
        source = _source_key(node)
        if source is not None:
            self._key_refs[source] = self._key_refs.get(source, 0) + 1
        return node.inode

    def _drop(self, inode: int) -> None:
        """Drop *inode*, its listing, and the inodes only that listing held."""
        pending = [inode]
        while pending:
            current = pending.pop()
            node = self._nodes.pop(current, None)
            if node is None:
                continue
            self._forget_unlisted(node)
            listing = self._listings.pop(current, None)
            if listing is not None:
                pending += self._unheld(listing.names.values())
            pending += self._unheld(self._unlisted.pop(current, {}).values())
            last_of: str | None = None
            source = _source_key(node)
            if source is not None:
                left = self._key_refs.get(source, 1) - 1
                if left > 0:
                    self._key_refs[source] = left
                else:
                    self._key_refs.pop(source, None)
                    last_of = source
            if self.on_drop is not None:
                self.on_drop(current, last_of)

    def _unheld(self, nodes: Iterable[Node]) -> list[int]:
        """The inodes of *nodes* that the kernel does not hold: a listing that goes takes
        them along."""
        return [node.inode for node in nodes if self._placed(node) and node.refs == 0]

    def _forget_unlisted(self, node: Node) -> None:
        names = self._unlisted.get(node.parent_inode)
        if names is not None and names.get(node.name) is node:
            del names[node.name]
            if not names:
                del self._unlisted[node.parent_inode]

    def _settle_evicted(self) -> None:
        """Listings pushed out of the cache: what only they held goes; what the kernel
        holds stays, unlisted, until their directory is listed again."""
        while self._listings.evicted:
            directory, listing = self._listings.evicted.pop()
            for name, node in listing.names.items():
                if not self._placed(node):
                    continue
                if node.refs == 0:
                    self._drop(node.inode)
                elif directory in self._nodes:
                    self._unlisted.setdefault(directory, {})[name] = node

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
        return [
            (name, self._place(directory, name, node, None)) for name, node in listing.names.items()
        ]

    def listed_after(self, directory: int, after: int | None = None) -> Iterator[int] | None:
        """The children of *directory* in listing order, from the first or from the one
        after child *after*, if its listing is at hand and fresh (and holds *after*);
        None otherwise. No API call: the walk-ahead asks on every open.

        Lazy, and without a scan to find *after*: a walk through a folder of N files
        asks for the one after each of them, which through a list of the whole listing
        cost O(N) each time (400 us per open in a folder of 2,000). The order is kept
        for the few listings last asked of; the iterator ends if the listing is
        replaced meanwhile.
        """
        node = self._nodes.get(directory)
        if not isinstance(node, DirNode):
            return None
        listing = self._fresh(directory, node)
        if listing is None:
            return None
        order = self._orders.get(directory)
        if order is None or order[0] is not listing or len(order[1]) != len(listing.names):
            names = tuple(listing.names)
            order = self._orders[directory] = (listing, names, {n: i for i, n in enumerate(names)})
        _listing, names, positions = order
        start = 0
        if after is not None:
            child = self._nodes.get(after)
            if child is None or child.name not in positions:
                return None
            if listing.names[child.name].inode != after:
                return None  # a name now listed for another file
            start = positions[child.name] + 1

        def children() -> Iterator[int]:
            for i in range(start, len(names)):
                if self._listings.get(directory) is not listing:
                    return  # listed again since: the caller asks again
                yield self._place(directory, names[i], listing.names[names[i]], None)

        return children()

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
            before = self._unlisted.pop(inode, {})
            if current is not None:
                before.update(current.names)
            names = [
                (name, self._place(inode, name, node, before.get(name)))
                for name, node in new.names.items()
            ]
            for name, node in before.items():
                if name in new.names or not self._placed(node):
                    continue
                if node.refs == 0:
                    self._drop(node.inode)
                else:  # held by the kernel, though not listed: kept, and found again by name
                    self._unlisted.setdefault(inode, {})[name] = node
            self._listings[inode] = new
            self._settle_evicted()
            return names
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
            return self._place(parent, name, listing.names[name], None)
        if directory.lookup_extra is not None:
            node = await directory.lookup_extra(name)  # NotFound: certainly not here
            if node is not None:
                current = self._listings.get(parent)
                before = current.names.get(name) if current is not None else None
                if before is None:
                    before = self._unlisted.get(parent, {}).get(name)
                inode = self._place(parent, name, node, before)
                if current is not None and not node.hidden:
                    current.names[name] = node  # shown in the listing from now on
                else:
                    self._unlisted.setdefault(parent, {})[name] = node
                return inode
        if listing is None:
            await self.listdir(parent)
            listing = self._listings.get(parent)
            if listing is not None and name in listing.names:
                return self._place(parent, name, listing.names[name], None)
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
        return [inode for inode, node in self._nodes.items() if _source_key(node) == key]
