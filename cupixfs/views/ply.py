"""A PLY file's header, read as far as a LAS view needs it: where the vertices are, and how.

Pure functions over bytes. Supported: binary PLY (little- or big-endian) whose
``vertex`` element has float or double ``x``, ``y``, ``z``, optionally uchar
``red``, ``green``, ``blue``, in any order among other fixed-size properties, and
whose preceding elements (if any) have no list properties (so the vertices start at
a known offset). Anything else raises `NotConvertible` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The longest header looked for: a real PLY's header is a few hundred bytes.
MAX_HEADER = 1 << 20
#: LAS 1.2 counts points in 32 bits.
MAX_POINTS = 0xFFFFFFFF

_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}
_COLOURS = (("red", "green", "blue"), ("diffuse_red", "diffuse_green", "diffuse_blue"))


class NotConvertible(ValueError):
    """This PLY cannot be shown as LAS; the message says why."""


@dataclass(frozen=True)
class PlyLayout:
    """Where a PLY's vertices are and how one is laid out."""

    #: The header, up to and including the ``end_header`` line.
    header: bytes
    count: int
    #: Offset of the first vertex record, and the size of one.
    vertex_start: int
    stride: int
    #: A record's x, y, z (and red, green, blue when present), in the file's byte order.
    dtype: np.dtype
    has_colour: bool

    @property
    def vertex_end(self) -> int:
        return self.vertex_start + self.count * self.stride


def header_end(data: bytes) -> int | None:
    """The offset just past the ``end_header`` line in *data*, or None if not in it yet."""
    if not data.startswith((b"ply\n", b"ply\r\n")):
        raise NotConvertible("not a PLY file")
    for marker in (b"\nend_header\n", b"\nend_header\r\n"):
        found = data.find(marker)
        if found >= 0:
            return found + len(marker)
    return None


@dataclass
class _Element:
    name: str
    count: int
    #: (name, numpy type) of each scalar property; None once a list property is seen.
    properties: list[tuple[str, str]] | None


def parse_header(data: bytes) -> PlyLayout:
    """The layout of the PLY whose first bytes are *data* (they must hold the whole header)."""
    end = header_end(data)
    if end is None:
        raise NotConvertible("no end_header line in the first bytes of the file")
    try:
        lines = data[:end].decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise NotConvertible("the header is not ASCII text") from None
    order = ""
    elements: list[_Element] = []
    for line in lines[1:-1]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) >= 2:
            if words[1] == "ascii":
                raise NotConvertible("an ASCII PLY (only binary ones are converted)")
            if words[1] not in ("binary_little_endian", "binary_big_endian"):
                raise NotConvertible(f"unknown PLY format {words[1]!r}")
            order = "<" if words[1] == "binary_little_endian" else ">"
        elif words[0] == "element" and len(words) == 3:
            try:
                count = int(words[2])
            except ValueError:
                raise NotConvertible(f"a bad element line: {line!r}") from None
            if count < 0:
                raise NotConvertible(f"a bad element line: {line!r}")
            elements.append(_Element(words[1], count, []))
        elif words[0] == "property" and elements:
            element = elements[-1]
            if len(words) >= 2 and words[1] == "list":
                element.properties = None
            elif len(words) == 3 and words[1] in _TYPES:
                if element.properties is not None:
                    element.properties.append((words[2], _TYPES[words[1]]))
            else:
                raise NotConvertible(f"a bad property line: {line!r}")
        else:
            raise NotConvertible(f"an unknown header line: {line!r}")
    if not order:
        raise NotConvertible("no format line")
    start = end
    for element in elements:
        if element.properties is None:
            if element.name == "vertex":
                raise NotConvertible("its vertices have a list property")
            raise NotConvertible(f"a {element.name!r} element with lists comes before the vertices")
        stride = sum(np.dtype(kind).itemsize for _, kind in element.properties)
        if element.name == "vertex":
            return _vertex_layout(data[:end], element, order, start, stride)
        start += element.count * stride
    raise NotConvertible("no vertex element")


def _vertex_layout(
    header: bytes, element: _Element, order: str, start: int, stride: int
) -> PlyLayout:
    assert element.properties is not None
    offsets: dict[str, tuple[int, str]] = {}
    position = 0
    for name, kind in element.properties:
        offsets.setdefault(name, (position, kind))
        position += np.dtype(kind).itemsize
    for axis in "xyz":
        if axis not in offsets:
            raise NotConvertible(f"its vertices have no {axis}")
        if offsets[axis][1] not in ("f4", "f8"):
            raise NotConvertible(f"its vertices' {axis} is not float or double")
    if element.count > MAX_POINTS:
        raise NotConvertible(f"{element.count} points: more than LAS 1.2 can count")
    names, formats, places = ["x", "y", "z"], [], []
    for axis in "xyz":
        places.append(offsets[axis][0])
        formats.append(order + offsets[axis][1])
    colour = next((c for c in _COLOURS if all(offsets.get(n, (0, ""))[1] == "u1" for n in c)), None)
    if colour is not None:
        names += ["red", "green", "blue"]
        for name in colour:
            places.append(offsets[name][0])
            formats.append("u1")
    dtype = np.dtype({"names": names, "formats": formats, "offsets": places, "itemsize": stride})
    return PlyLayout(header, element.count, start, stride, dtype, colour is not None)
