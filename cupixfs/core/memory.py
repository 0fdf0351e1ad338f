"""How the mount's memory is held by the C allocator, and given back to the system.

When the kernel forgets thousands of inodes at once (memory pressure, ``echo 2 >
/proc/sys/vm/drop_caches``), their nodes are freed, but the C allocator keeps the
freed pages for later use, so the process's resident size stays where it was.
glibc's ``malloc_trim`` returns what it can; elsewhere this does nothing.

Blocks go the other way: a MiB is allocated for every block received or read, and
freed soon after. glibc adjusts on its own when to map such an allocation afresh and
when to return the heap's free top; with those rules a cold 512 MiB read faulted in
36,000 fresh pages with the mount's block frames, about twice what it faulted with
its former ``bytes`` blocks, and each fault is CPU on the reading path. Fixed
thresholds (`keep_block_memory`) keep the freed MiBs for the next blocks: about
19,000 either way, the pages of the memory cache's first fill.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _libc_function(name: str) -> Callable[..., int] | None:
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        function: Callable[..., int] = getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
    return function


_TRIM = _libc_function("malloc_trim")
_MALLOPT = _libc_function("mallopt")
#: mallopt's parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Allocations below this come from the heap, never a mapping of their own: block
#: frames, blocks joined, and the LAS view's converted pieces (up to 28 MiB). glibc's own
#: rule raises its threshold to at most this (the largest it allows) as mappings are
#: freed; fixed at 4 MiB, the LAS view's pieces were each faulted in afresh (a LAS read:
#: 118,000 page faults, against 55,000-65,000 with glibc's rule).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the heap's top is returned to the system beyond this: twice the
#: threshold, as glibc's own rule has it (`give_back` returns everything it can).
TRIM_THRESHOLD = 64 << 20


def keep_block_memory() -> None:
    """Fix glibc's thresholds (before the mount's threads start), so that the memory of
    freed blocks is reused for the next ones instead of being faulted in afresh."""
    if _MALLOPT is not None:
        _MALLOPT(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        _MALLOPT(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def give_back() -> None:
    """Return freed heap memory to the system (blocking for a few ms: run in a thread)."""
    if _TRIM is not None:
        _TRIM(0)
