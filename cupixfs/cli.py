"""The ``cupixfs`` command: parse arguments, pick a command, one-line errors, exit codes.

Every option that also exists in the config file defaults to None here, so
that `Options.over` can tell "not said on the command line" from "said the
default", and the precedence stays: command line > config profile > defaults.
The commands' work lives in their own modules; this one only parses and routes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cupixfs import __version__, mount_options, settings
from cupixfs.api.client import DEFAULT_API_URL
from cupixfs.config import (
    Options,
    UsageError,
    default_cache_dir,
    default_config_file,
    parse_positive_int,
    parse_seconds,
    parse_size,
    resolve,
)

EXIT_USAGE = 2


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap one of config's parsers so argparse reports its message as a usage error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__.removeprefix("parse_")  # argparse names it in errors
    return convert


_size = _argument_type(parse_size)
_positive_int = _argument_type(parse_positive_int)
_seconds = _argument_type(parse_seconds)


# -- shared option groups -------------------------------------------------------------------


def _add_profile_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"config file with [profiles.NAME] tables (default {default_config_file()})",
    )
    parser.add_argument(
        "--profile",
        default=None,
        metavar="NAME",
        help="use [profiles.NAME] of the config file (default: its default_profile, "
        "else [profiles.default] if present)",
    )


def _add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="block cache directory (default: the profile's cache_dir, "
        f"else {default_cache_dir()})",
    )


def _add_mount_options(parser: argparse.ArgumentParser) -> None:
    """The options `mount` and `demo` share; each may also come from a profile or -o."""
    _add_cache_dir(parser)
    parser.add_argument(
        "--cache-size",
        type=_size,
        default=None,
        metavar="SIZE",
        help="bound of the disk cache, e.g. 512M, 4G (default: a tenth of the free space, "
        "256M to 20G)",
    )
    parser.add_argument(
        "--memory-cache",
        type=_size,
        default=None,
        metavar="SIZE",
        help="bound of the in-memory block cache (default 64M)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="seconds a read or listing may wait on the network before EIO (default 30)",
    )
    parser.add_argument(
        "--listing-ttl",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="seconds a directory listing is trusted (default 60)",
    )
    parser.add_argument(
        "--foreground", "-f", action="store_true", help="stay in the foreground, log to stderr"
    )
    parser.add_argument("--debug", action="store_true", default=None, help="log every operation")
    parser.add_argument(
        "--allow-other",
        action="store_true",
        default=None,
        help="let other users see the mount (needs user_allow_other in /etc/fuse.conf)",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="where a background mount logs (default $XDG_STATE_HOME/cupixfs/cupixfs.log)",
    )


# -- the parser -----------------------------------------------------------------------------


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
    mount.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="comma-separated mount options, as in fstab: api_url=, token_file=, cache_dir=, "
        "cache_size=, memory_cache=, timeout=, listing_ttl=, per_page=, capture=ID[:ID...], "
        "record=ID[:ID...], log_file=, profile=, config=, allow_other, debug, offline; "
        "generic ones (ro, _netdev, noauto, nofail, x-systemd.*, ...) are ignored. "
        "A long option given too wins over -o",
    )
    mount.add_argument(
        "--sloppy",
        action="store_true",
        help="ignore unknown -o options (mount -s) instead of failing",
    )
    mount.add_argument(
        "--api-url",
        default=None,
        metavar="URL",
        help=f"API base URL (default {DEFAULT_API_URL})",
    )
    mount.add_argument(
        "--token-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="read the API token from FILE (refused if group/other may read it)",
    )
    mount.add_argument(
        "--capture",
        type=_positive_int,
        action="append",
        default=None,
        metavar="ID",
        help="show this capture id in /captures (repeatable; adds to the profile's captures)",
    )
    mount.add_argument(
        "--record",
        type=_positive_int,
        action="append",
        default=None,
        metavar="ID",
        help="show this record id in /records (repeatable; adds to the profile's records)",
    )
    mount.add_argument(
        "--per-page",
        type=_positive_int,
        default=None,
        metavar="N",
        help="page size asked of list calls (default: the API's)",
    )
    mount.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="serve only what the disk cache holds (after cupixfs prefetch); needs no token",
    )
    _add_profile_options(mount)
    _add_mount_options(mount)
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
    _add_mount_options(demo)
    demo.set_defaults(func=cmd_demo)

    login = commands.add_parser(
        "login",
        help="store an API token in the OS keyring",
        description="Read an API token from a hidden prompt (or the first line of stdin) and "
        "store it in the OS keyring for the profile; mounts of that profile then need no "
        "CUPIX_API_TOKEN or token file. Needs the optional keyring package: "
        "pip install 'cupixfs[keyring]'.",
    )
    _add_profile_options(login)
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
    _add_cache_dir(stats)
    _add_profile_options(stats)
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(func=cmd_cache_stats)
    clear = cache_commands.add_parser(
        "clear",
        help="remove cached data: all of it, or that of mounted files/folders",
        description="Without PATH, empty the cache. With PATH (a file or folder on a cupixfs "
        "mount), remove only the cached blocks and sizes of the files under it, so their next "
        "read asks the server again. Give the --cache-dir the mount uses.",
    )
    clear.add_argument("paths", type=Path, nargs="*", metavar="PATH", help="mounted file or folder")
    _add_cache_dir(clear)
    _add_profile_options(clear)
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
        type=_positive_int,
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


# -- from arguments to settings ---------------------------------------------------------------


def apply_mount_options(args: argparse.Namespace) -> None:
    """Fill what the long options left unsaid from ``-o``; capture/record ids add up."""
    for dest, value in mount_options.parse(args.options, sloppy=args.sloppy).items():
        current = getattr(args, dest)
        if isinstance(value, list):
            setattr(args, dest, (current or []) + value)
        elif current is None:
            setattr(args, dest, value)


def command_line_options(args: argparse.Namespace) -> Options:
    """What this command line said (None where it said nothing)."""
    return Options(
        api_url=getattr(args, "api_url", None),
        token_file=getattr(args, "token_file", None),
        cache_dir=getattr(args, "cache_dir", None),
        cache_size=getattr(args, "cache_size", None),
        memory_cache=getattr(args, "memory_cache", None),
        timeout=getattr(args, "timeout", None),
        listing_ttl=getattr(args, "listing_ttl", None),
        per_page=getattr(args, "per_page", None),
        captures=getattr(args, "capture", None),
        records=getattr(args, "record", None),
        log_file=getattr(args, "log_file", None),
        allow_other=getattr(args, "allow_other", None),
        debug=getattr(args, "debug", None),
        offline=getattr(args, "offline", None),
    )


def _profile(args: argparse.Namespace) -> tuple[str, Options]:
    return settings.load(args.config).select(args.profile)


def _cache_dir(args: argparse.Namespace) -> tuple[Path, Options]:
    _name, profile = _profile(args)
    return args.cache_dir or profile.cache_dir or default_cache_dir(), profile


# -- commands -------------------------------------------------------------------------------


def cmd_mount(args: argparse.Namespace) -> int:
    from cupixfs import mount
    from cupixfs.token import find_token

    apply_mount_options(args)
    name, profile = _profile(args)
    said = command_line_options(args)
    options = said.over(profile)
    token = find_token(said.token_file, profile.token_file, name, required=not options.offline)
    return mount.run(resolve(args.mountpoint, token, options, args.foreground))


def cmd_unmount(args: argparse.Namespace) -> int:
    from cupixfs.mount import MountError, unmount

    try:
        unmount(args.mountpoint)
    except MountError as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cupixfs import mount
    from cupixfs.fake.sample import generate, profile
    from cupixfs.fake.server import FakeServer

    options = command_line_options(args)
    data_dir = args.data_dir or default_cache_dir() / "demo-data"
    mountpoint = args.mountpoint or Path(tempfile.mkdtemp(prefix="cupixfs-demo-"))
    mountpoint.mkdir(parents=True, exist_ok=True)
    print(f"cupixfs demo: generating sample data in {data_dir} ...", file=sys.stderr)
    generate(profile("demo"), data_dir)
    with FakeServer(data_dir, token="demo-token") as server:
        options.api_url = server.api_url
        options.captures = sorted(server.dataset.captures)
        options.records = sorted(server.dataset.records)
        config = resolve(mountpoint, "demo-token", options, foreground=True)
        print(
            f"cupixfs demo: fake Cupix API at {server.api_url}\n"
            f"cupixfs demo: mounted at {mountpoint}  (try: ls -lR {mountpoint})\n"
            "cupixfs demo: press Ctrl-C to unmount and stop",
            file=sys.stderr,
        )
        return mount.run(config)


def cmd_login(args: argparse.Namespace) -> int:
    from cupixfs.token import keyring_module, keyring_set, prompt_token

    name, _profile_options = _profile(args)
    keyring_module()  # say "no keyring" before asking for a token, not after
    keyring_set(name, prompt_token())
    print(f"cupixfs: token stored in the OS keyring for profile {name!r}", file=sys.stderr)
    return 0


def cmd_cache_stats(args: argparse.Namespace) -> int:
    from cupixfs.cache_cmd import stats
    from cupixfs.data.disk_cache import default_cache_size

    cache_dir, profile = _cache_dir(args)
    bound = profile.cache_size or default_cache_size(cache_dir)
    return stats(cache_dir, bound, as_json=args.json)


def cmd_cache_clear(args: argparse.Namespace) -> int:
    from cupixfs.cache_cmd import clear

    cache_dir, _profile_options = _cache_dir(args)
    return clear(cache_dir, args.paths)


def cmd_prefetch(args: argparse.Namespace) -> int:
    from cupixfs.prefetch import prefetch

    return prefetch(args.paths, jobs=args.jobs)


def cmd_status(args: argparse.Namespace) -> int:
    from cupixfs.status_cmd import status

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
