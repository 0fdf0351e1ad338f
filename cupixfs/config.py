"""Mount settings: what a user may choose, layered, and the one dataclass a mount runs from.

A setting can come from three places: the command line (long options or ``-o``),
a profile in the config file, and our defaults. Each of the first two is read
into an `Options` whose unset fields are None, so "not said" and "said the
default" stay different, and `resolve` layers them: command line over profile
over defaults.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cupixfs.api.client import DEFAULT_API_URL

T = TypeVar("T")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


class UsageError(Exception):
    """A problem with what the user asked for; its message is the one line they see."""


def parse_size(text: str) -> int:
    """``2G`` / ``512M`` / ``1.5GiB`` / ``1000`` -> bytes (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 512M or 2G)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " KMGT".index(unit.upper() or " "))


def parse_positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) <= 0:
        raise ValueError(f"not a positive integer: {text!r}")
    return int(text)


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise ValueError(f"not a positive number of seconds: {text!r}")
    return value


def xdg_dir(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    return Path(value) if value and os.path.isabs(value) else Path.home() / fallback


def default_cache_dir() -> Path:
    return xdg_dir("XDG_CACHE_HOME", ".cache") / "cupixfs"


def default_state_dir() -> Path:
    return xdg_dir("XDG_STATE_HOME", ".local/state") / "cupixfs"


def default_config_file() -> Path:
    return xdg_dir("XDG_CONFIG_HOME", ".config") / "cupixfs" / "config.toml"


#: 0 means auto: a tenth of the cache filesystem's free space, 256 MiB to 20 GiB.
DEFAULT_CACHE_SIZE = 0
DEFAULT_MEMORY_CACHE = 64 << 20
DEFAULT_TIMEOUT = 30.0
DEFAULT_LISTING_TTL = 60.0


@dataclass
class MountConfig:
    """Everything a mount needs; the CLI fills it, `cupixfs.mount` runs it."""

    mountpoint: Path
    token: str = field(repr=False)
    api_url: str = DEFAULT_API_URL
    cache_dir: Path = field(default_factory=default_cache_dir)
    cache_size: int = DEFAULT_CACHE_SIZE
    memory_cache: int = DEFAULT_MEMORY_CACHE
    captures: list[int] = field(default_factory=list)
    records: list[int] = field(default_factory=list)
    foreground: bool = False
    debug: bool = False
    allow_other: bool = False
    #: Longest a read or listing may wait on the network before EIO.
    timeout: float = DEFAULT_TIMEOUT
    #: How long listings and attributes are trusted before the API is asked again.
    listing_ttl: float = DEFAULT_LISTING_TTL
    per_page: int | None = None
    max_requests: int = 16
    log_file: Path | None = None
    #: Serve only what the persistent cache holds; no token is needed, nothing is fetched.
    offline: bool = False


@dataclass
class Options:
    """The settings one source (command line, or a config profile) chose; None = not said."""

    api_url: str | None = None
    token_file: Path | None = None
    cache_dir: Path | None = None
    cache_size: int | None = None
    memory_cache: int | None = None
    timeout: float | None = None
    listing_ttl: float | None = None
    per_page: int | None = None
    captures: list[int] | None = None
    records: list[int] | None = None
    log_file: Path | None = None
    allow_other: bool | None = None
    debug: bool | None = None
    offline: bool | None = None

    def over(self, lower: Options) -> Options:
        """These options, with *lower*'s filling what these leave unsaid.

        Capture and record pins are the exception: they add up, because a pin
        only lists an id (any id resolves on lookup anyway), so a profile's
        pins plus one more from the command line is what a user means.
        """
        merged: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(lower, f.name)
            if f.name in ("captures", "records") and mine is not None and theirs is not None:
                merged[f.name] = sorted(set(theirs) | set(mine))
            else:
                merged[f.name] = mine if mine is not None else theirs
        return Options(**merged)


def resolve(mountpoint: Path, token: str, options: Options, foreground: bool) -> MountConfig:
    """The `MountConfig` for *options* (already layered), with our defaults for the rest."""
    return MountConfig(
        mountpoint=mountpoint,
        token=token,
        api_url=options.api_url or DEFAULT_API_URL,
        cache_dir=options.cache_dir or default_cache_dir(),
        cache_size=_or(options.cache_size, DEFAULT_CACHE_SIZE),
        memory_cache=_or(options.memory_cache, DEFAULT_MEMORY_CACHE),
        captures=list(options.captures or []),
        records=list(options.records or []),
        foreground=foreground,
        debug=bool(options.debug),
        allow_other=bool(options.allow_other),
        timeout=_or(options.timeout, DEFAULT_TIMEOUT),
        listing_ttl=_or(options.listing_ttl, DEFAULT_LISTING_TTL),
        per_page=options.per_page,
        log_file=options.log_file,
        offline=bool(options.offline),
    )


def _or(value: T | None, default: T) -> T:
    return default if value is None else value
