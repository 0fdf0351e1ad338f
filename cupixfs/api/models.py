"""Typed records parsed once from the API's JSON.

Nothing outside `cupixfs.api` touches raw response dicts: every field we rely
on is checked here, so a malformed item becomes a `ProtocolError` naming the
endpoint instead of a `KeyError` deep inside a FUSE handler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cupixfs.core.errors import ProtocolError

Json = dict[str, Any]


def parse_time(value: object) -> datetime | None:
    """Parse the API's ISO-8601 timestamps (``2023-10-30T02:35:05.544Z``)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _ref_id(value: object) -> int | None:
    """The id of a nested reference like ``{"id": 602, "type": "Record"}``."""
    if isinstance(value, dict):
        ref = value.get("id")
        if isinstance(ref, int) and not isinstance(ref, bool):
            return ref
        if isinstance(ref, str) and ref.isdigit():
            return int(ref)
    return None


def _matrix(value: object) -> tuple[float, ...] | None:
    if (
        isinstance(value, list)
        and len(value) == 16
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
    ):
        return tuple(float(x) for x in value)
    return None


def _item_id(item: Json) -> int:
    attrs = item.get("attributes")
    raw = attrs.get("id") if isinstance(attrs, dict) else None
    if raw is None:
        raw = item.get("id")
    if isinstance(raw, bool):
        raise ProtocolError("item id is a boolean")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.isdigit():
        return int(raw)
    raise ProtocolError(f"item has no numeric id: {raw!r}")


def _attrs(item: object) -> Json:
    if not isinstance(item, dict) or not isinstance(item.get("attributes"), dict):
        raise ProtocolError("item has no attributes object")
    return item["attributes"]


def _name(attrs: Json) -> str:
    name = attrs.get("name")
    if not isinstance(name, str):
        raise ProtocolError(f"item has no name string: {type(name).__name__}")
    return name


@dataclass(frozen=True)
class Video:
    """One uploaded 360° video of a capture."""

    id: int
    name: str
    state: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_item(cls, item: object) -> Video:
        attrs = _attrs(item)
        assert isinstance(item, dict)
        return cls(
            id=_item_id(item),
            name=_name(attrs),
            state=attrs.get("state") if isinstance(attrs.get("state"), str) else None,
            created_at=parse_time(attrs.get("created_at")),
            updated_at=parse_time(attrs.get("updated_at")),
        )


@dataclass(frozen=True)
class Pointcloud:
    """A pointcloud: a ``group`` (a cluster's transform) or a ``sub`` (has files)."""

    id: int
    name: str
    kind: str
    pointcloud_type: str | None = None
    state: str | None = None
    cluster_id: int | None = None
    cluster_name: str | None = None
    parent_id: int | None = None
    record_id: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    mesh_uploaded_at: datetime | None = None
    ply_uploaded_at: datetime | None = None
    tm: tuple[float, ...] | None = None
    wtm: tuple[float, ...] | None = None
    #: Whether the item said anything about mesh/ply (else ask the resources list).
    resources_known: bool = True
    meta: Json = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_sub(self) -> bool:
        return self.kind == "sub"

    @classmethod
    def from_item(cls, item: object) -> Pointcloud:
        attrs = _attrs(item)
        assert isinstance(item, dict)
        kind = attrs.get("kind")
        if not isinstance(kind, str):
            raise ProtocolError("pointcloud has no kind")
        cluster = attrs.get("cluster")
        raw_meta = attrs.get("meta")
        meta: Json = raw_meta if isinstance(raw_meta, dict) else {}
        raw_prop = meta.get("prop")
        prop: Json = raw_prop if isinstance(raw_prop, dict) else {}
        return cls(
            id=_item_id(item),
            name=_name(attrs),
            kind=kind,
            pointcloud_type=_str_or_none(attrs.get("pointcloud_type")),
            state=_str_or_none(attrs.get("state")),
            cluster_id=_ref_id(cluster),
            cluster_name=_str_or_none(cluster.get("name")) if isinstance(cluster, dict) else None,
            parent_id=_ref_id(attrs.get("parent")),
            record_id=_ref_id(attrs.get("record")),
            created_at=parse_time(attrs.get("created_at")),
            updated_at=parse_time(attrs.get("updated_at")),
            mesh_uploaded_at=parse_time(attrs.get("mesh_uploaded_at")),
            ply_uploaded_at=parse_time(attrs.get("ply_uploaded_at")),
            tm=_matrix(prop.get("tm")),
            wtm=_matrix(prop.get("wtm")),
            resources_known="mesh_uploaded_at" in attrs or "ply_uploaded_at" in attrs,
            meta=meta,
        )


@dataclass(frozen=True)
class Resource:
    """A file attached to a sub pointcloud (``mesh``, ``ply``, ``plane`` or the cpc)."""

    id: int
    name: str
    kind: str | None

    @classmethod
    def from_item(cls, item: object) -> Resource:
        attrs = _attrs(item)
        assert isinstance(item, dict)
        return cls(id=_item_id(item), name=_name(attrs), kind=_str_or_none(attrs.get("kind")))


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
