"""``cupixfs status MOUNTPOINT``: a running mount's counters, read from its control file.

A mount publishes its counters as read-only JSON at ``MOUNTPOINT/.cupixfs/status``,
so any tool (or ``cat``) can read them without a socket or a PID file, and
reading them needs exactly the permission that reading the mount needs. Before
reading, the kernel's mount table is asked whether MOUNTPOINT is a cupixfs
mount at all, so a typo gets "not a cupixfs mount", not a confusing ENOENT.
"""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from cupixfs.commands import humanize
from cupixfs.config.settings import UsageError
from cupixfs.mount.mountinfo import MOUNTINFO, find

FSTYPE = "fuse.cupixfs"
CONTROL_FILE = Path(".cupixfs") / "status"


def mount_type(path: Path, mountinfo: str = MOUNTINFO) -> str | None:
    """The filesystem type mounted exactly at *path*, or None if nothing is."""
    entry = find(path, mountinfo)
    return entry.fstype if entry is not None else None


def read_status(mountpoint: Path) -> dict[str, Any]:
    """The control file's counters; `UsageError` with the reason when there are none."""
    path = Path(mountpoint).absolute()
    fstype = mount_type(path)
    if fstype is None:
        raise UsageError(f"{mountpoint} is not a mount point")
    if fstype != FSTYPE:
        raise UsageError(f"{mountpoint} is not a cupixfs mount (it is {fstype})")
    try:
        data = json.loads((path / CONTROL_FILE).read_text())
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise UsageError(
                f"{mountpoint} is a stale mount (its process died); run: fusermount3 -uz {path}"
            ) from None
        raise UsageError(
            f"cannot read {path / CONTROL_FILE}: {exc.strerror} "
            "(is this mount's cupixfs older than this command?)"
        ) from None
    except ValueError:
        raise UsageError(f"{path / CONTROL_FILE} is not JSON") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path / CONTROL_FILE} is not a JSON object")
    return data


#: How each known counter is shown; anything else the mount adds is shown as it is.
_ROWS: list[tuple[str, str, str]] = [
    ("mountpoint", "mountpoint", "text"),
    ("uptime", "uptime", "duration"),
    ("uptime_s", "uptime", "duration"),
    ("requests", "requests", "count"),
    ("api_requests", "  to the API", "count"),
    ("blob_requests", "  to storage", "count"),
    ("bytes", "bytes fetched", "size"),
    ("memory_hits", "memory cache hits", "count"),
    ("disk_hits", "disk cache hits", "count"),
    ("fetched", "blocks fetched", "count"),
    ("prefetched", "  by read-ahead", "count"),
    ("parts", "  GETs as parts", "count"),
    ("parts_given_up", "  streams back to one GET", "count"),
    ("walks_followed", "tree walks followed", "count"),
    ("files_fetched_ahead", "  files fetched ahead", "count"),
    ("scans_followed", "tree scans listed ahead of", "count"),
    ("hit_ratio", "hit ratio", "text"),
    ("cache_dir", "disk cache directory", "text"),
    ("disk_cache_bytes", "disk cache used", "size"),
    ("cache_size", "disk cache bound", "size"),
    ("disk_cache_blocks", "disk cache blocks", "count"),
    ("corrupt_blocks", "corrupt blocks", "count"),
    ("uncached_blocks", "blocks not cached (errors)", "count"),
    ("unsaved_entries", "sizes, listings not saved", "count"),
    ("retries", "retries", "count"),
    ("errors", "errors", "count"),
]
_HIDDEN = {"started", "updated"}


def _show(value: Any, kind: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if kind == "size":
            return humanize.size(value)
        if kind == "duration":
            return humanize.duration(value)
    return str(value)


def table(data: dict[str, Any]) -> list[tuple[str, str]]:
    data = dict(data)
    counts = [data.get(k) for k in ("memory_hits", "disk_hits", "fetched")]
    if all(isinstance(c, int) for c in counts):
        memory, disk, fetched = (int(c or 0) for c in counts)
        data["hit_ratio"] = humanize.hit_ratio(memory, disk, fetched)
    rows = [(label, _show(data[key], kind)) for key, label, kind in _ROWS if key in data]
    known = {key for key, _, _ in _ROWS} | _HIDDEN
    rows += [(key, str(value)) for key, value in data.items() if key not in known]
    return rows


def status(mountpoint: Path, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    data = read_status(mountpoint)
    if as_json:
        json.dump(data, out, indent=2)
        out.write("\n")
    else:
        humanize.write_table(table(data), out)
    return 0
