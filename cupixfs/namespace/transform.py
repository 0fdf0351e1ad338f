"""``transform.json``: where a sub pointcloud sits in the world, stated unambiguously.

The API gives each sub its own ``tm`` (sub -> cluster) and each group (the
cluster) its ``tm`` (cluster -> world); "the final tm is calculated by
combining these two". Matrices are 16 numbers in **column-major** order, as
three.js ``Matrix4.elements``: element ``[col * 4 + row]``, translation in
elements 12, 13, 14. The world transform is ``group_tm x sub_tm`` -- a point
is moved by the sub's tm first, then by the group's -- which is what the API
reports as the sub's ``wtm``.
"""

from __future__ import annotations

import json

Matrix = tuple[float, ...]

CONVENTION = (
    "4x4 matrices as 16 numbers in column-major order (three.js Matrix4.elements): "
    "element [col*4 + row], translation in elements 12, 13, 14. "
    "world_tm = group_tm x sub_tm: a point p (column vector) maps to group_tm * (sub_tm * p)."
)


def compose(a: Matrix, b: Matrix) -> Matrix:
    """``a x b`` for column-major 4x4 matrices (``b`` is applied first)."""
    return tuple(
        sum(a[k * 4 + row] * b[col * 4 + k] for k in range(4))
        for col in range(4)
        for row in range(4)
    )


def _clean(matrix: Matrix) -> list[float]:
    return [round(v, 9) + 0.0 for v in matrix]


def transform_document(
    sub_id: int,
    sub_tm: Matrix | None,
    group_id: int | None,
    group_tm: Matrix | None,
    api_wtm: Matrix | None,
) -> bytes:
    """The JSON written as ``transform.json`` in a sub's directory."""
    world = compose(group_tm, sub_tm) if sub_tm is not None and group_tm is not None else None
    body = {
        "convention": CONVENTION,
        "sub_id": sub_id,
        "sub_tm": _clean(sub_tm) if sub_tm is not None else None,
        "group_id": group_id,
        "group_tm": _clean(group_tm) if group_tm is not None else None,
        "world_tm": _clean(world) if world is not None else None,
        "api_wtm": _clean(api_wtm) if api_wtm is not None else None,
    }
    return (json.dumps(body, indent=2) + "\n").encode()
