"""The derived files a mount shows: members of a ``mesh.zip``, and ``pointcloud.las``.

Each names the remote file it is computed from (*base*) and what to compute; the
namespace builds them, `cupixfs.views.DerivedViews` sizes and reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cupixfs.data.sources import DerivedFile


@dataclass(frozen=True)
class ZipMember(DerivedFile):
    """One member of the zip archive *base*."""

    #: Its position in the central directory, and its name there: the name finds it
    #: again if a new version of the archive moved it.
    entry: int = 0
    name: str = ""


@dataclass(frozen=True)
class LasView(DerivedFile):
    """The points of the PLY file *base* as LAS 1.2, point format 2."""

    #: The creation date written in the LAS header (the PLY's upload time).
    created: datetime | None = None
