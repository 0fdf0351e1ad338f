"""Command line for the fake server: ``python -m cupixfs.fake serve|generate``.

``serve`` is what test fixtures and the demo script start in a subprocess: it generates the
chosen profile if the data directory does not hold it yet, prints ONE JSON line with the URLs
and token (so the parent can read it and connect), and serves until SIGINT or SIGTERM, then
exits 0 without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from .sample import PROFILES, generate, profile
from .server import FakeServer

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cupixfs.fake", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", required=True, help="dataset directory (created if needed)")
        p.add_argument("--profile", choices=sorted(PROFILES), default="demo")
        p.add_argument("--seed", type=int, default=0, help="content seed (default 0)")

    gen = sub.add_parser("generate", help="write a sample dataset and exit")
    common(gen)
    serve = sub.add_parser("serve", help="generate if needed, then serve on loopback")
    common(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port")
    serve.add_argument("--token", default="fake-token")
    serve.add_argument("--per-page", type=int, default=30)
    serve.add_argument("--verbose", action="store_true", help="log every request to stderr")
    serve.add_argument(
        "--tls",
        nargs=2,
        metavar=("CERT", "KEY"),
        help="serve HTTPS with this certificate and key (PEM files); clients trust the"
        " certificate through SSL_CERT_FILE",
    )
    return parser


class _Stop(Exception):
    """Raised in the main thread by the SIGINT/SIGTERM handler."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # Raising (rather than setting an Event, whose lock the interrupted main thread may hold)
    # cannot deadlock; later signals are ignored so the shutdown itself is not interrupted.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stop


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 also after SIGINT/SIGTERM while serving)."""
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    serving = False
    try:
        data = generate(profile(args.profile), args.data, seed=args.seed)
        if args.command == "generate":
            print(json.dumps({"data": str(data), "profile": args.profile, "seed": args.seed}))
            return 0
        if args.verbose:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        server = FakeServer(
            data,
            token=args.token,
            per_page=args.per_page,
            host=args.host,
            port=args.port,
            verbose=args.verbose,
            tls=tuple(args.tls) if args.tls else None,
        ).start()
        serving = True
        try:
            sys.stdout.write(json.dumps(server.info()) + "\n")
            sys.stdout.flush()
            while True:
                signal.pause()
        finally:
            server.stop()
    except _Stop:
        # Interrupted while generating: the dataset is incomplete (dataset.json is written
        # last, so the next run regenerates it); report failure. While serving: clean exit.
        return 0 if serving else 1
