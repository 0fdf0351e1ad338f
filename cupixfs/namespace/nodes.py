"""The entries of the tree: directories that know how to list themselves, and files.

A node holds what the API told us about one entry (names, times, ids for
extended attributes) and, for a file, where its bytes come from. Inode numbers
are given out by `cupixfs.namespace.tree.Namespace`, not here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from cupixfs.data.sources import FileSource

#: ``(name, node)`` pairs that a directory lists; names are already safe and unique.
Children = list[tuple[str, "Node"]]


@dataclass
class Node:
    """Common to directories and files."""

    mtime: datetime | None = None
    ctime: datetime | None = None
    #: Extended attributes, without the ``user.cupix.`` prefix.
    xattrs: dict[str, str] = field(default_factory=dict)
    #: Reachable by name but never listed (the ``.cupixfs`` control directory).
    hidden: bool = False


@dataclass
class DirNode(Node):
    """A directory whose children come from *list_children* (an API call, or fixed).

    *lookup_extra*, where set, resolves a name that is not in the listing (the
    autofs-like ``/captures/<id>``): it returns a node, or ``None`` for ENOENT.
    *dynamic* says whether the listing comes from the API (and so has a TTL).
    """

    list_children: Callable[[], Awaitable[Children]] | None = None
    lookup_extra: Callable[[str], Awaitable[Node | None]] | None = None
    dynamic: bool = True


@dataclass
class FileNode(Node):
    """A regular file whose bytes come from *source*."""

    source: FileSource | None = None
