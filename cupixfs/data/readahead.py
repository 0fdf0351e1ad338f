"""Adaptive read-ahead: detect sequential reading per open file and grow a window.

The first read at offset 0, or any read that continues where the previous one
ended, counts as sequential; the window then starts at *initial* and doubles
on every sequential read up to *maximum* (Mountpoint for S3 does the same).
Small jumps are tolerated -- forward up to 16 MiB, backward up to 1 MiB --
because the kernel's own readahead requests arrive slightly out of order.
Anything else is random access: the window collapses, and only what is read
is fetched (a zip's central directory at the end, a PLY header then a seek).
"""

from __future__ import annotations

from dataclasses import dataclass

#: The window of a sequential reader starts here and doubles up to `MAX_WINDOW`.
INITIAL_WINDOW = 1 << 20
MAX_WINDOW = 32 << 20
FORWARD_TOLERANCE = 16 << 20
BACKWARD_TOLERANCE = 1 << 20


@dataclass
class ReadAhead:
    """The read-ahead state of one open file."""

    initial: int = INITIAL_WINDOW
    maximum: int = MAX_WINDOW
    window: int = 0
    next_offset: int = 0
    reads: int = 0

    def widen(self, window: int) -> int:
        """Make the window at least *window* (it goes on doubling from there)."""
        self.window = max(self.window, min(window, self.maximum))
        return self.window

    def observe(self, offset: int, size: int, delivered: int = 0) -> int:
        """Record a read of ``[offset, offset + size)``; return how far beyond it to fetch.

        *delivered*: where the blocks already pushed into the kernel's page cache for this
        reader end. A read up to there still continues the last one, however far it
        jumped: the reader read what lies between from the page cache, without us.
        """
        near = (
            self.next_offset - BACKWARD_TOLERANCE <= offset <= self.next_offset + FORWARD_TOLERANCE
        )
        sequential = (
            (offset == 0 and self.reads == 0) or near or self.next_offset <= offset <= delivered
        )
        if self.reads == 0 and offset != 0:
            sequential = False
        self.reads += 1
        if sequential:
            self.window = self.initial if self.window == 0 else min(self.window * 2, self.maximum)
        else:
            self.window = 0
        self.next_offset = max(self.next_offset, offset + size) if sequential else offset + size
        return self.window
