"""The config file: named profiles of mount settings, in TOML.

``$XDG_CONFIG_HOME/cupixfs/config.toml`` (or ``--config FILE``)::

    default_profile = "site-a"          # optional; else [profiles.default], else none

    [profiles.site-a]
    api_url = "https://api.cupix.works/api/v1"
    token_file = "~/.config/cupixfs/site-a.token"
    cache_dir = "/var/cache/cupixfs/site-a"
    cache_size = "20G"
    captures = [132435, 132436]

Each profile is read into `Values`, as the command line is, so layering them is
one call (`cupixfs.config.settings.layer`); its keys are the settings of
`cupixfs.config.settings.SETTINGS` that may come from a profile. A file that is wrong fails the
command with one line naming the file and the problem (tomllib's line and
column for syntax, the profile and key for an unknown key or a wrong type):
a typo must not silently fall back to a default.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cupixfs.config.settings import (
    SETTINGS,
    Route,
    Setting,
    UsageError,
    Values,
    default_config_file,
)

DEFAULT_PROFILE = "default"


class SettingsError(UsageError):
    """The config file cannot be used as written."""


@dataclass
class ConfigFile:
    """The profiles of one config file (none when the default file does not exist)."""

    path: Path | None = None
    profiles: dict[str, Values] = field(default_factory=dict)
    default_profile: str | None = None
    #: The default file's path when it does not exist (for the error message).
    missing: Path | None = None

    def select(self, name: str | None) -> tuple[str, Values]:
        """The profile the user meant: *name* (``--profile``), else the file's default.

        Returns its name too, because the keyring entry of a token is per profile.
        A named profile that does not exist is an error; no profile at all is fine.
        """
        wanted = name or self.default_profile
        if wanted is None:
            return DEFAULT_PROFILE, self.profiles.get(DEFAULT_PROFILE, {})
        if wanted not in self.profiles:
            if self.path is None:
                raise SettingsError(
                    f"no profile {wanted!r}: there is no config file {self.missing}"
                )
            known = ", ".join(sorted(self.profiles)) or "none"
            raise SettingsError(f"no profile {wanted!r} in {self.path} (profiles: {known})")
        return wanted, self.profiles[wanted]


def load(path: Path | None = None) -> ConfigFile:
    """Read *path*, or the default config file if it exists (a missing default is no error)."""
    explicit = path is not None
    path = path if path is not None else default_config_file()
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        if explicit:
            raise SettingsError(f"config file {path} does not exist") from None
        return ConfigFile(missing=path)
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:  # its message ends with "(at line L, column C)"
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    return parse(raw, path)


def parse(raw: dict[str, Any], path: Path) -> ConfigFile:
    """Check a decoded config file; relative paths in it are relative to its directory."""
    unknown = set(raw) - {"default_profile", "profiles"}
    if unknown:
        raise SettingsError(
            f"{path}: unknown key {sorted(unknown)[0]!r} "
            "(the top level has only default_profile and [profiles.NAME] tables)"
        )
    default = raw.get("default_profile")
    if default is not None and not isinstance(default, str):
        raise SettingsError(f"{path}: default_profile must be a string (a profile name)")
    tables = raw.get("profiles", {})
    if not isinstance(tables, dict):
        raise SettingsError(f"{path}: profiles must be tables: [profiles.NAME]")
    profiles = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise SettingsError(f"{path}: profiles.{name} must be a table: [profiles.{name}]")
        profiles[name] = _profile(table, f"{path}: [profiles.{name}]", path.parent)
    config = ConfigFile(path, profiles, default)
    if default is not None and default not in profiles:
        raise SettingsError(f"{path}: default_profile {default!r} has no [profiles.{default}]")
    return config


# -- one profile ------------------------------------------------------------------------

#: The keys a profile may hold.
PROFILE_KEYS: dict[str, Setting] = {s.name: s for s in SETTINGS if s.takes(Route.PROFILE)}


def _profile(table: dict[str, Any], where: str, base: Path) -> Values:
    values: Values = {}
    for key, value in table.items():
        setting = PROFILE_KEYS.get(key)
        if setting is None:
            raise SettingsError(f"{where}: unknown key {key!r} (known: {', '.join(PROFILE_KEYS)})")
        try:
            values[key] = setting.kind.toml(value, base)
        except TypeError as exc:
            raise SettingsError(f"{where}: {key} must be {exc}, not {value!r}") from None
    return values
