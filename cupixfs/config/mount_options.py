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

from cupixfs.config.settings import FLAG, SETTINGS, Route, Setting, UsageError, Values


class OptionError(UsageError):
    """A ``-o`` option that cupixfs does not understand or cannot honour."""


#: Each ``-o`` key, aliases included, and the setting it fills.
KEYS: dict[str, Setting] = {
    key: s for s in SETTINGS if s.takes(Route.OPTION) for key in (s.name, *s.aliases)
}

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


def parse(texts: list[str], sloppy: bool = False) -> Values:
    """The settings several ``-o`` strings ask for, by setting name.

    A repeated key keeps its last value, except ids, which add up. With *sloppy*
    (mount(8)'s ``-s``) unknown keys are skipped, not refused.
    """
    result: Values = {}
    for text in texts:
        for item in split(text):
            name, has_value, value = item.partition("=")
            if name in IGNORED or item.startswith(IGNORED_PREFIXES):
                continue
            if name == "rw":
                raise OptionError("cupixfs is read-only: it cannot be mounted with 'rw'")
            setting = KEYS.get(name)
            if setting is None:
                if sloppy:
                    continue
                raise OptionError(
                    f"unknown mount option {name!r} (cupixfs knows: {', '.join(sorted(KEYS))})"
                )
            if setting.kind is FLAG:
                if has_value:
                    raise OptionError(f"mount option {name!r} takes no value")
                result[setting.name] = True
                continue
            if not value:
                raise OptionError(f"mount option {name!r} needs a value: {name}=...")
            try:
                converted = setting.kind.parse(value)
            except ValueError as exc:
                raise OptionError(f"mount option {name}: {exc}") from None
            if setting.adds_up:
                result.setdefault(setting.name, []).extend(converted)
            else:
                result[setting.name] = converted
    return result
