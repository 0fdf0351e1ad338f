#!/usr/bin/env python3
"""Benchmark cupixfs against curl and rclone, all on the same fake Cupix server.

Usage: ``.venv/bin/python bench/run.py [--only NAME[,NAME]] [--quick] [--repeat N] [--data DIR]``
(root needed: it drops the page cache and builds a network namespace). Prints one table and
writes ``bench/out/results.json`` and ``bench/out/results.md``. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import atexit
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import netns
from figures import FIGURES, SLOW, BenchData, Context
from harness import BenchError, Janitor, fake_server, generate_data, mounts_under
from report import Row, notes_text, text_table, write_results

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "out"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="", help=f"comma-separated figures to run, from: {', '.join(FIGURES)}"
    )
    parser.add_argument("--quick", action="store_true", help=f"skip {' and '.join(SLOW)}")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per throughput figure, the median is kept (default 3)",
    )
    parser.add_argument(
        "--data", type=Path, default=OUT / "data", help="bench data set (generated if missing)"
    )
    parser.add_argument(
        "--scale-data",
        type=Path,
        default=OUT / "scale-data",
        help="the scale figures' data set (generated if missing, ~100 MB)",
    )
    parser.add_argument(
        "--cupixfs-src",
        type=Path,
        default=None,
        metavar="DIR",
        help="mount the cupixfs of this checkout (the folder holding cupixfs/), e.g. a "
        "baseline: git archive REV cupixfs | tar -x -C DIR",
    )
    return parser


def _selected(only: str, parser: argparse.ArgumentParser) -> list[str]:
    if not only:
        return list(FIGURES)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    return [n for n in FIGURES if n in names]


def _first_line(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def _meta(args: argparse.Namespace, started: datetime, seconds: float) -> dict[str, Any]:
    return {
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round(seconds, 1),
        "host": f"{platform.node()} {platform.release()}, {os.cpu_count()} CPUs",
        "cupixfs": _first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        "rclone": _first_line(["rclone", "version"]),
        "curl": " ".join(_first_line(["curl", "--version"]).split()[:2]),
        "options": f"repeat={args.repeat} quick={args.quick} only={args.only or 'all'}",
        "mounted cupixfs": str(args.cupixfs_src or "this checkout"),
    }


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run_figure(ctx: Context, name: str) -> Row:
    print(f"[{name}]", file=sys.stderr, flush=True)
    start = time.monotonic()
    try:
        row = FIGURES[name](ctx)
    except BenchError as exc:
        row = Row(name, error=str(exc))
    except Exception as exc:  # a bug in the bench itself: keep going, show where
        traceback.print_exc()
        row = Row(name, error=f"{type(exc).__name__}: {exc}")
    finally:
        try:
            ctx.server.reset_faults()
        except BenchError as exc:
            print(f"  cannot reset faults: {exc}", file=sys.stderr)
    row.seconds = time.monotonic() - start
    verdict = row.cells(None)
    print(f"  -> {verdict[1]} | {verdict[2]} | {verdict[3]} | {verdict[5]}", file=sys.stderr)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    names = _selected(args.only, parser)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if os.geteuid() != 0:
        print("warning: not root; cold figures cannot drop the page cache", file=sys.stderr)

    work = OUT / "work"
    work.mkdir(parents=True, exist_ok=True)
    janitor = Janitor(work / "pids.jsonl")
    atexit.register(janitor.cleanup)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    janitor.reap_previous(work)
    netns.remove_link()
    if not mounts_under(work):  # start from an empty work dir (the last run's logs go)
        shutil.rmtree(work)
        work.mkdir()

    started, t0 = datetime.now(UTC), time.monotonic()
    rows: list[Row] = []
    samples: dict[str, list[float]] = {}
    try:
        print(f"bench data in {args.data} (generated on first use, ~3 GiB)", file=sys.stderr)
        generate_data(args.data, work / "generate.log")
        with fake_server(janitor, args.data.resolve(), work / "server.log") as server:
            data = BenchData.from_model(server.dataset())
            ctx = Context(
                janitor,
                server,
                data,
                work,
                repeat=args.repeat,
                samples=samples,
                scale_dir=args.scale_data,
                src=args.cupixfs_src,
            )
            with ctx.exits:
                for name in names:
                    if args.quick and name in SLOW:
                        rows.append(Row(name, skipped="--quick"))
                        continue
                    rows.append(run_figure(ctx, name))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "bench: interrupted; mounts, processes and the netns were cleaned up", file=sys.stderr
        )
        return 130
    finally:
        janitor.cleanup()

    meta = _meta(args, started, time.monotonic() - t0)
    write_results(OUT, rows, meta, samples)
    print(text_table(rows))
    notes = notes_text(rows)
    if notes:
        print()
        print("\n".join(notes))
    print(f"\n{meta['duration_s']:.0f} s; results in {OUT}/results.json and results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
