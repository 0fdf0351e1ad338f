"""``mount.cupixfs``: the helper mount(8) runs for ``-t fuse.cupixfs`` and fstab lines.

mount(8) looks for ``/sbin/mount.fuse.cupixfs`` (``/sbin/mount.cupixfs`` for
``-t cupixfs``) and runs it as::

    mount.fuse.cupixfs SOURCE MOUNTPOINT [-sfnv] [-N NAMESPACE] -o OPTIONS

so an administrator links our console script there once
(``ln -s /path/to/.venv/bin/mount.cupixfs /sbin/mount.fuse.cupixfs``) and
``mount /mnt/cupix`` works from an fstab line such as::

    cupixfs  /mnt/cupix  fuse.cupixfs  token_file=/etc/cupixfs/token,_netdev,noauto  0 0

This module only translates that convention into ``cupixfs mount MOUNTPOINT -o
OPTIONS``; every option means what it means there. SOURCE names a config-file
profile, unless it is ``cupixfs`` (or ``none``). mount(8) turns a SOURCE that
happens to name an existing path into its absolute path, so only its last
component is used.
"""

from __future__ import annotations

import argparse
import os
import sys

from cupixfs.commands import cli
from cupixfs.config.mount_options import split
from cupixfs.config.settings import UsageError

#: Sources that mean "no profile, just cupixfs".
PLAIN_SOURCES = {"cupixfs", "none", ""}
#: mount(8) runs helpers with PATH removed; fusermount3 and friends live here.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mount.cupixfs",
        description="mount(8) helper: mount.cupixfs SOURCE MOUNTPOINT -o OPTIONS. "
        "SOURCE is 'cupixfs' or a config-file profile name; OPTIONS are cupixfs mount "
        "options (see cupixfs mount --help) plus fstab's own (_netdev, noauto, ...).",
    )
    parser.add_argument("source", help="'cupixfs', or the name of a config-file profile")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS")
    parser.add_argument("-s", dest="sloppy", action="store_true", help="ignore unknown options")
    parser.add_argument("-f", dest="fake", action="store_true", help="do everything but mount")
    parser.add_argument("-n", dest="no_mtab", action="store_true", help="(ignored)")
    parser.add_argument("-v", dest="verbose", action="store_true", help="(ignored)")
    parser.add_argument("-N", dest="namespace", default=None, help="(not supported)")
    parser.add_argument("-t", dest="type", default=None, help="(ignored)")
    return parser


def cupixfs_argv(args: argparse.Namespace) -> list[str]:
    """The ``cupixfs mount`` command line that does what mount(8) asked."""
    profile = os.path.basename(args.source.rstrip("/"))
    options = [] if profile in PLAIN_SOURCES else [f"profile={profile}"]
    # mount(8) always adds "rw" unless told "ro"; a read-only mount is what we give either way.
    options += [item for text in args.options for item in split(text) if item != "rw"]
    argv = ["mount", args.mountpoint]
    if options:
        argv += ["-o", ",".join(_quote(item) for item in options)]
    if args.sloppy:
        argv.append("--sloppy")
    return argv


def _quote(item: str) -> str:
    """Re-quote a value with a comma so that `split` cuts it the same way again."""
    name, eq, value = item.partition("=")
    return f'{name}="{value}"' if eq and "," in value else item


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.namespace is not None:
        print(
            "mount.cupixfs: mounting into another namespace (-N) is not supported", file=sys.stderr
        )
        return 1
    if not os.environ.get("PATH"):
        os.environ["PATH"] = SAFE_PATH
    try:
        command = cupixfs_argv(args)
    except UsageError as exc:
        print(f"mount.cupixfs: {exc}", file=sys.stderr)
        return 2
    if args.fake:
        return 0
    return cli.main(command)


if __name__ == "__main__":
    sys.exit(main())
