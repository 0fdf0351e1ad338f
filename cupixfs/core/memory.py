"""Giving memory the mount no longer uses back to the system.

When the kernel forgets thousands of inodes at once (memory pressure, ``echo 2 >
/proc/sys/vm/drop_caches``), their nodes are freed, but the C allocator keeps the
freed pages for later use, so the process's resident size stays where it was.
glibc's ``malloc_trim`` returns what it can; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
    return trim


_TRIM = _malloc_trim()


def give_back() -> None:
    """Return freed heap memory to the system (blocking for a few ms: run in a thread)."""
    if _TRIM is not None:
        _TRIM(0)
