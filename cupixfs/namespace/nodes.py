"""The entries of the tree: directories that know how to list themselves, files, and links.

A node holds what the API told us about one entry (names, times, ids for
extended attributes) and, for a file, where its bytes come from. A node object
stands for one entry, in one directory under one name: the namespace writes its
inode number and lookup count into it (`Namespace` gives them out, not this
module).

Nodes are many (one per entry the kernel knows), so they are slotted and share
what they can: times and extended attributes usually point into the API record
they came from instead of copying it, and the inode table is the nodes
themselves rather than a record per inode beside them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from cupixfs.data.sources import FileSource

#: ``(name, node)`` pairs that a directory lists; names are already safe and unique.
Children = list[tuple[str, "Node"]]

NO_XATTRS: Mapping[str, str] = MappingProxyType({})


@dataclass(slots=True)
class Node:
    """Common to directories, files and links."""

    mtime: datetime | None = None
    ctime: datetime | None = None
    #: Extended attributes, without the ``user.cupix.`` prefix.
    xattrs: Mapping[str, str] = field(default_factory=lambda: NO_XATTRS)  # one shared, empty
    #: Reachable by name but never listed (the ``.cupixfs`` control directory).
    hidden: bool = False
    # Kept by the namespace: the inode number (0 until placed), where it is placed (its
    # directory's inode and its name there), and the kernel's lookups plus open handles.
    inode: int = field(default=0, init=False, repr=False, compare=False)
    parent_inode: int = field(default=0, init=False, repr=False, compare=False)
    name: str = field(default="", init=False, repr=False, compare=False)
    refs: int = field(default=0, init=False, repr=False, compare=False)


@dataclass(slots=True)
class DirNode(Node):
    """A directory whose children come from *list_children* (an API call, or fixed).

    *lookup_extra*, where set, resolves a name without listing the directory (the
    autofs-like ``/captures/<id>``): it returns a node, None when it cannot tell (the
    listing then decides), or raises `NotFound` when the name is certainly not there.
    *dynamic* says whether the listing comes from the API (and so has a TTL).
    """

    list_children: Callable[[], Awaitable[Children]] | None = None
    lookup_extra: Callable[[str], Awaitable[Node | None]] | None = None
    dynamic: bool = True
    #: Made from a remote file's bytes (a zip's folders): listing it reads that file, and
    #: its files are read out of it, so the walk-ahead goes around it.
    derived: bool = False


@dataclass(slots=True)
class FileNode(Node):
    """A regular file whose bytes come from *source*."""

    source: FileSource | None = None


@dataclass(slots=True)
class LinkNode(Node):
    """A symbolic link to *target*, a path relative to the link's directory, so that a
    thing shown in two places keeps one path and one cache entry."""

    target: str = ""
