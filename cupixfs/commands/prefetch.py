"""``cupixfs prefetch PATH...``: read mounted files whole, so the mount's disk cache holds them.

Reading through the mount (not around it) is the point: every block goes
through the same fetch, check and disk-cache path as any other read, so a later
``--offline`` mount, or a slow site connection, is served from the disk. The
files are read in 1 MiB chunks by a few threads; the total comes from
``os.stat`` first so the progress line can show an ETA. A file that fails does
not stop the others; the command ends with a summary and a non-zero exit.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from cupixfs.commands import humanize
from cupixfs.commands.progress import Progress

CHUNK = 1 << 20
DEFAULT_JOBS = 4


@dataclass
class Plan:
    """The files to read with their sizes, and what could not even be listed."""

    files: list[tuple[Path, int]] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def plan(paths: list[Path]) -> Plan:
    """Every file under *paths* (folders recursively, in name order), sized by ``os.stat``."""
    result = Plan()
    seen: set[Path] = set()

    def add(path: Path) -> None:
        if path in seen:
            return
        seen.add(path)
        try:
            result.files.append((path, os.stat(path).st_size))
        except OSError as exc:
            result.failures.append((path, _reason(exc)))

    def failed(exc: OSError) -> None:
        result.failures.append((Path(exc.filename), _reason(exc)))

    for path in paths:
        try:
            is_dir = path.is_dir()
        except OSError as exc:
            result.failures.append((path, _reason(exc)))
            continue
        if not is_dir:
            add(path)
            continue
        for dirpath, dirs, names in os.walk(path, onerror=failed):
            dirs.sort()
            for name in sorted(names):
                add(Path(dirpath, name))
    return result


def read_whole(path: Path, progress: Progress) -> None:
    """Read *path* to its end, counting every chunk (unbuffered: one read() per chunk)."""
    buffer = bytearray(CHUNK)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            progress.add(n)
    progress.file_done()


def prefetch(paths: list[Path], jobs: int = DEFAULT_JOBS, stream: TextIO = sys.stderr) -> int:
    """Read everything under *paths*; 0 if every file was read, 1 otherwise."""
    work = plan(paths)
    failures = list(work.failures)
    progress = Progress(work.total_bytes, len(work.files), stream=stream)
    started = time.monotonic()

    def one(path: Path) -> None:
        try:
            read_whole(path, progress)
        except OSError as exc:
            failures.append((path, _reason(exc)))  # list.append is atomic

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, [path for path, _ in work.files]))
    progress.finish()
    elapsed = time.monotonic() - started
    stream.write(
        f"prefetched {progress.done_files} of {len(work.files)} files, "
        f"{humanize.size(progress.done_bytes)} in {humanize.duration(elapsed)}\n"
    )
    if failures:
        stream.write(f"{len(failures)} failed:\n")
        for path, reason in failures:
            stream.write(f"  {path}: {reason}\n")
        return 1
    return 0
