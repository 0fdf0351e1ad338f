"""The derived entries of a sub pointcloud's directory: ``mesh/`` and ``pointcloud.las``.

``mesh/`` is the tree of ``mesh.zip``'s members. Member names are paths written by
whoever made the archive, so each component goes through the same safe naming as
every API name (`cupixfs.namespace.names`): empty and ``.`` components are dropped
(an absolute ``/a/b`` shows as ``a/b``), ``..`` becomes ``_..`` (so nothing climbs
out of ``mesh/``), control characters become ``_``, long names are cut, and names
that collide in a folder (two members of one name, a file and a folder of one name,
two names equal once made safe) are told apart by the member's position in the
archive (``name~<entry>.ext``); the first keeps the plain name.

``pointcloud.las`` is listed when the PLY's header says it converts.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from datetime import datetime

from cupixfs.data.sources import RemoteFile
from cupixfs.namespace.names import assign_names
from cupixfs.namespace.nodes import Children, DirNode, FileNode
from cupixfs.views import DerivedViews, LasView, ZipMember
from cupixfs.views.zipindex import Index, Member

MESH_DIR = "mesh"
POINTCLOUD_LAS = "pointcloud.las"


@dataclass
class _Folder:
    """A folder of an archive: its raw-named contents, then the names they are shown by."""

    #: The lowest entry under it: its rank when names collide.
    first: int
    mtime: datetime | None = None
    folders: dict[str, _Folder] = field(default_factory=dict)
    files: list[tuple[str, Member]] = field(default_factory=list)
    shown: dict[str, _Folder | Member] = field(default_factory=dict)

    def folder(self, raw: str, entry: int) -> _Folder:
        found = self.folders.get(raw)
        if found is None:
            found = self.folders[raw] = _Folder(entry)
        return found

    def name(self) -> None:
        items: list[tuple[str, int]] = [(raw, f.first) for raw, f in self.folders.items()]
        items += [(raw, member.entry) for raw, member in self.files]
        things: list[_Folder | Member] = [*self.folders.values()]
        things += [member for _raw, member in self.files]
        self.shown = dict(zip(assign_names(items), things, strict=True))
        for folder in self.folders.values():
            folder.name()


def _parts(name: str) -> list[str]:
    return [part for part in name.split("/") if part not in ("", ".")]


def _tree(index: Index) -> _Folder:
    root = _Folder(-1)
    for member in index.members:
        parts = _parts(member.name)
        if member.is_dir:
            folder = root
            for part in parts:
                folder = folder.folder(part, member.entry)
            if parts:
                folder.mtime = member.mtime
            continue
        parts = parts or [""]  # a member named "/" still shows (as "_")
        folder = root
        for part in parts[:-1]:
            folder = folder.folder(part, member.entry)
        folder.files.append((parts[-1], member))
    root.name()
    return root


#: One tree per index (an index is one version of one archive).
_trees: weakref.WeakKeyDictionary[Index, _Folder] = weakref.WeakKeyDictionary()


def tree_of(index: Index) -> _Folder:
    found = _trees.get(index)
    if found is None:
        found = _trees[index] = _tree(index)
    return found


def mesh_dir(views: DerivedViews, zip_node: FileNode) -> DirNode:
    """``mesh/``: the members of *zip_node*'s archive, read when first listed."""
    archive = zip_node.source
    assert isinstance(archive, RemoteFile)
    default_time = zip_node.mtime

    def folder_node(path: tuple[str, ...], mtime: datetime | None) -> DirNode:
        async def children() -> Children:
            folder: _Folder | Member | None = tree_of(await views.zips.index(archive))
            for name in path:  # found again in the current version of the archive
                folder = folder.shown.get(name) if isinstance(folder, _Folder) else None
            if not isinstance(folder, _Folder):
                return []
            return [(name, node((*path, name), thing)) for name, thing in folder.shown.items()]

        return DirNode(
            list_children=children,
            mtime=mtime or default_time,
            ctime=zip_node.ctime,
            xattrs=dict(zip_node.xattrs, kind="mesh_folder"),
            derived=True,
        )

    def node(path: tuple[str, ...], thing: _Folder | Member) -> DirNode | FileNode:
        if isinstance(thing, _Folder):
            return folder_node(path, thing.mtime)
        return FileNode(
            mtime=thing.mtime or default_time,
            ctime=zip_node.ctime,
            xattrs=dict(zip_node.xattrs, kind="mesh_member", name=thing.name),
            source=ZipMember(f"{archive.key}!{thing.entry}", archive, thing.entry, thing.name),
        )

    return folder_node((), default_time)


async def las_file(views: DerivedViews, ply_node: FileNode) -> FileNode | None:
    """``pointcloud.las`` for *ply_node*, or None if its PLY does not convert."""
    ply = ply_node.source
    assert isinstance(ply, RemoteFile)
    if not await views.las.convertible(ply):
        return None
    return FileNode(
        mtime=ply_node.mtime,
        ctime=ply_node.ctime,
        xattrs=dict(ply_node.xattrs, kind="las"),
        source=LasView(f"{ply.key}.las", ply, created=ply_node.mtime),
    )


async def derived_children(
    views: DerivedViews, mesh_zip: FileNode | None, ply: FileNode | None
) -> Children:
    """The derived entries beside a sub's ``mesh.zip`` and ``pointcloud.ply``."""
    children: Children = []
    if mesh_zip is not None:
        children.append((MESH_DIR, mesh_dir(views, mesh_zip)))
    if ply is not None:
        las = await las_file(views, ply)
        if las is not None:
            children.append((POINTCLOUD_LAS, las))
    return children
