"""What each directory of the tree contains, in terms of API calls.

    /captures/<capture_id>/videos/<video name>
    /captures/<capture_id>/pointclouds/<sub_id>/...
    /clusters/<cluster_id>/<sub_id>/{<name>.cpc, mesh.zip, pointcloud.ply, meta.json}
    /clusters/<cluster_id>/<sub_id>/{mesh/..., pointcloud.las}     (derived: see derived.py)
    /projects/<project>/<level>/<date> <capture name> -> ../../../captures/<capture_id>
    /projects/<project>/<date> <capture name>         -> ../../captures/<capture_id>
    /records/<record_id>/<sub_id>/...

This module only builds nodes; caching, inode numbers and TTLs live in
`cupixfs.namespace.tree`. A capture is shown once, under ``/captures``; the
project tree links to it, so every file keeps one path and one cache entry.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Generic, TypeVar

import trio

from cupixfs.api.client import CupixClient
from cupixfs.api.models import Capture, Facility, Level, Pointcloud, Resource, Video
from cupixfs.core.errors import AuthError, CupixError, NotFound, ProtocolError, unwrap
from cupixfs.data.sources import RemoteFile, StaticFile
from cupixfs.namespace.derived import MESH_DIR, POINTCLOUD_LAS, derived_children
from cupixfs.namespace.names import assign_names
from cupixfs.namespace.nodes import Children, DirNode, FileNode, LinkNode, Node
from cupixfs.namespace.transform import transform_document
from cupixfs.views import DerivedViews

log = logging.getLogger(__name__)
T = TypeVar("T")

META_JSON = "meta.json"
MESH_ZIP = "mesh.zip"
POINTCLOUD_PLY = "pointcloud.ply"
TRANSFORM_JSON = "transform.json"
RESERVED_IN_SUB = (META_JSON, MESH_ZIP, POINTCLOUD_PLY, TRANSFORM_JSON, MESH_DIR, POINTCLOUD_LAS)
CONTROL_DIR = ".cupixfs"
#: How long one answer of a call shared by several listings (every capture, a project's
#: levels) serves them all, as a fraction of the listing TTL and at most some seconds:
#: ``ls -R /projects`` asks ``GET /captures`` once, and a change shows within the TTL.
SHARED_FRACTION = 0.25
SHARED_AT_MOST = 5.0


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


def capture_entry_name(capture: Capture) -> str:
    """``<date> <capture name>``, the date being ``captured_at`` (else ``created_at``) in UTC."""
    when = capture.captured_at or capture.created_at
    return f"{when.astimezone(UTC):%Y-%m-%d} {capture.name}" if when else capture.name


class _Shared(Generic[T]):
    """Answers of one kind of API call, each shared by every listing that needs it for a
    short while (and by concurrent askers: one call in flight per key)."""

    def __init__(self, keep: float) -> None:
        self._keep = keep
        self._answers: dict[str, tuple[float, T]] = {}
        self._loading: dict[str, trio.Event] = {}

    async def get(self, key: str, fetch: Callable[[], Awaitable[T]]) -> T:
        while True:
            answer = self._answers.get(key)
            if answer is not None and answer[0] > trio.current_time():
                return answer[1]
            loading = self._loading.get(key)
            if loading is None:
                break
            await loading.wait()
        event = self._loading[key] = trio.Event()
        try:
            value = await fetch()
            now = trio.current_time()
            for old in [k for k, (expires, _) in self._answers.items() if expires <= now]:
                del self._answers[old]
            self._answers[key] = (now + self._keep, value)
            return value
        finally:
            del self._loading[key]
            event.set()


class _LazyXattrs(Mapping[str, str]):
    """Extended attributes read from an entry's record when asked (they are asked rarely,
    and a copy per file would cost more than the rest of the entry)."""

    __slots__ = ()

    def _all(self) -> dict[str, str]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> str:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


class _PointcloudXattrs(_LazyXattrs):
    """A pointcloud entry's extended attributes."""

    __slots__ = ("_kind", "_pc")

    def __init__(self, pc: Pointcloud, kind: str) -> None:
        self._pc = pc
        self._kind = kind

    def _all(self) -> dict[str, str]:
        pc = self._pc
        return {
            "id": str(pc.id),
            "kind": self._kind,
            "name": pc.name,
            "state": pc.state or "",
            "pointcloud_type": pc.pointcloud_type or "",
            "cluster_id": str(pc.cluster_id or ""),
            "created_at": _iso(pc.created_at),
            "updated_at": _iso(pc.updated_at),
            "tm": _matrix_text(pc.tm),
            "wtm": _matrix_text(pc.wtm),
        }


class _VideoXattrs(_LazyXattrs):
    """A video's extended attributes."""

    __slots__ = ("_video",)

    def __init__(self, video: Video) -> None:
        self._video = video

    def _all(self) -> dict[str, str]:
        video = self._video
        return {
            "id": str(video.id),
            "kind": "video",
            "name": video.name,
            "state": video.state or "",
            "created_at": _iso(video.created_at),
            "updated_at": _iso(video.updated_at),
        }


class Tree:
    """Builds the directory nodes of a mount from one `CupixClient`."""

    def __init__(
        self,
        client: CupixClient,
        started: datetime,
        status: Callable[[], Awaitable[bytes]] | None = None,
        views: DerivedViews | None = None,
        listing_ttl: float = 60.0,
    ) -> None:
        self._client = client
        #: Where mesh/ and pointcloud.las come from; None shows neither.
        self._views = views
        self._started = started
        self._status = status
        #: Ids shown in /captures and /records besides what the API lists: pinned on the
        #: command line, or looked up.
        self.known_captures: set[int] = set()
        self.known_records: set[int] = set()
        keep = min(listing_ttl * SHARED_FRACTION, SHARED_AT_MOST)
        self._captures: _Shared[dict[int, Capture] | None] = _Shared(keep)
        self._facilities: _Shared[list[Facility] | None] = _Shared(keep)
        self._levels: _Shared[list[Level] | None] = _Shared(keep)
        #: Endpoints refused right now, with why (logged once when they become so).
        self._refused: dict[str, str] = {}
        #: Whether ``GET /captures`` has answered during this mount.
        self._captures_answered = False

    # -- top level ----------------------------------------------------------------

    def root(self) -> DirNode:
        async def children() -> Children:
            return [
                ("captures", self._dir(self._list_captures, self._lookup_capture)),
                ("clusters", self._dir(self._list_clusters)),
                ("projects", self._dir(self._list_projects)),
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

    # -- calls that may be refused ---------------------------------------------------

    async def _optional(self, endpoint: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """*call*, or None when the API refuses *endpoint* (401/403), lacks it (404, or an
        answer of the wrong shape), or (offline) never answered it: the feature that
        needs it is then off, said once in the log, and back when the API answers again."""
        try:
            value = await call()
        except (AuthError, NotFound, ProtocolError) as exc:
            reason = str(exc)
            if self._refused.get(endpoint) != reason:
                self._refused[endpoint] = reason
                log.warning(
                    "%s is not available (%s): %s", endpoint, reason, self._what_is_off(endpoint)
                )
            return None
        if self._refused.pop(endpoint, None) is not None:
            log.info("%s answers again; its folders are back", endpoint)
        return value

    @staticmethod
    def _what_is_off(endpoint: str) -> str:
        if endpoint == "GET /captures":
            return (
                "/projects stays empty, and /captures shows only the ids given with --capture "
                "or looked up by path"
            )
        return "/projects stays empty"

    async def _all_captures(self) -> dict[int, Capture] | None:
        """Every capture the token can see, by id (None when ``GET /captures`` is refused)."""

        async def fetch() -> dict[int, Capture] | None:
            captures = await self._optional("GET /captures", self._client.list_captures)
            if captures is None:
                return None
            self._captures_answered = True
            return {c.id: c for c in captures}

        return await self._captures.get("", fetch)

    async def _all_facilities(self) -> list[Facility] | None:
        return await self._facilities.get(
            "", lambda: self._optional("GET /facilities", self._client.list_facilities)
        )

    async def _levels_of(self, facility: Facility) -> list[Level] | None:
        return await self._levels.get(
            facility.key,
            lambda: self._optional(
                "GET /levels", functools.partial(self._client.list_levels, facility.key)
            ),
        )

    # -- /captures ----------------------------------------------------------------

    async def _list_captures(self) -> Children:
        captures = await self._all_captures() or {}
        ids = sorted(self.known_captures | captures.keys())
        return [(str(cid), self._capture_dir(cid, captures.get(cid))) for cid in ids]

    async def _lookup_capture(self, name: str) -> Node | None:
        """``/captures/<id>`` for an id not listed (a new capture, or one shared later).

        ``GET /captures/{id}`` says whether it exists. Where that call is refused or
        missing, a capture with no videos and no pointclouds is taken as unknown: an
        empty folder would be a lie.
        """
        capture_id = parse_id(name)
        if capture_id is None:
            raise NotFound(f"{name!r} is not a capture id")
        capture: Capture | None = None
        if "GET /captures/{id}" not in self._refused:
            try:
                capture = await self._client.get_capture(capture_id)
            except NotFound:
                if self._captures_answered and "GET /captures" not in self._refused:
                    raise  # the API lists captures, so this is its plain answer: no such id
                # Unknown id, or no such endpoint here: the capture's contents tell.
            except (AuthError, ProtocolError) as exc:
                self._refused["GET /captures/{id}"] = str(exc)
                log.warning("GET /captures/{id} is not available (%s): looking in lists", exc)
        if capture is None and not await self._capture_has_content(capture_id):
            raise NotFound(f"capture {capture_id}: no videos and no pointclouds")
        self.known_captures.add(capture_id)
        return self._capture_dir(capture_id, capture)

    async def _capture_has_content(self, capture_id: int) -> bool:
        """Whether the API lists any video or pointcloud for *capture_id* (404: none)."""
        try:
            if await self._client.list_videos(capture_id):
                return True
            return bool(
                await self._client.list_pointclouds(
                    capture_id=capture_id, pointcloud_type="3d_reconstructed"
                )
            )
        except NotFound:
            return False

    def _capture_dir(self, capture_id: int, capture: Capture | None) -> DirNode:
        async def children() -> Children:
            return [
                ("videos", self._dir(functools.partial(self._list_videos, capture_id))),
                (
                    "pointclouds",
                    self._dir(functools.partial(self._list_capture_pointclouds, capture_id)),
                ),
            ]

        node = self._dir(
            children,
            mtime=capture.updated_at or capture.created_at if capture else None,
            ctime=capture.created_at if capture else None,
        )
        node.dynamic = False
        node.xattrs = {"id": str(capture_id), "kind": "capture"}
        if capture is not None:
            node.xattrs.update(
                name=capture.name,
                captured_at=_iso(capture.captured_at),
                project_id=str(capture.facility_id or ""),
                level_id=str(capture.level_id or ""),
                record_id=str(capture.record_id or ""),
            )
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
                xattrs=_VideoXattrs(video),
            )
            children.append((name, node))
        return children

    async def _list_capture_pointclouds(self, capture_id: int) -> Children:
        pointclouds = await self._client.list_pointclouds(
            capture_id=capture_id, pointcloud_type="3d_reconstructed"
        )
        return self._sub_dirs(pointclouds)

    # -- /projects ----------------------------------------------------------------

    async def _list_projects(self) -> Children:
        """One folder per project, or none while projects, levels or captures are refused."""
        facilities: list[Facility] | None = None
        captures: dict[int, Capture] | None = None

        async def get_facilities() -> None:
            nonlocal facilities
            facilities = await self._all_facilities()

        async def get_captures() -> None:
            nonlocal captures
            captures = await self._all_captures()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(get_facilities)
                nursery.start_soon(get_captures)
        except BaseExceptionGroup as group:
            raise unwrap(group) from None
        if facilities is None or captures is None:
            return []
        if facilities and await self._levels_of(facilities[0]) is None:
            return []  # GET /levels is refused: no project can be shown as it is
        names = assign_names([(f.name, f.id) for f in facilities])
        return [(name, self._project_dir(f)) for name, f in zip(names, facilities, strict=True)]

    def _project_dir(self, facility: Facility) -> DirNode:
        node = self._dir(
            functools.partial(self._list_project, facility),
            mtime=facility.updated_at or facility.created_at,
            ctime=facility.created_at,
        )
        node.xattrs = {
            "id": str(facility.id),
            "kind": "project",
            "key": facility.key,
            "name": facility.name,
        }
        return node

    async def _list_project(self, facility: Facility) -> Children:
        """The project's levels, and the captures placed in none of them (a capture whose
        level is not among the project's is shown here too, never lost)."""
        levels = await self._levels_of(facility) or []
        captures = await self._all_captures() or {}
        level_names = assign_names([(lv.name, lv.id) for lv in levels])
        children: Children = [
            (name, self._level_dir(facility, level))
            for name, level in zip(level_names, levels, strict=True)
        ]
        known = {lv.id for lv in levels}
        loose = [
            c for c in captures.values() if c.facility_id == facility.id and c.level_id not in known
        ]
        children += self._capture_links(loose, "../..", reserved=level_names)
        return children

    def _level_dir(self, facility: Facility, level: Level) -> DirNode:
        node = self._dir(
            functools.partial(self._list_level, facility.id, level.id),
            mtime=level.updated_at or level.created_at,
            ctime=level.created_at,
        )
        node.xattrs = {
            "id": str(level.id),
            "kind": "level",
            "name": level.name,
            "project_id": str(facility.id),
        }
        return node

    async def _list_level(self, facility_id: int, level_id: int) -> Children:
        captures = await self._all_captures() or {}
        placed = [
            c for c in captures.values() if c.facility_id == facility_id and c.level_id == level_id
        ]
        return self._capture_links(placed, "../../..")

    def _capture_links(
        self, captures: Iterable[Capture], up: str, reserved: Iterable[str] = ()
    ) -> Children:
        """``<date> <name>`` links to ``<up>/captures/<id>``, in name order."""
        ordered = sorted(captures, key=lambda c: (capture_entry_name(c), c.id))
        names = assign_names([(capture_entry_name(c), c.id) for c in ordered], reserved=reserved)
        return [
            (
                name,
                LinkNode(
                    mtime=c.updated_at or c.created_at,
                    ctime=c.created_at or c.updated_at,
                    target=f"{up}/captures/{c.id}",
                ),
            )
            for name, c in zip(names, ordered, strict=True)
        ]

    # -- /clusters ----------------------------------------------------------------

    async def _list_clusters(self) -> Children:
        clusters: dict[int, str | None] = {}
        updated: dict[int, datetime] = {}
        for pc in await self._client.list_cluster_members():
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
        """``/records/<id>``: a record the API answers with no uploaded scans (or 404) is
        unknown, not an empty folder."""
        record_id = parse_id(name)
        if record_id is None:
            raise NotFound(f"{name!r} is not a record id")
        scans = await self._client.list_pointclouds(record_id=record_id, pointcloud_type="uploaded")
        if not scans:
            raise NotFound(f"record {record_id}: no uploaded pointclouds")
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
        node = self._dir(
            _Sub(self, pc, group).files,
            mtime=pc.updated_at or pc.created_at or self._started,
            ctime=pc.created_at or pc.updated_at or self._started,
        )
        node.xattrs = _PointcloudXattrs(pc, pc.kind)
        return node

    async def _resources(self, pc: Pointcloud) -> dict[str | None, Resource] | None:
        """The sub's resources by kind when the tree needs them: to know whether mesh and
        ply exist (when the item did not say), or for their sizes. None when a list asked
        only for sizes cannot be had (the files are then probed, as when no size is stated).
        """
        if not pc.resources_known:
            return {r.kind: r for r in await self._client.list_resources(pc.id)}
        if pc.mesh_uploaded_at is None and pc.ply_uploaded_at is None:
            return None
        try:
            return {r.kind: r for r in await self._client.list_resources(pc.id)}
        except AuthError:
            raise
        except CupixError as exc:
            log.debug("pointcloud %d: no resource sizes (%s)", pc.id, exc)
            return None

    async def _sub_files(self, sub: _Sub) -> Children:
        pc = sub.pc
        resources = await self._resources(pc)
        if pc.resources_known:
            has_mesh, has_ply = pc.mesh_uploaded_at is not None, pc.ply_uploaded_at is not None
        else:
            assert resources is not None
            has_mesh, has_ply = "mesh" in resources, "ply" in resources
        mtime = pc.updated_at or pc.created_at
        ctime = pc.created_at or pc.updated_at
        [cpc_name] = assign_names([(pc.name, pc.id)], reserved=RESERVED_IN_SUB)
        children: Children = [
            (
                cpc_name,
                FileNode(
                    mtime=mtime,
                    ctime=ctime,
                    xattrs=_PointcloudXattrs(pc, "cpc"),
                    source=RemoteFile(
                        f"pointclouds/{pc.id}",
                        f"pointclouds/{pc.id}/download",
                        hint=_iso(mtime),
                        size=pc.filesize,
                    ),
                ),
            ),
        ]
        for present, name, kind, when in (
            (has_mesh, MESH_ZIP, "mesh", pc.mesh_uploaded_at),
            (has_ply, POINTCLOUD_PLY, "ply", pc.ply_uploaded_at),
        ):
            if present:
                resource = resources.get(kind) if resources is not None else None
                children.append(
                    (
                        name,
                        FileNode(
                            mtime=when or mtime,
                            ctime=ctime,
                            xattrs=_PointcloudXattrs(pc, kind),
                            source=RemoteFile(
                                f"pointclouds/{pc.id}/{kind}",
                                f"pointclouds/{pc.id}/resources/{kind}/download",
                                hint=_iso(when or mtime),
                                size=resource.size if resource is not None else None,
                            ),
                        ),
                    )
                )

        if self._views is not None:
            originals = dict(children)
            children += await derived_children(
                self._views, _file(originals.get(MESH_ZIP)), _file(originals.get(POINTCLOUD_PLY))
            )

        for name, kind, load in (
            (META_JSON, "meta", sub.meta),
            (TRANSFORM_JSON, "transform", sub.transform),
        ):
            node = FileNode(
                mtime=mtime,
                ctime=ctime,
                xattrs=_PointcloudXattrs(pc, kind),
                source=StaticFile(f"pointclouds/{pc.id}/{name}", load),
            )
            children.append((name, node))
        return children

    async def _meta_document(self, pointcloud_id: int) -> bytes:
        result = await self._client.get_meta(pointcloud_id)
        return (json.dumps(result, indent=2, sort_keys=True) + "\n").encode()


def _file(node: Node | None) -> FileNode | None:
    return node if isinstance(node, FileNode) else None


class _Sub:
    """A sub pointcloud's directory: what lists it, and what renders its documents (one
    small object per sub, where closures or partials would cost several)."""

    __slots__ = ("_tree", "group", "pc")

    def __init__(self, tree: Tree, pc: Pointcloud, group: Pointcloud | None) -> None:
        self._tree = tree
        self.pc = pc
        self.group = group

    async def files(self) -> Children:
        return await self._tree._sub_files(self)

    async def meta(self) -> bytes:
        return await self._tree._meta_document(self.pc.id)

    async def transform(self) -> bytes:
        """``transform.json``, built when read rather than kept for every sub listed."""
        pc, group = self.pc, self.group
        return transform_document(pc.id, pc.tm, pc.parent_id, group.tm if group else None, pc.wtm)
