"""Typed records parsed once from the API's JSON.

Nothing outside `cupixfs.api` touches raw response dicts: every field we rely
on is checked here, so a malformed item becomes a `ProtocolError` naming the
endpoint instead of a `KeyError` deep inside a FUSE handler.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
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


def _positive_size(value: object) -> int | None:
    """A size the API states (``filesize``, ``size``): a positive integer, else None.

    Missing, null, zero, negative, fractional or textual values all mean "not stated"
    (the file is then probed), never a size to show.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _word(value: object) -> str | None:
    """A short string many items repeat (``done``, ``sub``, a cluster's name): one shared
    copy instead of one per item parsed."""
    return sys.intern(value) if isinstance(value, str) and len(value) <= 64 else None


#: Matrix elements met in nearly every transform, shared instead of one float object each.
_COMMON_FLOATS: dict[float, float] = {0.0: 0.0, 1.0: 1.0, -1.0: -1.0}


def _element(x: float) -> float:
    shared = _COMMON_FLOATS.get(x)  # 1 and 1.0 are the same key
    return float(x) if shared is None else shared


IDENTITY: tuple[float, ...] = tuple(float(i % 5 == 0) for i in range(16))


def _matrix(value: object) -> tuple[float, ...] | None:
    if (
        isinstance(value, list)
        and len(value) == 16
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
    ):
        matrix = tuple(_element(x) for x in value)
        return IDENTITY if matrix == IDENTITY else matrix  # the most common one, shared
    return None


@dataclass(frozen=True, slots=True)
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
            state=_word(attrs.get("state")),
            created_at=parse_time(attrs.get("created_at")),
            updated_at=parse_time(attrs.get("updated_at")),
        )


@dataclass(frozen=True, slots=True)
class Pointcloud:
    """A pointcloud: a ``group`` (a cluster's transform) or a ``sub`` (has files).

    Only what the tree shows is kept: the ``meta`` document itself is not (its
    ``tm``/``wtm`` are; ``meta.json`` asks ``/pointclouds/{id}/meta`` when read).
    """

    id: int
    name: str
    kind: str
    pointcloud_type: str | None = None
    state: str | None = None
    cluster_id: int | None = None
    cluster_name: str | None = None
    parent_id: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    mesh_uploaded_at: datetime | None = None
    ply_uploaded_at: datetime | None = None
    tm: tuple[float, ...] | None = None
    wtm: tuple[float, ...] | None = None
    #: Whether the item said anything about mesh/ply (else ask the resources list).
    resources_known: bool = True
    #: The cpc's size as the API states it (``filesize``), or None where it states none.
    filesize: int | None = None

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
        meta = attrs.get("meta")
        prop = meta.get("prop") if isinstance(meta, dict) else None
        if not isinstance(prop, dict):
            prop = {}
        return cls(
            id=_item_id(item),
            name=_name(attrs),
            kind=sys.intern(kind),
            pointcloud_type=_word(attrs.get("pointcloud_type")),
            state=_word(attrs.get("state")),
            cluster_id=_ref_id(cluster),
            cluster_name=_word(cluster.get("name")) if isinstance(cluster, dict) else None,
            parent_id=_ref_id(attrs.get("parent")),
            created_at=parse_time(attrs.get("created_at")),
            updated_at=parse_time(attrs.get("updated_at")),
            mesh_uploaded_at=parse_time(attrs.get("mesh_uploaded_at")),
            ply_uploaded_at=parse_time(attrs.get("ply_uploaded_at")),
            tm=_matrix(prop.get("tm")),
            wtm=_matrix(prop.get("wtm")),
            resources_known="mesh_uploaded_at" in attrs or "ply_uploaded_at" in attrs,
            filesize=_positive_size(attrs.get("filesize")),
        )


@dataclass(frozen=True, slots=True)
class ClusterMember:
    """What ``/clusters`` needs of one pointcloud: which cluster it is in, and when."""

    id: int
    cluster_id: int | None
    cluster_name: str | None
    created_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def from_item(cls, item: object) -> ClusterMember:
        attrs = _attrs(item)
        assert isinstance(item, dict)
        cluster = attrs.get("cluster")
        return cls(
            id=_item_id(item),
            cluster_id=_ref_id(cluster),
            cluster_name=_word(cluster.get("name")) if isinstance(cluster, dict) else None,
            created_at=parse_time(attrs.get("created_at")),
            updated_at=parse_time(attrs.get("updated_at")),
        )


@dataclass(frozen=True, slots=True)
class Resource:
    """A file attached to a sub pointcloud (``mesh``, ``ply``, ``plane`` or the cpc)."""

    id: int
    name: str
    kind: str | None
    #: Its size as the API states it, or None where it states none.
    size: int | None = None

    @classmethod
    def from_item(cls, item: object) -> Resource:
        attrs = _attrs(item)
        assert isinstance(item, dict)
        return cls(
            id=_item_id(item),
            name=_name(attrs),
            kind=_word(attrs.get("kind")),
            size=_positive_size(attrs.get("size")),
        )


@dataclass(frozen=True, slots=True)
class Capture:
    """A capture (an "area" walked on one visit). Its project and level come as bare ids."""

    id: int
    name: str
    facility_id: int | None = None
    level_id: int | None = None
    record_id: int | None = None
    state: str | None = None
    captured_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_item(cls, item: object) -> Capture:
        attrs = _attrs(item)
        assert isinstance(item, dict)
        capture_id = _item_id(item)
        name = attrs.get("name")
        return cls(
            id=capture_id,
            name=name if isinstance(name, str) and name else f"capture {capture_id}",
            facility_id=_ref_id(attrs.get("facility")),
            level_id=_ref_id(attrs.get("level")),
            record_id=_ref_id(attrs.get("record")),
            state=_word(attrs.get("state")),
            captured_at=parse_time(attrs.get("captured_at")),
            created_at=parse_time(attrs.get("created_at")),
            updated_at=parse_time(attrs.get("updated_at")),
        )


@dataclass(frozen=True, slots=True)
class Facility:
    """A project ("facility" on the server). *key* names it in ``/levels?facility_key=``."""

    id: int
    key: str
    name: str
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_item(cls, item: object) -> Facility:
        attrs = _attrs(item)
        assert isinstance(item, dict)
        key = attrs.get("key")
        if not isinstance(key, str) or not key:
            raise ProtocolError("facility has no key")
        return cls(
            id=_item_id(item),
            key=key,
            name=_name(attrs),
            created_at=parse_time(attrs.get("created_at")),
            updated_at=parse_time(attrs.get("updated_at")),
        )


@dataclass(frozen=True, slots=True)
class Level:
    """A level (floor) of a project."""

    id: int
    name: str
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_item(cls, item: object) -> Level:
        attrs = _attrs(item)
        assert isinstance(item, dict)
        return cls(
            id=_item_id(item),
            name=_name(attrs),
            created_at=parse_time(attrs.get("created_at")),
            updated_at=parse_time(attrs.get("updated_at")),
        )


def error_message(body: object) -> str | None:
    """The human sentence of an API error body (``ErrorResponse``), if it has one.

    The vendor's shape is ``{"result": {"code", "type", "reason", "message"}}``; a bare
    ``{"message": ...}`` or ``{"error": ...}`` is accepted too. Control characters are
    dropped and the text is cut short, since it goes into one log or error line.
    """
    candidates: list[object] = []
    if isinstance(body, dict):
        result = body.get("result")
        if isinstance(result, dict):
            candidates += [result.get("message"), result.get("reason")]
        candidates += [body.get("message"), body.get("error")]
    for value in candidates:
        if isinstance(value, str) and value.strip():
            text = "".join(ch if ch.isprintable() else " " for ch in value).strip()
            return text if len(text) <= 200 else text[:199] + "…"
    return None
