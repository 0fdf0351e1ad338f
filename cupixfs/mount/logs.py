"""Logging set-up: where lines go, and keeping secrets out of them.

httpx logs every request URL at INFO, and a signed URL's query *is* its
secret, so its loggers are held at WARNING whatever ``--debug`` says. Our own
modules never log a signed URL; the API URL they do log (at mount, and in a
"cannot reach" error) goes through `cupixfs.core.redact.redact_url`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(debug: bool, log_file: Path | None = None) -> None:
    """Log to stderr (foreground) or to *log_file* (background), at INFO or DEBUG."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        handler = logging.StreamHandler(os.fdopen(fd, "a", buffering=1))
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("httpx", "httpcore", "hpack", "trio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
