"""Where things live in the cache directory: the one place that names its files.

::

    blocks/<kk[:2]>/<kk>/<vv[:16]>           the blocks of one version of a remote file, each in
                                             its slot (`cupixfs.data.block_file`)
    stats/<kk[:32]>.json                     that file's size and ETag (a remount need not probe)
    derived/<kk[:32]>.<kind>.json            what a derived view learnt from that file's current
                                             version (``las``: its PLY header and bounding box)
    api/<digest>.json                        complete API listings, for --offline
    last-mount.json                          the counters of the last (or running) mount
    cache-format.json                        which `FORMAT` all of the above is in
    old-format-<N>/                          a cache of another format, set aside unread
    demo-data/                               ``cupixfs demo``'s sample data (not the cache's)

``kk`` is the sha256 of the remote file's cache key (``videos/5001``), which a mounted
file shows as its ``user.cupix.cache_key`` attribute, and ``vv`` that of its version
(key, ETag and size): blocks of two versions of a file never meet, and everything cached
of one file is one directory plus one stats file (and its derived files), which is how
``cupixfs cache clear PATH`` finds them.

Everything named here is one format, `FORMAT`; `cupixfs.core.cache_format` sets aside a
cache directory written in another one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BLOCKS = "blocks"
STATS = "stats"
DERIVED = "derived"
API = "api"
LAST_MOUNT = "last-mount.json"
DEMO_DATA = "demo-data"

#: The format of everything this module names. Bump it with any change to a name or to
#: what a file holds that another cupixfs would misread. 1: block files with a 16-byte
#: header (a cache directory without a marker, from before markers, is in format 1);
#: 2: block files of a 4 KiB header page and a page-padded payload (`data.block_file`);
#: 3: the same, checked with CRC-32C instead of CRC-32; 4: one file per version, a slot
#: per block.
FORMAT = 4
#: What a cache directory written before the marker existed is in.
UNMARKED_FORMAT = 1
#: What a cache directory holds (a directory without any of these is new, not unmarked).
CONTENTS = (BLOCKS, STATS, DERIVED, API, LAST_MOUNT)
#: ``{"format": FORMAT, "written_by": "cupixfs <version>"}``.
FORMAT_FILE = "cache-format.json"
#: ``old-format-<N>``: where a cache of format N was set aside.
SET_ASIDE_PREFIX = "old-format-"


def make_private_dir(path: Path, what: str) -> bool:
    """Create *path* (0700, even if it existed); False, with a debug line, when it cannot
    be (the part of the cache that lives there is then off for this mount)."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
    except OSError as exc:
        log.debug("%s disabled (%s)", what, exc.strerror)
        return False
    return True


def write_private_json(path: Path, body: Any, **dump: Any) -> None:
    """Write *body* as JSON to *path*, private (0600). Raises what failed (`OSError`, or
    `TypeError` / `ValueError` for a body JSON cannot hold); the caller decides how loud
    to be.

    Every reader of these files takes one it cannot parse for one that is not there. So
    a new file is written in place: torn by a crash, it costs what its absence would.
    An existing file is replaced atomically, through a temporary file of this thread
    (writers in several threads never share one), so that a crash never loses what it
    held. Creating in place is the common case (an entry per file or listing seen) and
    costs far less: 19 µs against 250-580 µs through a temporary file and a rename, on
    this project's VM (ext4).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _replace_json(path, body, **dump)
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, **dump)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def _replace_json(path: Path, body: Any, **dump: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, **dump)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def set_aside_dir(format: int | None) -> str:
    """Where a cache of *format* (None: an unreadable marker) is set aside."""
    return SET_ASIDE_PREFIX + ("unknown" if format is None else str(format))


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def key_of(version: str) -> str:
    """The cache key part of a version string ``key#etag#size``."""
    return version.split("#", 1)[0]


def block_dir(key: str) -> str:
    """The directory of every block of the remote file *key*, relative to ``blocks/``."""
    kk = sha(key)
    return f"{kk[:2]}/{kk}"


def block_file(version: str) -> str:
    """The file of *version*'s blocks, relative to ``blocks/``."""
    return f"{block_dir(key_of(version))}/{sha(version)[:16]}"


def stat_file(key: str) -> str:
    """The size/ETag file of the remote file *key*, relative to ``stats/``."""
    return sha(key)[:32] + ".json"


def derived_file(key: str, kind: str) -> str:
    """What the *kind* view keeps about the remote file *key*, relative to ``derived/``."""
    return f"{sha(key)[:32]}.{kind}.json"
