"""Every setting a user may choose, declared once, and the one dataclass a mount runs from.

A setting can be said in three places: on the command line (a long option, or
the same key in ``-o key=value``), in a profile of the config file, and nowhere
(its default). `SETTINGS` declares each one with its name, its kind of value,
its default, its help, and the routes it may come by; the argparse options
(`cupixfs.commands.cli`), the ``-o`` parser (`cupixfs.config.mount_options`) and
the profile reader (`cupixfs.config.profiles`) are all derived from it, so adding
a setting is one entry here plus its use.

Each source is read into a `Values` dict holding only what it said, so "not
said" and "said the default" stay different, and `layer` stacks them: command
line over ``-o`` over profile over defaults.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cupixfs.api.regions import DEFAULT_REGION, REGIONS, api_url, parse_region

if TYPE_CHECKING:  # token.py builds on this module
    from cupixfs.config.token import TokenSource


class UsageError(Exception):
    """A problem with what the user asked for; its message is the one line they see."""


# -- values from text -----------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


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


def parse_ids(text: str) -> list[int]:
    """``1`` or, since commas separate ``-o`` options, ``1:2:3``."""
    return [parse_positive_int(part) for part in text.split(":")]


def parse_text(text: str) -> str:
    if not text:
        raise ValueError("an empty value")
    return text


# -- where things live by default -----------------------------------------------------------


def xdg_dir(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    return Path(value) if value and os.path.isabs(value) else Path.home() / fallback


def default_cache_dir() -> Path:
    return xdg_dir("XDG_CACHE_HOME", ".cache") / "cupixfs"


def default_state_dir() -> Path:
    return xdg_dir("XDG_STATE_HOME", ".local/state") / "cupixfs"


def default_config_file() -> Path:
    return xdg_dir("XDG_CONFIG_HOME", ".config") / "cupixfs" / "config.toml"


# -- kinds of value -------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Kind:
    """One kind of value: how it is read from text (command line, ``-o``) and from TOML.

    *from_toml* gets the decoded TOML value and the config file's directory (relative
    paths are relative to it) and raises `TypeError` when the value is not of this kind;
    *describe* completes "KEY must be ..." in that error. The examples are valid inputs,
    used by ``--help`` and by the test that walks the table.
    """

    name: str
    parse: Callable[[str], Any]
    from_toml: Callable[[Any, Path], Any]
    describe: str
    text_example: str
    toml_example: str

    def toml(self, value: Any, base: Path) -> Any:
        try:
            return self.from_toml(value, base)
        except (TypeError, ValueError):
            raise TypeError(self.describe) from None


def _toml_text(value: Any, _base: Path) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError
    return value


def _toml_path(value: Any, base: Path) -> Path:
    return base / Path(_toml_text(value, base)).expanduser()


def _toml_size(value: Any, _base: Path) -> int:
    if _is_int(value) and value > 0:
        return int(value)
    if isinstance(value, str):
        return parse_size(value)
    raise TypeError


def _toml_seconds(value: Any, _base: Path) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise TypeError


def _toml_count(value: Any, _base: Path) -> int:
    if _is_int(value) and value > 0:
        return int(value)
    raise TypeError


def _toml_ids(value: Any, base: Path) -> list[int]:
    if not isinstance(value, list):
        raise TypeError
    return [_toml_count(item, base) for item in value]


def _toml_region(value: Any, _base: Path) -> str:
    return parse_region(_toml_text(value, _base))


def _toml_bool(value: Any, _base: Path) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError


TEXT = Kind("text", parse_text, _toml_text, "a non-empty string", "x", '"x"')
URL = Kind(
    "url", parse_text, _toml_text, "a non-empty string", "http://h/api/v1", '"http://h/api/v1"'
)
PATH = Kind("path", lambda t: Path(parse_text(t)), _toml_path, "a non-empty string", "/a", '"/a"')
SIZE = Kind(
    "size", parse_size, _toml_size, 'a size such as "512M" or "4G", or a number of bytes',
    "4G", '"4G"',
)  # fmt: skip
SECONDS = Kind(
    "seconds", parse_seconds, _toml_seconds, "a positive number of seconds", "2.5", "2.5"
)
COUNT = Kind("count", parse_positive_int, _toml_count, "a positive integer", "7", "7")
IDS = Kind("ids", parse_ids, _toml_ids, "a list of ids, such as [132435, 132436]", "1:2", "[1, 2]")
REGION = Kind(
    "region",
    parse_region,
    _toml_region,
    "one of " + ", ".join(f'"{r}"' for r in REGIONS),
    "eu",
    '"eu"',
)
#: A switch: said without a value on the command line and in ``-o``; true/false in a profile.
FLAG = Kind("flag", lambda _t: True, _toml_bool, "true or false", "", "true")


# -- the table ------------------------------------------------------------------------------


class Route(enum.Flag):
    """Where a setting may be said."""

    CLI = enum.auto()  # a long option of the commands it belongs to
    OPTION = enum.auto()  # a key of -o, as fstab passes it
    PROFILE = enum.auto()  # a key of a [profiles.NAME] table
    ALL = CLI | OPTION | PROFILE


MOUNT, DEMO, LOGIN, CACHE = "mount", "demo", "login", "cache"


@dataclass(frozen=True)
class Setting:
    """One setting. Its *name* is its ``-o`` key, its profile key and its `MountConfig`
    field; the long option is ``--name-with-dashes`` unless *option* says otherwise."""

    name: str
    kind: Kind
    help: str
    default: Any = None
    routes: Route = Route.ALL
    commands: frozenset[str] = frozenset({MOUNT})
    option: str | None = None
    short: str | None = None
    #: More ``-o`` keys for the same setting.
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    #: Ids add up across sources instead of the first one winning.
    adds_up: bool = False
    #: A field of `MountConfig` (settings that only steer how others are found are not).
    mount_config: bool = True

    @property
    def long_option(self) -> str:
        return self.option or "--" + self.name.replace("_", "-")

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default

    def takes(self, route: Route) -> bool:
        return bool(self.routes & route)


_MOUNTS = frozenset({MOUNT, DEMO})

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "region",
        REGION,
        f"the Cupix region whose API to use: {', '.join(REGIONS)} (default {DEFAULT_REGION}); "
        "also names the page where its tokens are made",
        DEFAULT_REGION,
        commands=frozenset({MOUNT, LOGIN}),
        metavar="REGION",
    ),
    Setting(
        "api_url",
        URL,
        f"the API base URL (default: the region's, {api_url(DEFAULT_REGION)} for "
        f"{DEFAULT_REGION}); wins over --region",
        api_url(DEFAULT_REGION),
        metavar="URL",
    ),
    Setting(
        "token_file",
        PATH,
        "read the API token from FILE (refused if group or others may read it)",
        metavar="FILE",
        mount_config=False,
    ),
    Setting(
        "captures",
        IDS,
        "show this capture id in /captures (repeatable; ids add up across sources)",
        list,
        option="--capture",
        aliases=("capture",),
        metavar="ID",
        adds_up=True,
    ),
    Setting(
        "records",
        IDS,
        "show this record id in /records (repeatable; ids add up across sources)",
        list,
        option="--record",
        aliases=("record",),
        metavar="ID",
        adds_up=True,
    ),
    Setting(
        "cache_dir",
        PATH,
        "the persistent cache directory (made private, 0700)",
        default_cache_dir,
        commands=frozenset({MOUNT, DEMO, CACHE}),
        metavar="DIR",
    ),
    Setting(
        "cache_size",
        SIZE,
        "bound of the disk cache, e.g. 512M, 4G (default: a tenth of the free space, "
        "between 256M and 20G)",
        0,
        commands=_MOUNTS,
        metavar="SIZE",
    ),
    Setting(
        "memory_cache",
        SIZE,
        "bound of the in-memory block cache (default 64M)",
        64 << 20,
        commands=_MOUNTS,
        metavar="SIZE",
    ),
    Setting(
        "walk_ahead",
        SIZE,
        "bytes of files fetched ahead of a reader that walks the tree (cp -r, rsync), "
        "at most half of --memory-cache; 0 for none (default 16M)",
        16 << 20,
        commands=_MOUNTS,
        metavar="SIZE",
    ),
    Setting(
        "timeout",
        SECONDS,
        "seconds a read or listing may wait on the network before it fails with EIO",
        30.0,
        commands=_MOUNTS,
        metavar="SECONDS",
    ),
    Setting(
        "listing_ttl",
        SECONDS,
        "seconds listings, sizes and ETags are trusted before the API or storage is asked again",
        60.0,
        commands=_MOUNTS,
        metavar="SECONDS",
    ),
    Setting("per_page", COUNT, "page size asked of list calls (default: the API's)", metavar="N"),
    Setting(
        "offline",
        FLAG,
        "serve only what the disk cache holds (after cupixfs prefetch); needs no token",
        False,
    ),
    Setting(
        "foreground",
        FLAG,
        "stay in the foreground and log to stderr",
        False,
        routes=Route.CLI,
        commands=_MOUNTS,
        short="-f",
    ),
    Setting(
        "log_file",
        PATH,
        "where a background mount logs (default $XDG_STATE_HOME/cupixfs/cupixfs.log)",
        commands=_MOUNTS,
        metavar="FILE",
    ),
    Setting("debug", FLAG, "log every operation", False, commands=_MOUNTS),
    Setting(
        "allow_other",
        FLAG,
        "let other users see the mount (needs user_allow_other in /etc/fuse.conf)",
        False,
        commands=_MOUNTS,
    ),
    Setting(
        "config",
        PATH,
        "the config file with [profiles.NAME] tables (default "
        "$XDG_CONFIG_HOME/cupixfs/config.toml)",
        routes=Route.CLI | Route.OPTION,
        commands=frozenset({MOUNT, LOGIN, CACHE}),
        metavar="FILE",
        mount_config=False,
    ),
    Setting(
        "profile",
        TEXT,
        "use [profiles.NAME] of the config file (default: its default_profile, else "
        "[profiles.default] if present)",
        routes=Route.CLI | Route.OPTION,
        commands=frozenset({MOUNT, LOGIN, CACHE}),
        metavar="NAME",
        mount_config=False,
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}

#: What one source said: setting name -> value, with nothing for what it left unsaid.
Values = dict[str, Any]


def for_command(command: str, route: Route) -> list[Setting]:
    """The settings *command* accepts by *route*, in table order."""
    return [s for s in SETTINGS if command in s.commands and s.takes(route)]


def layer(*sources: Values) -> Values:
    """Stack sources, first (highest) first: the first that says a setting wins, except
    for ids, which add up (a pin only lists an id, so a profile's pins plus one more from
    the command line is what a user means)."""
    merged: Values = {}
    for source in sources:
        for name, value in source.items():
            if value is None:
                continue
            if name not in merged:
                merged[name] = value
            elif BY_NAME[name].adds_up:
                merged[name] = sorted(set(merged[name]) | set(value))
    return merged


def value_of(values: Values, name: str) -> Any:
    """What *values* say of setting *name*, else its default."""
    said = values.get(name)
    return BY_NAME[name].default_value() if said is None else said


# -- what a mount runs from -----------------------------------------------------------------


@dataclass
class MountConfig:
    """Everything a mount needs; `resolve` fills it, `cupixfs.mount.lifecycle` runs it.

    Every field but the first few is a setting of the table (a test checks that they
    match); their defaults live in the table, not here.
    """

    mountpoint: Path
    token: str = field(repr=False)
    #: Picks the API host (unless *api_url* is said) and the page named in token errors.
    region: str
    api_url: str
    captures: list[int]
    records: list[int]
    cache_dir: Path
    #: 0 means auto: a tenth of the cache filesystem's free space (see `cupixfs.data.disk_cache`).
    cache_size: int
    memory_cache: int
    #: File bytes fetched ahead of a reader walking the tree (0: none; `cupixfs.fs.walk`).
    walk_ahead: int
    #: Longest a read or listing may wait on the network before EIO.
    timeout: float
    #: How long listings and attributes are trusted before the API is asked again.
    listing_ttl: float
    per_page: int | None
    #: Serve only what the persistent cache holds; no token is needed, nothing is fetched.
    offline: bool
    foreground: bool
    log_file: Path | None
    debug: bool
    allow_other: bool
    #: Where *token* came from, read again when the API refuses it or on SIGHUP
    #: (None: nowhere to look, as for the demo's fixed token).
    token_source: TokenSource | None = field(default=None, repr=False)

    @classmethod
    def fields_from_settings(cls) -> set[str]:
        """The fields that come from `SETTINGS`."""
        return {f.name for f in dataclasses.fields(cls)} - {"mountpoint", "token", "token_source"}


def resolve(
    mountpoint: Path, token: str, values: Values, token_source: TokenSource | None = None
) -> MountConfig:
    """The `MountConfig` for *values* (already layered), with the table's defaults for the rest.

    The API URL is the region's unless one is said (``--api-url`` wins over ``--region``).
    """
    said = {s.name: value_of(values, s.name) for s in SETTINGS if s.mount_config}
    said["api_url"] = values.get("api_url") or api_url(said["region"])
    return MountConfig(mountpoint=mountpoint, token=token, token_source=token_source, **said)
