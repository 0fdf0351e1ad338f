"""Numbers as people read them (``1.5 GiB``, ``2h 03m``, ``87.5%``), in aligned tables."""

from __future__ import annotations

from typing import TextIO

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def size(nbytes: float) -> str:
    """``0 B``, ``512 B``, ``1.5 KiB``, ``12.0 MiB`` (binary units, like --cache-size)."""
    value = float(nbytes)
    for unit in UNITS:
        if abs(value) < 1024 or unit == UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    """``4s``, ``1m 05s``, ``2h 03m``, ``3d 04h``: two units at most, enough to read at a glance."""
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def ratio(part: int, whole: int) -> str:
    """``87.5%``, or ``-`` when there is nothing to divide by."""
    return f"{100 * part / whole:.1f}%" if whole else "-"


def hit_ratio(memory_hits: int, disk_hits: int, fetched: int) -> str:
    """The share of block reads served from a cache rather than fetched."""
    hits = memory_hits + disk_hits
    return ratio(hits, hits + fetched)


def write_table(rows: list[tuple[str, str]], out: TextIO) -> None:
    """``name  value`` lines, the values aligned in one column."""
    width = max((len(name) for name, _ in rows), default=0)
    for name, value in rows:
        out.write(f"{name.ljust(width)}  {value}\n")
