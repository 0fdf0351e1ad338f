"""The ``cupixfs`` command: parse arguments, pick a command, one-line errors, exit codes.

The options that are settings come from the one table,
`cupixfs.config.settings.SETTINGS`: each command gets the long options of the
settings it accepts, defaulting to None so that "not said" stays apart from "said
the default", and the precedence stays: command line > ``-o`` > config profile >
defaults. The commands' work lives in their own modules; this one only parses
and routes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cupixfs import __version__
from cupixfs.config import mount_options, profiles
from cupixfs.config.settings import (
    CACHE,
    DEMO,
    FLAG,
    LOGIN,
    MOUNT,
    Route,
    Setting,
    UsageError,
    Values,
    for_command,
    layer,
    parse_positive_int,
    resolve,
    value_of,
)

EXIT_USAGE = 2


def _argument_type(kind_name: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap a setting kind's parser so argparse reports its message as a usage error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = kind_name  # argparse names it in errors
    return convert


def _help(setting: Setting) -> str:
    default = setting.default_value()
    if setting.kind is FLAG or default in (None, 0, []) or "default" in setting.help:
        return setting.help
    shown = f"{default:g}" if isinstance(default, float) else default
    return f"{setting.help} (default {shown})"


def add_settings(parser: argparse.ArgumentParser, command: str) -> None:
    """The long options of every setting *command* takes on the command line."""
    for setting in for_command(command, Route.CLI):
        flags = [setting.long_option, *([setting.short] if setting.short else [])]
        if setting.kind is FLAG:
            parser.add_argument(
                *flags, dest=setting.name, action="store_true", default=None, help=_help(setting)
            )
            continue
        parser.add_argument(
            *flags,
            dest=setting.name,
            type=_argument_type(setting.kind.name, setting.kind.parse),
            action="extend" if setting.adds_up else "store",
            default=None,
            metavar=setting.metavar,
            help=_help(setting),
        )


def said(args: argparse.Namespace, command: str) -> Values:
    """The settings this command line said, long options over ``-o`` (ids add up)."""
    long_options = {s.name: getattr(args, s.name, None) for s in for_command(command, Route.CLI)}
    options = mount_options.parse(getattr(args, "options", []), getattr(args, "sloppy", False))
    return layer(long_options, options)


def profile_of(values: Values) -> tuple[str, Values]:
    """The config-file profile the command line chose (by ``--config``/``--profile``)."""
    return profiles.load(values.get("config")).select(values.get("profile"))


# -- the parser -----------------------------------------------------------------------------


def _positive_int() -> Callable[[str], Any]:
    return _argument_type("positive_int", parse_positive_int)


def _mount_parser(commands: Any) -> None:
    mount = commands.add_parser(
        "mount",
        help="mount the Cupix API at MOUNTPOINT",
        description="Mount the Cupix API read-only. Settings come from the command line "
        "(long options or -o), then the config-file profile, then defaults. The token "
        "comes from --token-file, CUPIX_API_TOKEN, the profile's token_file, or the "
        "keyring (cupixfs login), in that order; never from the command line.",
    )
    mount.add_argument("mountpoint", type=Path)
    keys = ", ".join(
        f"{s.name}" if s.kind is FLAG else f"{s.name}=" for s in for_command(MOUNT, Route.OPTION)
    )
    mount.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTIONS",
        help=f"comma-separated mount options, as in fstab: {keys} (ids: capture=ID:ID...); "
        "generic ones (ro, _netdev, noauto, nofail, x-systemd.*, ...) are ignored. "
        "A long option given too wins over -o",
    )
    mount.add_argument(
        "--sloppy",
        action="store_true",
        help="ignore unknown -o options (mount -s) instead of failing",
    )
    add_settings(mount, MOUNT)
    mount.set_defaults(func=cmd_mount)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cupixfs",
        description="Mount the Cupix cloud (captures, videos, point clouds) as a read-only drive.",
    )
    parser.add_argument("--version", action="version", version=f"cupixfs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _mount_parser(commands)

    unmount = commands.add_parser(
        "unmount", help="unmount a cupixfs mount", description="Unmount with fusermount3 -u."
    )
    unmount.add_argument("mountpoint", type=Path)
    unmount.set_defaults(func=cmd_unmount)

    demo = commands.add_parser(
        "demo",
        help="mount a built-in fake Cupix server with sample data (no account needed)",
        description="Start the fake Cupix server with sample data and mount it in the "
        "foreground; Ctrl-C unmounts and stops.",
    )
    demo.add_argument(
        "mountpoint",
        type=Path,
        nargs="?",
        default=None,
        help="where to mount (default: a new directory under /tmp)",
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the sample data is generated (default: in the cache dir)",
    )
    add_settings(demo, DEMO)
    demo.set_defaults(func=cmd_demo)

    login = commands.add_parser(
        "login",
        help="store an API token in the OS keyring",
        description="Read an API token from a hidden prompt (or the first line of stdin) and "
        "store it in the OS keyring for the profile; mounts of that profile then need no "
        "CUPIX_API_TOKEN or token file. Needs the optional keyring package: "
        "pip install 'cupixfs[keyring]'.",
    )
    add_settings(login, LOGIN)
    login.set_defaults(func=cmd_login)

    cache = commands.add_parser(
        "cache",
        help="show or clear the persistent block cache",
        description="Show or clear the persistent block cache (safe while mounted).",
    )
    cache_commands = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    stats = cache_commands.add_parser(
        "stats",
        help="size, bound, block files, and the last mount's hit ratio",
        description="Show the cache's size on disk and its bound, the number of block files, "
        "and the hit ratio of the last (or running) mount that used it.",
    )
    add_settings(stats, CACHE)
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(func=cmd_cache_stats)
    clear = cache_commands.add_parser(
        "clear",
        help="remove cached data: all of it, or that of mounted files/folders",
        description="Without PATH, empty the cache. With PATH (a file or folder on a cupixfs "
        "mount), remove only the cached blocks and sizes of the files under it, so their next "
        "read asks the server again: in the cache of the mount they are on, unless "
        "--cache-dir (or a profile's cache_dir) says another.",
    )
    clear.add_argument("paths", type=Path, nargs="*", metavar="PATH", help="mounted file or folder")
    add_settings(clear, CACHE)
    clear.set_defaults(func=cmd_cache_clear)

    prefetch = commands.add_parser(
        "prefetch",
        help="read mounted files whole so the disk cache holds them",
        description="Read every file under PATH through the mount, so its disk cache holds "
        "them (for an --offline mount or a slow connection). Shows progress on stderr; "
        "exits 1 with a summary if any file failed. The disk cache's --cache-size must be "
        "large enough to hold them.",
    )
    prefetch.add_argument(
        "paths", type=Path, nargs="+", metavar="PATH", help="mounted file or folder"
    )
    prefetch.add_argument(
        "--jobs",
        "-j",
        type=_positive_int(),
        default=4,
        metavar="N",
        help="files read at once (default 4)",
    )
    prefetch.set_defaults(func=cmd_prefetch)

    status = commands.add_parser(
        "status",
        help="show a running mount's counters",
        description="Show the counters of the cupixfs mount at MOUNTPOINT "
        "(from its control file MOUNTPOINT/.cupixfs/status).",
    )
    status.add_argument("mountpoint", type=Path)
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(func=cmd_status)
    return parser


# -- commands -------------------------------------------------------------------------------


def cmd_mount(args: argparse.Namespace) -> int:
    from cupixfs.api.regions import token_page
    from cupixfs.config.token import NO_TOKEN, TokenError, find_token
    from cupixfs.mount import lifecycle

    command_line = said(args, MOUNT)
    name, profile = profile_of(command_line)
    values = layer(command_line, profile)
    try:
        token, source = find_token(
            command_line.get("token_file"),
            profile.get("token_file"),
            name,
            required=not value_of(values, "offline"),
        )
    except TokenError as exc:
        if str(exc) != NO_TOKEN:
            raise
        page = token_page(value_of(values, "region"))
        raise TokenError(f"{exc}; create a token at {page}") from None
    return lifecycle.run(resolve(args.mountpoint, token, values, source))


def cmd_unmount(args: argparse.Namespace) -> int:
    from cupixfs.mount.lifecycle import MountError, unmount

    try:
        unmount(args.mountpoint)
    except MountError as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cupixfs.core import cache_layout as layout
    from cupixfs.fake.sample import generate, profile
    from cupixfs.fake.server import FakeServer
    from cupixfs.mount import lifecycle

    values = said(args, DEMO)
    data_dir = args.data_dir or value_of(values, "cache_dir") / layout.DEMO_DATA
    mountpoint = args.mountpoint or Path(tempfile.mkdtemp(prefix="cupixfs-demo-"))
    mountpoint.mkdir(parents=True, exist_ok=True)
    print(f"cupixfs demo: generating sample data in {data_dir} ...", file=sys.stderr)
    generate(profile("demo"), data_dir)
    with FakeServer(data_dir, token="demo-token") as server:
        values.update(
            api_url=server.api_url,
            captures=sorted(server.dataset.captures),
            records=sorted(server.dataset.records),
            foreground=True,
        )
        config = resolve(mountpoint, "demo-token", values)
        print(
            f"cupixfs demo: fake Cupix API at {server.api_url}\n"
            f"cupixfs demo: mounted at {mountpoint}\n"
            f"cupixfs demo: try: ls -lR '{mountpoint}/projects'; ls -l '{mountpoint}/captures'\n"
            "cupixfs demo: press Ctrl-C to unmount and stop",
            file=sys.stderr,
        )
        return lifecycle.run(config)


def cmd_login(args: argparse.Namespace) -> int:
    from cupixfs.api.regions import token_page
    from cupixfs.config.token import keyring_module, keyring_set, prompt_token

    command_line = said(args, LOGIN)
    name, profile = profile_of(command_line)
    region = value_of(layer(command_line, profile), "region")
    keyring_module()  # say "no keyring" before asking for a token, not after
    if sys.stdin.isatty():
        print(f"cupixfs: create a token at {token_page(region)}", file=sys.stderr)
    keyring_set(name, prompt_token())
    print(f"cupixfs: token stored in the OS keyring for profile {name!r}", file=sys.stderr)
    return 0


def _cache_values(args: argparse.Namespace) -> Values:
    command_line = said(args, CACHE)
    return layer(command_line, profile_of(command_line)[1])


def cmd_cache_stats(args: argparse.Namespace) -> int:
    from cupixfs.commands.cache import stats
    from cupixfs.data.disk_cache import default_cache_size

    values = _cache_values(args)
    cache_dir = value_of(values, "cache_dir")
    bound = value_of(values, "cache_size") or default_cache_size(cache_dir)
    return stats(cache_dir, bound, as_json=args.json)


def cmd_cache_clear(args: argparse.Namespace) -> int:
    from cupixfs.commands.cache import clear, mount_cache_dir

    values = _cache_values(args)
    cache_dir = value_of(values, "cache_dir")
    if args.paths and values.get("cache_dir") is None:
        # Files on a running mount: that mount's cache, whatever the default is here.
        cache_dir = mount_cache_dir(args.paths[0]) or cache_dir
    return clear(cache_dir, args.paths)


def cmd_prefetch(args: argparse.Namespace) -> int:
    from cupixfs.commands.prefetch import prefetch

    return prefetch(args.paths, jobs=args.jobs)


def cmd_status(args: argparse.Namespace) -> int:
    from cupixfs.commands.status import status

    return status(args.mountpoint, as_json=args.json)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except UsageError as exc:
        print(f"cupixfs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
