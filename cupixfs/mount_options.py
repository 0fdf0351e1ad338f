"""FUSE-style mount options (``-o ro,allow_other,cache_size=4G``), as fstab and mount(8) pass them.

Each cupixfs key sets the same setting as its long option (``cache_size=4G`` is
``--cache-size 4G``), so an ``/etc/fstab`` line can say everything a command
line can. The generic options mount(8) and fstab use for their own purposes
(``_netdev``, ``noauto``, ``nofail``, ``x-systemd.*``, ...) are accepted and
ignored, because mount(8) hands most of them to the helper anyway. An unknown
key is an error, never ignored: a misspelt ``cache_sise`` would otherwise
quietly mount with the default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cupixfs.config import UsageError, parse_positive_int, parse_seconds, parse_size


class OptionError(UsageError):
    """A ``-o`` option that cupixfs does not understand or cannot honour."""


def _ids(text: str) -> list[int]:
    """``capture=1`` or, since commas separate options, ``capture=1:2:3``."""
    return [parse_positive_int(part) for part in text.split(":")]


@dataclass(frozen=True)
class Key:
    """One cupixfs option: the argparse destination it fills, and how its value is read."""

    dest: str
    convert: Callable[[str], Any] | None = None  # None: a flag without a value
    repeat: bool = False


KEYS: dict[str, Key] = {
    "api_url": Key("api_url", str),
    "token_file": Key("token_file", Path),
    "cache_dir": Key("cache_dir", Path),
    "cache_size": Key("cache_size", parse_size),
    "memory_cache": Key("memory_cache", parse_size),
    "timeout": Key("timeout", parse_seconds),
    "listing_ttl": Key("listing_ttl", parse_seconds),
    "per_page": Key("per_page", parse_positive_int),
    "capture": Key("capture", _ids, repeat=True),
    "record": Key("record", _ids, repeat=True),
    "log_file": Key("log_file", Path),
    "profile": Key("profile", str),
    "config": Key("config", Path),
    "allow_other": Key("allow_other"),
    "debug": Key("debug"),
    "offline": Key("offline"),
}
KEYS["captures"] = KEYS["capture"]
KEYS["records"] = KEYS["record"]

#: mount(8)'s and fstab's own options: meaningless to a read-only FUSE mount, or already
#: handled by mount(8) before the helper runs. ``ro`` is what cupixfs always is.
IGNORED = frozenset(
    {
        "ro",
        "defaults",
        "auto",
        "noauto",
        "_netdev",
        "nofail",
        "user",
        "nouser",
        "users",
        "owner",
        "group",
        "exec",
        "noexec",
        "suid",
        "nosuid",
        "dev",
        "nodev",
        "atime",
        "noatime",
        "relatime",
        "nodiratime",
        "strictatime",
        "lazytime",
    }
)
IGNORED_PREFIXES = ("x-", "comment=")


def split(text: str) -> list[str]:
    """Split at commas outside double quotes (libmount's ``key="a,b"``), dropping the quotes."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise OptionError(f"unbalanced quote in mount options: {text!r}")
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def parse(texts: list[str], sloppy: bool = False) -> dict[str, Any]:
    """The settings several ``-o`` strings ask for, by argparse destination.

    A repeated key keeps its last value, except capture/record ids, which add
    up. With *sloppy* (mount(8)'s ``-s``) unknown keys are skipped, not refused.
    """
    result: dict[str, Any] = {}
    for text in texts:
        for item in split(text):
            name, has_value, value = item.partition("=")
            if name in IGNORED or item.startswith(IGNORED_PREFIXES):
                continue
            if name == "rw":
                raise OptionError("cupixfs is read-only: it cannot be mounted with 'rw'")
            key = KEYS.get(name)
            if key is None:
                if sloppy:
                    continue
                raise OptionError(
                    f"unknown mount option {name!r} (cupixfs knows: {', '.join(sorted(KEYS))})"
                )
            if key.convert is None:
                if has_value:
                    raise OptionError(f"mount option {name!r} takes no value")
                result[key.dest] = True
                continue
            if not value:
                raise OptionError(f"mount option {name!r} needs a value: {name}=...")
            try:
                converted = key.convert(value)
            except ValueError as exc:
                raise OptionError(f"mount option {name}: {exc}") from None
            if key.repeat:
                result.setdefault(key.dest, []).extend(converted)
            else:
                result[key.dest] = converted
    return result
