"""Mount settings: one dataclass, with the defaults a user gets when they say nothing."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cupixfs.api.client import DEFAULT_API_URL

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``2G`` / ``512M`` / ``1.5GiB`` / ``1000`` -> bytes (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 512M or 2G)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " KMGT".index(unit.upper() or " "))


def xdg_dir(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    return Path(value) if value and os.path.isabs(value) else Path.home() / fallback


def default_cache_dir() -> Path:
    return xdg_dir("XDG_CACHE_HOME", ".cache") / "cupixfs"


def default_state_dir() -> Path:
    return xdg_dir("XDG_STATE_HOME", ".local/state") / "cupixfs"


@dataclass
class MountConfig:
    """Everything a mount needs; the CLI fills it, `cupixfs.mount` runs it."""

    mountpoint: Path
    token: str = field(repr=False)
    api_url: str = DEFAULT_API_URL
    cache_dir: Path = field(default_factory=default_cache_dir)
    cache_size: int = 2 << 30
    memory_cache: int = 64 << 20
    captures: list[int] = field(default_factory=list)
    records: list[int] = field(default_factory=list)
    foreground: bool = False
    debug: bool = False
    allow_other: bool = False
    #: Longest a read or listing may wait on the network before EIO.
    timeout: float = 30.0
    #: How long listings and attributes are trusted before the API is asked again.
    listing_ttl: float = 60.0
    per_page: int | None = None
    max_requests: int = 16
    log_file: Path | None = None
