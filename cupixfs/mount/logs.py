"""Logging set-up: where lines go, and keeping secrets out of them.

A background mount's log file survives rotation: each line first checks that
the file is still the one at its path, and reopens it if ``logrotate`` (or
anyone) moved it away. Nor does it grow without bound: past `MAX_LOG_BYTES` it
is renamed to ``FILE.1`` (replacing the previous one) and a new one started.

httpx logs every request URL at INFO, and a signed URL's query *is* its
secret, so its loggers are held at WARNING whatever ``--debug`` says. Our own
modules never log a signed URL; the API URL they do log (at mount, and in a
"cannot reach" error) goes through `cupixfs.core.redact.redact_url`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import logging.handlers
import os
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Past this size the log file is rotated by cupixfs itself (one old file is kept).
MAX_LOG_BYTES = 10 << 20


class LogFile(logging.handlers.WatchedFileHandler):
    """A private (0600) log file that follows rotation and is rotated past *max_bytes*."""

    def __init__(self, path: Path, max_bytes: int = MAX_LOG_BYTES) -> None:
        self.max_bytes = max_bytes
        super().__init__(path, encoding="utf-8")

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return open(fd, "a", encoding="utf-8", buffering=1)

    def emit(self, record: logging.LogRecord) -> None:
        self.reopenIfNeeded()  # moved away by logrotate: a new file at the path
        if self.stream is not None and self.stream.tell() >= self.max_bytes:
            self._roll_over()
        logging.FileHandler.emit(self, record)

    def _roll_over(self) -> None:
        if self.stream is not None:
            self.stream.close()
        # Renamed by someone else meanwhile? Then a new file is started all the same.
        with contextlib.suppress(OSError):
            os.replace(self.baseFilename, self.baseFilename + ".1")
        self.stream = self._open()
        self._statstream()


def setup(debug: bool, log_file: Path | None = None) -> None:
    """Log to stderr (foreground) or to *log_file* (background), at INFO or DEBUG."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handler = LogFile(log_file)
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("httpx", "httpcore", "hpack", "trio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
