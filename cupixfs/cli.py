"""The ``cupixfs`` command: parse arguments, pick a command, one-line errors, exit codes."""

from __future__ import annotations

import argparse
import os
import stat
import sys
import tempfile
from pathlib import Path

from cupixfs import __version__
from cupixfs.api.client import DEFAULT_API_URL
from cupixfs.config import MountConfig, default_cache_dir, parse_size


class CliError(Exception):
    """A usage problem; its message is printed as one line."""


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive id: {text!r}")
    return int(text)


def read_token(token_file: Path | None) -> str:
    """The API token: from ``--token-file`` (which must be private) or CUPIX_API_TOKEN."""
    if token_file is not None:
        try:
            mode = token_file.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise CliError(
                    f"token file {token_file} is readable by others "
                    f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {token_file}"
                )
            token = token_file.read_text().strip()
        except OSError as exc:
            raise CliError(f"cannot read token file {token_file}: {exc.strerror}") from None
    else:
        token = os.environ.get("CUPIX_API_TOKEN", "").strip()
    if not token:
        raise CliError("no API token: set CUPIX_API_TOKEN or pass --token-file FILE")
    return token


def _add_mount_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"block cache directory (default {default_cache_dir()})",
    )
    parser.add_argument(
        "--cache-size",
        type=_size,
        default="2G",
        help="bound of the disk cache, e.g. 512M, 4G (default 2G)",
    )
    parser.add_argument(
        "--memory-cache",
        type=_size,
        default="64M",
        help="bound of the in-memory block cache (default 64M)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds a read or listing may wait on the network before EIO (default 30)",
    )
    parser.add_argument(
        "--listing-ttl",
        type=float,
        default=60.0,
        help="seconds a directory listing is trusted (default 60)",
    )
    parser.add_argument(
        "--foreground", "-f", action="store_true", help="stay in the foreground, log to stderr"
    )
    parser.add_argument("--debug", action="store_true", help="log every operation")
    parser.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users see the mount (needs user_allow_other)",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=None,
        help="where a background mount logs (default: XDG state dir)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cupixfs",
        description="Mount the Cupix cloud (captures, videos, point clouds) as a read-only drive.",
    )
    parser.add_argument("--version", action="version", version=f"cupixfs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount = commands.add_parser(
        "mount",
        help="mount the Cupix API at MOUNTPOINT",
        description="Mount the Cupix API. The token comes from "
        "CUPIX_API_TOKEN or --token-file, never from the command line.",
    )
    mount.add_argument("mountpoint", type=Path)
    mount.add_argument(
        "--api-url", default=DEFAULT_API_URL, help=f"API base URL (default {DEFAULT_API_URL})"
    )
    mount.add_argument(
        "--token-file", type=Path, default=None, help="read the API token from this file (mode 600)"
    )
    mount.add_argument(
        "--capture",
        type=_positive_int,
        action="append",
        default=[],
        metavar="ID",
        help="show this capture id in /captures (repeatable)",
    )
    mount.add_argument(
        "--record",
        type=_positive_int,
        action="append",
        default=[],
        metavar="ID",
        help="show this record id in /records (repeatable)",
    )
    mount.add_argument(
        "--per-page",
        type=_positive_int,
        default=None,
        help="page size asked of list calls (default: the API's)",
    )
    _add_mount_options(mount)

    unmount = commands.add_parser("unmount", help="unmount a cupixfs mount")
    unmount.add_argument("mountpoint", type=Path)

    demo = commands.add_parser(
        "demo", help="mount a built-in fake Cupix server with sample data (no account needed)"
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
        help="where the sample data is generated (default: in the cache dir)",
    )
    _add_mount_options(demo)
    return parser


def _config(args: argparse.Namespace, mountpoint: Path, token: str, api_url: str) -> MountConfig:
    return MountConfig(
        mountpoint=mountpoint,
        token=token,
        api_url=api_url,
        cache_dir=args.cache_dir or default_cache_dir(),
        cache_size=args.cache_size,
        memory_cache=args.memory_cache,
        captures=list(getattr(args, "capture", [])),
        records=list(getattr(args, "record", [])),
        foreground=args.foreground,
        debug=args.debug,
        allow_other=args.allow_other,
        timeout=args.timeout,
        listing_ttl=args.listing_ttl,
        per_page=getattr(args, "per_page", None),
        log_file=args.log_file,
    )


def cmd_mount(args: argparse.Namespace) -> int:
    from cupixfs import mount

    token = read_token(args.token_file)
    return mount.run(_config(args, args.mountpoint, token, args.api_url))


def cmd_unmount(args: argparse.Namespace) -> int:
    from cupixfs.mount import MountError, unmount

    try:
        unmount(args.mountpoint)
    except MountError as exc:
        raise CliError(str(exc)) from None
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cupixfs import mount
    from cupixfs.fake.sample import generate, profile
    from cupixfs.fake.server import FakeServer

    data_dir = args.data_dir or default_cache_dir() / "demo-data"
    mountpoint = args.mountpoint or Path(tempfile.mkdtemp(prefix="cupixfs-demo-"))
    mountpoint.mkdir(parents=True, exist_ok=True)
    print(f"cupixfs demo: generating sample data in {data_dir} ...", file=sys.stderr)
    generate(profile("demo"), data_dir)
    with FakeServer(data_dir, token="demo-token") as server:
        config = _config(args, mountpoint, "demo-token", server.api_url)
        config.foreground = True
        config.captures = sorted(server.dataset.captures)
        config.records = sorted(server.dataset.records)
        print(
            f"cupixfs demo: fake Cupix API at {server.api_url}\n"
            f"cupixfs demo: mounted at {mountpoint}  (try: ls -lR {mountpoint})\n"
            "cupixfs demo: press Ctrl-C to unmount and stop",
            file=sys.stderr,
        )
        return mount.run(config)


COMMANDS = {"mount": cmd_mount, "unmount": cmd_unmount, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CliError as exc:
        print(f"cupixfs: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
