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
import threading
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    data = generate(profile(args.profile), args.data, seed=args.seed)
    if args.command == "generate":
        print(json.dumps({"data": str(data), "profile": args.profile, "seed": args.seed}))
        return 0

    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server = FakeServer(
        data,
        token=args.token,
        per_page=args.per_page,
        host=args.host,
        port=args.port,
        verbose=args.verbose,
    ).start()
    try:
        sys.stdout.write(json.dumps(server.info()) + "\n")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0
