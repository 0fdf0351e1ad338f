"""Where things live in the cache directory: the one place that names its files.

::

    blocks/<kk[:2]>/<kk>/<vv[:16]>-<index>   block *index* of one version of a remote file
    stats/<kk[:32]>.json                     that file's size and ETag (a remount need not probe)
    api/<digest>.json                        complete API listings, for --offline
    last-mount.json                          the counters of the last (or running) mount

``kk`` is the sha256 of the remote file's cache key (``videos/5001``), which a mounted
file shows as its ``user.cupix.cache_key`` attribute, and ``vv`` that of its version
(key, ETag and size): blocks of two versions of a file never meet, and everything cached
of one file is one directory plus one stats file, which is how ``cupixfs cache clear
PATH`` finds them.
"""

from __future__ import annotations

import hashlib

BLOCKS = "blocks"
STATS = "stats"
API = "api"
LAST_MOUNT = "last-mount.json"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def key_of(version: str) -> str:
    """The cache key part of a version string ``key#etag#size``."""
    return version.split("#", 1)[0]


def block_dir(key: str) -> str:
    """The directory of every block of the remote file *key*, relative to ``blocks/``."""
    kk = sha(key)
    return f"{kk[:2]}/{kk}"


def block_file(version: str, index: int) -> str:
    """Where block *index* of *version* lives, relative to ``blocks/``."""
    return f"{block_dir(key_of(version))}/{sha(version)[:16]}-{index}"


def stat_file(key: str) -> str:
    """The size/ETag file of the remote file *key*, relative to ``stats/``."""
    return sha(key)[:32] + ".json"
