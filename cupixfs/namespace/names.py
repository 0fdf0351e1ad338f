"""Turn names from the API into safe, unique directory entries.

The API is not our filesystem: a video may be called ``a/b.insv``,
``../../etc/passwd``, contain a NUL or be 300 bytes long, and two videos may
share a name. Every name shown by the mount goes through `assign_names`, which
guarantees a valid POSIX name that is unique in its directory and stable
across listings (duplicates are told apart by the item's id, not by order).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

NAME_MAX = 255  # bytes, as on ext4 and in the kernel's FUSE limits
_REPLACEMENT = "_"


def _truncate_utf8(text: str, limit: int) -> str:
    """The longest prefix of *text* whose UTF-8 encoding fits in *limit* bytes."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", "ignore")


def _split_ext(name: str) -> tuple[str, str]:
    """Split a short extension (``.insv``, ``.zip``) off so truncation keeps it."""
    dot = name.rfind(".")
    if dot > 0 and len(name) - dot <= 16:
        return name[:dot], name[dot:]
    return name, ""


def fit(stem: str, ext: str, suffix: str = "", limit: int = NAME_MAX) -> str:
    """``stem + suffix + ext``, shortening only the stem so the result fits *limit* bytes.

    The suffix (a disambiguating ``~id``) and the extension always survive whole.
    """
    room = limit - len(ext.encode("utf-8")) - len(suffix.encode("utf-8"))
    return _truncate_utf8(stem, max(room, 1)) + suffix + ext


def safe_name(raw: str) -> str:
    """One API name made into a valid single path component.

    ``/`` and control characters (NUL, newline, ...) become ``_``; ``.``, ``..``
    and the empty name get a ``_`` prefix; the result is at most 255 bytes of
    UTF-8 with its extension kept.
    """
    cleaned = "".join(
        _REPLACEMENT if (ch == "/" or ord(ch) < 0x20 or ord(ch) == 0x7F) else ch for ch in raw
    )
    # Lone surrogates cannot be encoded for the kernel.
    cleaned = cleaned.encode("utf-8", "replace").decode("utf-8")
    if cleaned in ("", ".", ".."):
        cleaned = _REPLACEMENT + cleaned
    stem, ext = _split_ext(cleaned)
    return fit(stem, ext)


def assign_names(items: Sequence[tuple[str, int]], reserved: Iterable[str] = ()) -> list[str]:
    """Safe, unique names for ``(raw_name, id)`` pairs, in the same order.

    The item with the lowest id keeps the plain safe name; the others become
    ``stem~<id>.ext``. *reserved* names (e.g. ``meta.json``) are never handed out.
    """
    taken = set(reserved)
    result: list[str | None] = [None] * len(items)
    by_id = sorted(range(len(items)), key=lambda i: items[i][1])
    for index in by_id:
        raw, item_id = items[index]
        name = safe_name(raw)
        if name in taken:
            stem, ext = _split_ext(name)
            name = fit(stem, ext, f"~{item_id}")
            counter = 2
            while name in taken:  # only if the API repeats an id
                name = fit(stem, ext, f"~{item_id}-{counter}")
                counter += 1
        taken.add(name)
        result[index] = name
    return [n for n in result if n is not None]
