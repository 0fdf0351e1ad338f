"""A file changes on the remote while the mount has part or all of it cached.

Whatever is cached (kernel pages, memory blocks, disk blocks, the size), a reader must get one
version of the file, whole: each full read is the old content or the new content, never a mix,
and once cupixfs has seen the change, only the new content.

Why ``--listing-ttl 1``: cupixfs trusts what it knows of a file (listing, attributes, size)
for the listing TTL; only after it may a fully cached file be expected to show its new
version. One second keeps the test short; the assertions allow the TTL plus ``SLACK``.

These tests replace blobs, so they use ``private_fake`` (a copy of the data) and never touch
the session server's files.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cupixfs.fake.server import FakeServer
from tests.conftest import Mount
from tests.faults.conftest import BLOCK, DataFile, data_files, largest, pin_args

LISTING_TTL = 1.0
SLACK = 1.5


def read_whole(path: Path) -> bytes:
    """A whole file, as a user reads it (through the page cache, like ``cp`` or ``cat``)."""
    with open(path, "rb") as f:
        return f.read()


def describe(got: bytes, old: bytes, new: bytes) -> str:
    """'old', 'new', or where a read mixes versions (for a readable failure)."""
    if got == old:
        return "old"
    if got == new:
        return "new"
    spans = []
    for start in range(0, max(len(got), 1), 4096):
        piece = got[start : start + 4096]
        which = (
            "old"
            if piece == old[start : start + len(piece)]
            else "new"
            if piece == new[start : start + len(piece)]
            else "neither"
        )
        if not spans or spans[-1][1] != which:
            spans.append((start, which))
    return f"MIX ({len(got)} bytes; from offset: {spans})"


def replace(server: FakeServer, f: DataFile, size: int | None = None) -> tuple[bytes, float]:
    """Give *f* new content on the server; returns the new bytes and when it happened."""
    entry = server.dataset.replace_blob(f.blob_id, size)
    new = (server.dataset.dir / "blobs" / f.blob_id).read_bytes()
    assert hashlib.sha256(new).hexdigest() == entry["sha256"]
    return new, time.monotonic()


def mount_args(server: FakeServer) -> list[str]:
    return [*pin_args(server.dataset.snapshot()), "--listing-ttl", str(LISTING_TTL)]


def test_partly_cached_file_changes_and_reads_never_mix_versions(
    mounter: Callable[..., Any], private_fake: FakeServer
) -> None:
    video = largest(private_fake.dataset.snapshot())  # 3 blocks
    assert video.size > 2 * BLOCK
    old = (private_fake.dataset.dir / "blobs" / video.blob_id).read_bytes()
    with mounter(*mount_args(private_fake), server=private_fake) as m:
        path = m.path / video.rel
        private_fake.stats.reset()
        # Its start is now cached (pages, blocks). Not read from offset 0: a first read
        # there fetches a small file whole, unless its close comes first (a race).
        assert pread(path, 4096, 4096) == old[4096:8192]
        last = (video.size - 1) // BLOCK * BLOCK
        ranges = private_fake.stats.snapshot()["blob_ranges"]
        assert not [r for r in ranges if r[2] >= last], f"precondition: all cached ({ranges})"

        new, changed_at = replace(private_fake, video)

        # Right after the change, cupixfs may not know yet: the old file whole, or the new
        # one whole. If it learns of the change in the middle of a read, that one read may
        # fail with EIO rather than hand out a mix.
        outcomes = []
        for _ in range(3):
            try:
                outcomes.append(describe(read_whole(path), old, new))
            except OSError as exc:
                assert exc.errno == errno.EIO, exc
                outcomes.append("EIO")
            time.sleep(0.2)
        assert all(o in ("old", "new", "EIO") for o in outcomes), outcomes
        assert outcomes.count("EIO") <= 1, outcomes
        if "new" in outcomes:  # once seen, the new version stays
            assert "old" not in outcomes[outcomes.index("new") :], outcomes

        # After the listing TTL cupixfs must have seen the change: new content only.
        time.sleep(max(0.0, changed_at + LISTING_TTL + SLACK - time.monotonic()))
        later = [describe(read_whole(path), old, new) for _ in range(3)]
        assert later == ["new"] * 3, (outcomes, later)
        assert "Traceback" not in m.log_text()


def test_fully_cached_file_changes_size_and_content(
    mounter: Callable[..., Any], private_fake: FakeServer
) -> None:
    dataset = private_fake.dataset.snapshot()
    video = next(f for f in data_files(dataset) if BLOCK // 2 < f.size < BLOCK)  # one block
    old = (private_fake.dataset.dir / "blobs" / video.blob_id).read_bytes()
    with mounter(*mount_args(private_fake), server=private_fake) as m:
        path = m.path / video.rel
        assert read_whole(path) == old  # every byte of it cached, at every level
        assert path.stat().st_size == video.size

        new_size = video.size + BLOCK // 2 + 7  # now spans two blocks
        new, changed_at = replace(private_fake, video, new_size)

        time.sleep(max(0.0, changed_at + LISTING_TTL + SLACK - time.monotonic()))
        seen = {
            "stat size": path.stat().st_size,
            "listed size": listed_size(m, video),
            "content": describe(read_whole(path), old, new),
        }
        assert seen == {"stat size": new_size, "listed size": new_size, "content": "new"}


def test_change_detected_by_one_reader_reaches_the_next(
    mounter: Callable[..., Any], private_fake: FakeServer
) -> None:
    # The change is noticed on a read of an uncached block (its ETag differs). That read may
    # return the new bytes or EIO; but from then on, a file opened anew must be the new
    # version throughout: no cached block of the old one (its start, still cached) is served.
    video = largest(private_fake.dataset.snapshot())
    old = (private_fake.dataset.dir / "blobs" / video.blob_id).read_bytes()
    with mounter(*mount_args(private_fake), server=private_fake) as m:
        path = m.path / video.rel
        # The start, read by random access: a first read at offset 0 would fetch this small
        # file whole, leaving no uncached block to notice the change on.
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no kernel readahead past them
        try:
            assert os.pread(fd, 100, BLOCK) == old[BLOCK : BLOCK + 100]
            assert os.pread(fd, BLOCK, 0) == old[:BLOCK]
        finally:
            os.close(fd)
        new, _ = replace(private_fake, video)
        tail = video.size - 100
        try:
            got_tail = pread(path, tail, 100)
        except OSError as exc:
            assert exc.errno == errno.EIO, exc
        else:
            assert got_tail == new[tail:], describe(got_tail, old[tail:], new[tail:])
        got_head = pread(path, 0, BLOCK)
        assert got_head == new[:BLOCK], describe(got_head, old[:BLOCK], new[:BLOCK])
        got = read_whole(path)
        assert got == new, describe(got, old, new)


def pread(path: Path, offset: int, length: int) -> bytes:
    """One read(2) on a file opened for it (through the page cache, as a user would)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def listed_size(m: Mount, f: DataFile) -> int:
    directory = (m.path / f.rel).parent
    with os.scandir(directory) as entries:
        return next(e.stat().st_size for e in entries if e.name == Path(f.rel).name)
