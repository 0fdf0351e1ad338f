"""Which format a cache directory is in, and setting aside one this cupixfs cannot read.

A cache directory carries a marker, ``cache-format.json``, naming the format of
everything in it (`cupixfs.core.cache_layout.FORMAT`) and the cupixfs that wrote
it. Before a mount opens its caches, `settle` reads it:

- the same format: the directory is used as it is;
- no marker and no cache in it: a new directory; the marker is written;
- no marker but a cache in it: a cache from before the marker existed, which is
  format 1 (`cache_layout.UNMARKED_FORMAT`), read like any other format;
- any other format, from a newer or an older cupixfs, or a marker that cannot be
  read: everything in the directory is moved, unread, into ``old-format-<N>/``
  inside it, and a fresh cache is started, with one log line. The other version's
  cache is never misread, and is there for it (or for ``cupixfs cache clear``).

Only the latest cache of each other format is kept, so two versions taking turns
on one directory do not pile up copies. The foreign marker is moved last: if
setting aside stops half-way (a crash, a full disk), the next mount finds the
marker still there and finishes the job.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cupixfs import __version__
from cupixfs.core import cache_layout as layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Marker:
    """What a cache directory says of itself. *format* None: a marker that cannot be read."""

    format: int | None
    written_by: str = "an unknown version of cupixfs"


def read_marker(cache_dir: Path) -> Marker | None:
    """The directory's marker; None when it has none (a cache from before markers, or new)."""
    try:
        data = json.loads((cache_dir / layout.FORMAT_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return Marker(None)
    if not isinstance(data, dict):
        return Marker(None)
    fmt, by = data.get("format"), data.get("written_by")
    return Marker(
        fmt if isinstance(fmt, int) and not isinstance(fmt, bool) else None,
        by if isinstance(by, str) and by else Marker.written_by,
    )


def write_marker(cache_dir: Path) -> None:
    """Say that *cache_dir* is in this cupixfs's format (atomically, private)."""
    marker = {"format": layout.FORMAT, "written_by": f"cupixfs {__version__}"}
    layout.write_private_json(cache_dir / layout.FORMAT_FILE, marker)


def set_aside_dirs(cache_dir: Path) -> list[Path]:
    """The caches of other formats set aside in *cache_dir*."""
    try:
        return sorted(
            entry
            for entry in cache_dir.iterdir()
            if entry.name.startswith(layout.SET_ASIDE_PREFIX) and entry.is_dir()
        )
    except OSError:
        return []


def settle(cache_dir: Path) -> str | None:
    """Make *cache_dir* (existing, writable) a cache of our format; the reason if it cannot
    be (the mount then runs without its disk caches)."""
    try:
        marker = read_marker(cache_dir)
        if marker is None and any((cache_dir / name).exists() for name in layout.CONTENTS):
            marker = Marker(layout.UNMARKED_FORMAT, "a cupixfs from before cache-format markers")
        if marker is None:
            write_marker(cache_dir)  # a new cache
        elif marker.format != layout.FORMAT:
            aside = _set_aside(cache_dir, marker)
            log.warning(
                "cache directory %s is in format %s (written by %s), which this cupixfs "
                "(format %d) cannot read: set it aside in %s and started a new cache; "
                "delete that (or run cupixfs cache clear) to get its space back",
                cache_dir,
                "unknown" if marker.format is None else marker.format,
                marker.written_by,
                layout.FORMAT,
                aside,
            )
    except OSError as exc:
        return f"cannot set aside a cache of another cupixfs version: {exc.strerror or exc}"
    return None


def _set_aside(cache_dir: Path, marker: Marker) -> Path:
    aside = cache_dir / layout.set_aside_dir(marker.format)
    aside.mkdir(mode=0o700, exist_ok=True)
    keep = {layout.DEMO_DATA, layout.FORMAT_FILE}
    entries = [
        e
        for e in cache_dir.iterdir()
        if e.name not in keep and not e.name.startswith(layout.SET_ASIDE_PREFIX)
    ]
    for entry in [*entries, cache_dir / layout.FORMAT_FILE]:  # the marker last
        target = aside / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)  # the previous cache of that format: the latest wins
        elif os.path.lexists(target):
            target.unlink()
        try:
            os.replace(entry, target)
        except FileNotFoundError:
            continue  # gone meanwhile (a mount of that version still running)
    write_marker(cache_dir)
    return aside
