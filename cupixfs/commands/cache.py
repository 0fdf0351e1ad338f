"""``cupixfs cache stats`` and ``cupixfs cache clear``: look at and empty the persistent cache.

`cupixfs.core.cache_layout` says where the cache directory keeps what: a mounted file's
``user.cupix.cache_key`` attribute leads to its blocks and its saved size. Clearing
only deletes files: a running mount treats a vanished block as a miss and fetches it
again, so both commands are safe while mounted.

A cache of another cupixfs version's format (`cupixfs.core.cache_format`) is shown for
what it is, and what a mount set aside (``old-format-<N>/``) is listed apart and
removed by clearing everything.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from cupixfs.commands import humanize
from cupixfs.config.settings import UsageError
from cupixfs.core import cache_format
from cupixfs.core import cache_layout as layout

CACHE_KEY_XATTR = "user.cupix.cache_key"


@dataclass
class Usage:
    """What a part of the cache holds on disk."""

    files: int = 0
    bytes: int = 0

    def add(self, other: Usage) -> None:
        self.files += other.files
        self.bytes += other.bytes


def usage(root: Path) -> Usage:
    """Files and the bytes they take on disk under *root* (block files are sparse: their
    length counts the holes between cached blocks)."""
    found = Usage()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                found.bytes += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                found.files += 1
            except OSError:
                continue  # evicted while we looked
    return found


def last_mount(cache_dir: Path) -> dict[str, Any] | None:
    """The counters the last mount left in ``last-mount.json``; None if absent or unreadable."""
    try:
        data = json.loads((cache_dir / layout.LAST_MOUNT).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _count(data: dict[str, Any], key: str) -> int:
    value = data.get(key, 0)
    return value if isinstance(value, int) else 0


def stats(cache_dir: Path, bound: int, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    """Print the cache's size, bound, block count and the last mount's hit ratio.

    *bound* is what the configuration says; the last mount's own ``cache_size``,
    when known, is shown instead, because that is the bound the blocks obey.
    """
    blocks = usage(cache_dir / layout.BLOCKS)
    last = last_mount(cache_dir)
    if last is not None and _count(last, "cache_size") > 0:
        bound = _count(last, "cache_size")
    marker = cache_format.read_marker(cache_dir)
    foreign = marker is not None and marker.format != layout.FORMAT
    aside = {path.name: usage(path).bytes for path in cache_format.set_aside_dirs(cache_dir)}
    if as_json:
        json.dump(
            {
                "cache_dir": str(cache_dir),
                "bytes": blocks.bytes,
                "bound": bound,
                "block_files": blocks.files,
                "last_mount": last,
                "format": marker.format if marker is not None else layout.FORMAT,
                "readable": not foreign,
                "set_aside": aside,
            },
            out,
            indent=2,
        )
        out.write("\n")
        return 0
    rows = [
        ("cache directory", str(cache_dir) + ("" if cache_dir.is_dir() else " (does not exist)")),
        ("size on disk", f"{humanize.size(blocks.bytes)} of {humanize.size(bound)}"),
        ("block files", str(blocks.files)),
    ]
    if marker is not None and foreign:
        rows.append(
            (
                "format",
                f"{'unknown' if marker.format is None else marker.format}, written by "
                f"{marker.written_by}; this cupixfs reads format {layout.FORMAT}, "
                "so its next mount sets this cache aside",
            )
        )
    for name, size in aside.items():
        rows.append(
            ("set aside", f"{name}: {humanize.size(size)} (another version's cache; unused)")
        )
    if last is None:
        rows.append(("last mount", "none recorded"))
    else:
        memory, disk, fetched = (_count(last, k) for k in ("memory_hits", "disk_hits", "fetched"))
        updated = last.get("updated")
        when = (
            f", updated {humanize.duration(time.time() - updated)} ago"
            if isinstance(updated, int | float)
            else ""
        )
        rows += [
            ("last mount", f"{last.get('mountpoint', '?')}{when}"),
            (
                "hit ratio",
                f"{humanize.hit_ratio(memory, disk, fetched)} "
                f"(memory {memory}, disk {disk}, fetched {fetched} blocks)",
            ),
        ]
    humanize.write_table(rows, out)
    return 0


# -- clearing ----------------------------------------------------------------------------


def _remove(path: Path) -> Usage:
    """Delete a file or a whole directory; what it held. Missing is fine (evicted meanwhile)."""
    try:
        if path.is_dir() and not path.is_symlink():
            held = usage(path)
            shutil.rmtree(path, ignore_errors=True)
            return held
        size = path.lstat().st_size
        path.unlink()
        return Usage(1, size)
    except FileNotFoundError:
        return Usage()


def clear_all(cache_dir: Path) -> Usage:
    """Empty ``blocks/``, ``stats/`` and ``derived/``, keeping the directories a running
    mount writes into, and remove the caches of other versions set aside in *cache_dir*."""
    removed = Usage()
    for part in (layout.BLOCKS, layout.STATS, layout.DERIVED):
        root = cache_dir / part
        if not root.is_dir():
            continue
        for entry in root.iterdir():
            held = _remove(entry)
            if part == layout.BLOCKS:
                removed.add(held)
    for aside in cache_format.set_aside_dirs(cache_dir):
        removed.add(_remove(aside))
    return removed


def clear_key(cache_dir: Path, cache_key: str) -> Usage:
    """Remove every cached block, the saved size/ETag and the derived views' notes of one
    remote file."""
    removed = _remove(cache_dir / layout.BLOCKS / layout.block_dir(cache_key))
    _remove(cache_dir / layout.STATS / layout.stat_file(cache_key))
    _remove(cache_dir / layout.DERIVED / layout.derived_file(cache_key, "las"))
    return removed


def cache_key(path: Path) -> str | None:
    """The mount's cache key of *path*; None for a file the mount does not cache (meta.json)."""
    try:
        return os.getxattr(path, CACHE_KEY_XATTR).decode()
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise UsageError(f"cannot read {CACHE_KEY_XATTR} of {path}: {exc.strerror}") from None


def files_under(path: Path) -> list[Path]:
    """*path* itself if it is a file, else every file below it."""
    if not path.is_dir():
        return [path]
    found = []
    for dirpath, dirs, files in os.walk(path):
        dirs.sort()
        found += [Path(dirpath, name) for name in sorted(files)]
    return found


def clear_paths(cache_dir: Path, paths: list[Path]) -> tuple[int, Usage]:
    """Clear the cached data of mounted files and folders; (files cleared, what was removed)."""
    keys: set[str] = set()
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path}: no such file or directory")
        found = [key for key in map(cache_key, files_under(path)) if key is not None]
        if not found:
            raise UsageError(
                f"{path} holds no cupixfs files (no {CACHE_KEY_XATTR} attribute): "
                "give a file or folder on a cupixfs mount"
            )
        keys.update(found)
    removed = Usage()
    for key in sorted(keys):
        removed.add(clear_key(cache_dir, key))
    return len(keys), removed


def mount_cache_dir(path: Path) -> Path | None:
    """The cache directory of the running mount *path* is on (from its status file);
    None if *path* is on no cupixfs mount that says."""
    from cupixfs.commands.status import read_status

    here = Path(os.path.abspath(path))
    while not os.path.ismount(here) and here != here.parent:
        here = here.parent
    try:
        said = read_status(here).get("cache_dir")
    except UsageError:  # not a cupixfs mount, a stale one, or one from before cache_dir
        return None
    return Path(said) if isinstance(said, str) and said else None


def clear(cache_dir: Path, paths: list[Path], out: TextIO = sys.stdout) -> int:
    if paths:
        count, removed = clear_paths(cache_dir, paths)
        what = f"{count} file{'s' if count != 1 else ''}"
    else:
        removed = clear_all(cache_dir)
        what = "everything"
    out.write(
        f"cleared {what}: {removed.files} block files, {humanize.size(removed.bytes)} "
        f"removed from {cache_dir}\n"
    )
    return 0
