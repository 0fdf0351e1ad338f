"""A byte-count progress line on stderr: done/total, rate, ETA.

On a terminal it is one line redrawn in place with ``\\r`` several times a
second; into a pipe or a log (``cupixfs prefetch ... 2>log``, a systemd unit)
it is a plain line every few seconds, because ``\\r`` redraws turn a log into
one unreadable line.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from cupixfs.commands import humanize

TTY_INTERVAL = 0.2
PLAIN_INTERVAL = 5.0


class Progress:
    """Thread-safe counters, drawn at most once per interval (and once more at `finish`)."""

    def __init__(
        self,
        total_bytes: int,
        total_files: int,
        label: str = "prefetch",
        stream: TextIO = sys.stderr,
        tty: bool | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_bytes = total_bytes
        self.total_files = total_files
        self.done_bytes = 0
        self.done_files = 0
        self.label = label
        self._stream = stream
        self._tty = stream.isatty() if tty is None else tty
        self._interval = (
            interval if interval is not None else (TTY_INTERVAL if self._tty else PLAIN_INTERVAL)
        )
        self._clock = clock
        self._started = clock()
        self._drawn_at = self._started
        self._width = 0
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.done_bytes += nbytes
            self._draw_if_due()

    def file_done(self) -> None:
        with self._lock:
            self.done_files += 1
            self._draw_if_due()

    def finish(self) -> None:
        """Draw the final state, and end the redrawn line so later output starts clean."""
        with self._lock:
            self._draw()
            if self._tty:
                self._stream.write("\n")
                self._stream.flush()

    def line(self) -> str:
        elapsed = max(self._clock() - self._started, 1e-6)
        rate = self.done_bytes / elapsed
        total = max(self.total_bytes, self.done_bytes)  # a file may have grown since its stat
        left = total - self.done_bytes
        eta = humanize.duration(left / rate) if rate > 0 else "?"
        return (
            f"{self.label}: {humanize.size(self.done_bytes)} / {humanize.size(total)} "
            f"({humanize.ratio(self.done_bytes, total) if total else '100.0%'}), "
            f"{self.done_files}/{self.total_files} files, "
            f"{humanize.size(rate)}/s, ETA {eta if left else '0s'}"
        )

    def _draw_if_due(self) -> None:
        if self._clock() - self._drawn_at >= self._interval:
            self._draw()

    def _draw(self) -> None:
        self._drawn_at = self._clock()
        text = self.line()
        if self._tty:
            padding = " " * max(0, self._width - len(text))  # cover a longer previous line
            self._width = len(text)
            self._stream.write(f"\r{text}{padding}")
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
