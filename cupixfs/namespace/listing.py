"""What each directory of the tree contains, in terms of API calls.

    /captures/<capture_id>/videos/<video name>
    /captures/<capture_id>/pointclouds/<sub_id>/...
    /clusters/<cluster_id>/<sub_id>/{<name>.cpc, mesh.zip, pointcloud.ply, meta.json}
    /clusters/<cluster_id>/<sub_id>/{mesh/..., pointcloud.las}     (derived: see derived.py)
    /records/<record_id>/<sub_id>/...

This module only builds nodes; caching, inode numbers and TTLs live in
`cupixfs.namespace.tree`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

from cupixfs.api.client import CupixClient
from cupixfs.api.models import Pointcloud
from cupixfs.core.errors import NotFound
from cupixfs.data.sources import RemoteFile, StaticFile
from cupixfs.namespace.derived import MESH_DIR, POINTCLOUD_LAS, derived_children
from cupixfs.namespace.names import assign_names
from cupixfs.namespace.nodes import Children, DirNode, FileNode, Node
from cupixfs.namespace.transform import transform_document
from cupixfs.views import DerivedViews

META_JSON = "meta.json"
MESH_ZIP = "mesh.zip"
POINTCLOUD_PLY = "pointcloud.ply"
TRANSFORM_JSON = "transform.json"
RESERVED_IN_SUB = (META_JSON, MESH_ZIP, POINTCLOUD_PLY, TRANSFORM_JSON, MESH_DIR, POINTCLOUD_LAS)
CONTROL_DIR = ".cupixfs"


def parse_id(name: str) -> int | None:
    """A canonical positive decimal id (``"5310"``), or None (``"05310"``, ``"x"``)."""
    if not name.isascii() or not name.isdigit() or name.startswith("0") or len(name) > 18:
        return None
    return int(name)


def _iso(value: datetime | None) -> str:
    """The API's own timestamp form: ``2023-10-30T02:35:05.544Z``."""
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z") if value else ""


def _matrix_text(matrix: tuple[float, ...] | None) -> str:
    return json.dumps(list(matrix)) if matrix else ""


class Tree:
    """Builds the directory nodes of a mount from one `CupixClient`."""

    def __init__(
        self,
        client: CupixClient,
        started: datetime,
        status: Callable[[], Awaitable[bytes]] | None = None,
        views: DerivedViews | None = None,
    ) -> None:
        self._client = client
        #: Where mesh/ and pointcloud.las come from; None shows neither.
        self._views = views
        self._started = started
        self._status = status
        #: Ids shown in /captures and /records: pinned on the command line, or looked up.
        self.known_captures: set[int] = set()
        self.known_records: set[int] = set()

    # -- top level ----------------------------------------------------------------

    def root(self) -> DirNode:
        async def children() -> Children:
            return [
                ("captures", self._dir(self._list_captures, self._lookup_capture)),
                ("clusters", self._dir(self._list_clusters)),
                ("records", self._dir(self._list_records, self._lookup_record)),
            ]

        return DirNode(
            mtime=self._started,
            ctime=self._started,
            list_children=children,
            lookup_extra=self._lookup_control,
            dynamic=False,
        )

    async def _lookup_control(self, name: str) -> Node | None:
        """``/.cupixfs/status``: reachable by path, but not listed, so ``cp -r``,
        ``rsync`` and ``find`` of the mount never pick it up."""
        if name != CONTROL_DIR or self._status is None:
            return None
        status = FileNode(
            mtime=self._started,
            ctime=self._started,
            source=StaticFile(f"{CONTROL_DIR}/status", self._status, live=True),
        )

        async def children() -> Children:
            return [("status", status)]

        node = self._dir(children)
        node.dynamic = False
        node.hidden = True
        return node

    def _dir(
        self,
        list_children: Callable[[], Awaitable[Children]],
        lookup_extra: Callable[[str], Awaitable[Node | None]] | None = None,
        mtime: datetime | None = None,
        ctime: datetime | None = None,
    ) -> DirNode:
        """A directory listed by *list_children*; times default to the mount's start."""
        return DirNode(
            list_children=list_children,
            lookup_extra=lookup_extra,
            mtime=mtime or self._started,
            ctime=ctime or mtime or self._started,
        )

    # -- /captures ----------------------------------------------------------------

    async def _list_captures(self) -> Children:
        return [(str(cid), self._capture_dir(cid)) for cid in sorted(self.known_captures)]

    async def _lookup_capture(self, name: str) -> Node | None:
        capture_id = parse_id(name)
        if capture_id is None:
            return None
        try:
            await self._client.list_videos(capture_id)  # 404 for an id the API does not know
        except NotFound:
            return None
        self.known_captures.add(capture_id)
        return self._capture_dir(capture_id)

    def _capture_dir(self, capture_id: int) -> DirNode:
        async def children() -> Children:
            return [
                ("videos", self._dir(lambda: self._list_videos(capture_id))),
                ("pointclouds", self._dir(lambda: self._list_capture_pointclouds(capture_id))),
            ]

        node = self._dir(children)
        node.dynamic = False
        node.xattrs = {"id": str(capture_id), "kind": "capture"}
        return node

    async def _list_videos(self, capture_id: int) -> Children:
        videos = await self._client.list_videos(capture_id)
        names = assign_names([(v.name, v.id) for v in videos])
        children: Children = []
        for name, video in zip(names, videos, strict=True):
            node = FileNode(
                mtime=video.updated_at or video.created_at,
                ctime=video.created_at or video.updated_at,
                source=RemoteFile(
                    f"videos/{video.id}",
                    f"videos/{video.id}/download",
                    hint=_iso(video.updated_at or video.created_at),
                ),
                xattrs={
                    "id": str(video.id),
                    "kind": "video",
                    "name": video.name,
                    "state": video.state or "",
                    "created_at": _iso(video.created_at),
                    "updated_at": _iso(video.updated_at),
                },
            )
            children.append((name, node))
        return children

    async def _list_capture_pointclouds(self, capture_id: int) -> Children:
        pointclouds = await self._client.list_pointclouds(
            capture_id=capture_id, pointcloud_type="3d_reconstructed"
        )
        return self._sub_dirs(pointclouds)

    # -- /clusters ----------------------------------------------------------------

    async def _list_clusters(self) -> Children:
        pointclouds = await self._client.list_pointclouds(pointcloud_type="all")
        clusters: dict[int, str | None] = {}
        updated: dict[int, datetime] = {}
        for pc in pointclouds:
            if pc.cluster_id is not None:
                clusters.setdefault(pc.cluster_id, pc.cluster_name)
                when = pc.updated_at or pc.created_at
                if when is not None and (
                    pc.cluster_id not in updated or when > updated[pc.cluster_id]
                ):
                    updated[pc.cluster_id] = when
        children: Children = []
        for cluster_id in sorted(clusters):
            node = self._dir(
                functools.partial(self._list_cluster, cluster_id), mtime=updated.get(cluster_id)
            )
            node.xattrs = {
                "id": str(cluster_id),
                "kind": "cluster",
                "name": clusters[cluster_id] or "",
            }
            children.append((str(cluster_id), node))
        return children

    async def _list_cluster(self, cluster_id: int) -> Children:
        pointclouds = await self._client.list_pointclouds(
            cluster_id=cluster_id, pointcloud_type="all"
        )
        return self._sub_dirs(pointclouds)

    # -- /records -----------------------------------------------------------------

    async def _list_records(self) -> Children:
        return [(str(rid), self._record_dir(rid)) for rid in sorted(self.known_records)]

    async def _lookup_record(self, name: str) -> Node | None:
        record_id = parse_id(name)
        if record_id is None:
            return None
        try:
            await self._client.list_pointclouds(record_id=record_id, pointcloud_type="uploaded")
        except NotFound:
            return None
        self.known_records.add(record_id)
        return self._record_dir(record_id)

    def _record_dir(self, record_id: int) -> DirNode:
        async def children() -> Children:
            pointclouds = await self._client.list_pointclouds(
                record_id=record_id, pointcloud_type="uploaded"
            )
            return self._sub_dirs(pointclouds)

        node = self._dir(children)
        node.xattrs = {"id": str(record_id), "kind": "record"}
        return node

    # -- a sub pointcloud's directory ----------------------------------------------

    def _sub_dirs(self, pointclouds: Iterable[Pointcloud]) -> Children:
        """One directory per ``sub`` pointcloud, named by its id; groups carry no files
        (their transform goes into each sub's ``transform.json``)."""
        pointclouds = list(pointclouds)
        groups = {pc.id: pc for pc in pointclouds if pc.kind == "group"}
        return [
            (str(pc.id), self._sub_dir(pc, groups.get(pc.parent_id or -1)))
            for pc in sorted((p for p in pointclouds if p.is_sub), key=lambda p: p.id)
        ]

    def _sub_dir(self, pc: Pointcloud, group: Pointcloud | None) -> DirNode:
        async def children() -> Children:
            return await self._sub_files(pc, group)

        node = self._dir(
            children,
            mtime=pc.updated_at or pc.created_at or self._started,
            ctime=pc.created_at or pc.updated_at or self._started,
        )
        node.xattrs = _pointcloud_xattrs(pc)
        return node

    async def _sub_files(self, pc: Pointcloud, group: Pointcloud | None) -> Children:
        has_mesh, has_ply = pc.mesh_uploaded_at is not None, pc.ply_uploaded_at is not None
        if not pc.resources_known:
            kinds = {r.kind for r in await self._client.list_resources(pc.id)}
            has_mesh, has_ply = "mesh" in kinds, "ply" in kinds
        mtime = pc.updated_at or pc.created_at
        ctime = pc.created_at or pc.updated_at
        xattrs = _pointcloud_xattrs(pc)
        [cpc_name] = assign_names([(pc.name, pc.id)], reserved=RESERVED_IN_SUB)
        children: Children = [
            (
                cpc_name,
                FileNode(
                    mtime=mtime,
                    ctime=ctime,
                    xattrs=dict(xattrs, kind="cpc"),
                    source=RemoteFile(
                        f"pointclouds/{pc.id}", f"pointclouds/{pc.id}/download", hint=_iso(mtime)
                    ),
                ),
            ),
        ]
        for present, name, kind, when in (
            (has_mesh, MESH_ZIP, "mesh", pc.mesh_uploaded_at),
            (has_ply, POINTCLOUD_PLY, "ply", pc.ply_uploaded_at),
        ):
            if present:
                children.append(
                    (
                        name,
                        FileNode(
                            mtime=when or mtime,
                            ctime=ctime,
                            xattrs=dict(xattrs, kind=kind),
                            source=RemoteFile(
                                f"pointclouds/{pc.id}/{kind}",
                                f"pointclouds/{pc.id}/resources/{kind}/download",
                                hint=_iso(when or mtime),
                            ),
                        ),
                    )
                )

        if self._views is not None:
            originals = dict(children)
            children += await derived_children(
                self._views, _file(originals.get(MESH_ZIP)), _file(originals.get(POINTCLOUD_PLY))
            )

        async def meta() -> bytes:
            result = await self._client.get_meta(pc.id)
            return (json.dumps(result, indent=2, sort_keys=True) + "\n").encode()

        transform = transform_document(
            pc.id, pc.tm, pc.parent_id, group.tm if group else None, pc.wtm
        )

        async def transform_json() -> bytes:
            return transform

        for name, kind, load in (
            (META_JSON, "meta", meta),
            (TRANSFORM_JSON, "transform", transform_json),
        ):
            node = FileNode(
                mtime=mtime,
                ctime=ctime,
                xattrs=dict(xattrs, kind=kind),
                source=StaticFile(f"pointclouds/{pc.id}/{name}", load),
            )
            children.append((name, node))
        return children


def _file(node: Node | None) -> FileNode | None:
    return node if isinstance(node, FileNode) else None


def _pointcloud_xattrs(pc: Pointcloud) -> dict[str, str]:
    return {
        "id": str(pc.id),
        "kind": pc.kind,
        "name": pc.name,
        "state": pc.state or "",
        "pointcloud_type": pc.pointcloud_type or "",
        "cluster_id": str(pc.cluster_id or ""),
        "created_at": _iso(pc.created_at),
        "updated_at": _iso(pc.updated_at),
        "tm": _matrix_text(pc.tm),
        "wtm": _matrix_text(pc.wtm),
    }
