"""What a file's bytes come from: a remote blob, or a small generated document.

The namespace builds these; the data layer knows how to size and read them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A blob in Cupix storage, reached through an API download endpoint.

    *key* names the remote object stably across mounts (``videos/5001``,
    ``pointclouds/5310/mesh``): cache entries are filed under it (plus the ETag).
    *download_path* is the API path that answers 302 to a signed URL.
    """

    key: str
    download_path: str
    #: What the API says about this version (its ``updated_at``): a persisted size
    #: is trusted only while the hint is unchanged.
    hint: str = ""
    #: The size the API states (a pointcloud's ``filesize``, a resource's ``size``), or
    #: None where it states none: shown without a probe, until storage says otherwise.
    size: int | None = None


@dataclass(frozen=True, slots=True)
class StaticFile:
    """A small document built from API calls (e.g. ``meta.json``), held in memory whole."""

    key: str
    load: Callable[[], Awaitable[bytes]] = field(compare=False, hash=False)
    #: Rendered anew at every open (the mount's status file), never cached.
    live: bool = False


@dataclass(frozen=True, slots=True)
class DerivedFile:
    """A file computed from a remote file's bytes as they are read (a member of a zip, a
    LAS view of a PLY).

    The data layer only routes it: `DataStore` hands these to the mount's derived-file
    reader (`cupixfs.views`), which reads *base* through the store like any reader.
    """

    key: str
    base: RemoteFile


FileSource = RemoteFile | StaticFile | DerivedFile
