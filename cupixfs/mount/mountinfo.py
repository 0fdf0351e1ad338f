"""The kernel's table of mounts (``/proc/self/mountinfo``), read one way for everyone.

The kernel escapes a space, tab, newline and backslash in a mount point as
``\\ooo`` (``/mnt/my\\040site``), so a path must be unescaped before it is
compared; both the mount (to find its backing device) and ``cupixfs status``
(to tell a cupixfs mount from anything else) read it through here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """A mountinfo field with its ``\\ooo`` escapes decoded."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    #: ``major:minor`` of the mount's device (for a FUSE mount, its backing device).
    device: str
    fstype: str


def find(path: Path | str, mountinfo: str = MOUNTINFO) -> MountEntry | None:
    """The mount exactly at *path*, or None; of several, the last (the visible one)."""
    found = None
    with open(mountinfo) as table:
        for line in table:
            before, _, after = line.partition(" - ")
            fields = before.split()
            if len(fields) > 4 and after and unescape(fields[4]) == str(path):
                found = MountEntry(unescape(fields[4]), fields[2], after.split()[0])
    return found
