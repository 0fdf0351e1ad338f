"""The API and storage go away: reads and listings fail with EIO in bounded time, never hang;
a listing already seen may be served stale; when the service is back the same mount works.

Mounts here use ``--timeout 3``: no read or listing may wait on the network longer than that
(plus ``SLACK`` for the kernel round trip and a loaded machine) before it returns EIO.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cupixfs.fake.server import FakeServer
from tests.conftest import Mount
from tests.faults.conftest import (
    BLOCK,
    DataFile,
    blob_bytes,
    drop_page_cache,
    errno_name,
    largest,
    pin_args,
    restart_on_same_port,
    sha256_fresh,
    timed_errno,
)

TIMEOUT = 3.0
SLACK = 0.75
LISTING_TTL = "1"  # listings go stale fast, so the outage test sees a listing *needing* the API


def _main_capture(dataset: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in dataset["captures"] if c["name"] == "main")


def _single_capture(dataset: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in dataset["captures"] if c["name"] == "single")


def _last_block_untouched(fake: FakeServer, f: DataFile) -> int:
    """Offset inside *f*'s last block, asserting the server never sent any of that block."""
    last = (f.size - 1) // BLOCK * BLOCK
    sent = [r for r in fake.stats.snapshot()["blob_ranges"] if r[0] == f.blob_id and r[2] >= last]
    assert sent == [], f"precondition: the last block was already fetched ({sent})"
    return last + 10


@contextmanager
def opened_mid_file(m: Mount, f: DataFile, content: bytes) -> Iterator[int]:
    """A file descriptor on *f* that has read a little of its second block: a reader in the
    middle of a file. (A first read at offset 0 would fetch a file this small whole.)"""
    fd = os.open(m.path / f.rel, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no kernel readahead past it
    try:
        assert os.pread(fd, 4096, BLOCK) == content[BLOCK : BLOCK + 4096]
        yield fd
    finally:
        os.close(fd)


def pread_past_cache(fd: int, offset: int, length: int = 4096) -> bytes:
    drop_page_cache(fd)
    return os.pread(fd, length, offset)


def test_outage_mid_read_is_eio_within_the_bound_and_the_mount_recovers(
    mounter: Callable[..., Any], fake: FakeServer, dataset: dict[str, Any]
) -> None:
    video = largest(dataset)
    content = blob_bytes(fake, video.blob_id)
    main = _main_capture(dataset)
    videos_dir = Path("captures", str(main["id"]), "videos")
    never_listed = Path("captures", str(_single_capture(dataset)["id"]), "videos")
    args = ("--timeout", str(TIMEOUT), "--listing-ttl", LISTING_TTL)
    # Every check is noted, not asserted at once, so a failure shows the whole picture.
    timings: list[tuple[str, str, float]] = []
    with mounter(*pin_args(dataset), *args) as m:
        before = sorted(os.listdir(m.path / videos_dir))
        fake.stats.reset()
        with opened_mid_file(m, video, content) as fd:
            offset = _last_block_untouched(fake, video)
            time.sleep(float(LISTING_TTL) + 0.2)  # the listing is now stale

            fake.faults.update(outage=True)
            # The reader's next read(2) fails with EIO within --timeout; and so do its retries.
            for attempt in ("read mid-file", "read it again", "and again"):
                code, seconds = timed_errno(lambda: pread_past_cache(fd, offset))
                timings.append((attempt, errno_name(code), seconds))

            # A listing already seen: its last contents, or EIO, within the bound.
            listing: list[str] | None = None

            def list_stale() -> None:
                nonlocal listing
                listing = sorted(os.listdir(m.path / videos_dir))

            code, seconds = timed_errno(list_stale)
            stale_ok = code == errno.EIO or listing == before
            timings.append(("list a stale dir", "EIO" if stale_ok else errno_name(code), seconds))

            # A directory never listed has nothing to fall back on: EIO, within the bound.
            code, seconds = timed_errno(lambda: os.listdir(m.path / never_listed))
            timings.append(("list a new dir", errno_name(code), seconds))

            fake.faults.update(outage=False)
            # Same mount, same open file, no remount: everything works again.
            assert pread_past_cache(fd, offset) == content[offset : offset + 4096]
        assert sha256_fresh(m.path / video.rel) == video.sha256
        assert sorted(os.listdir(m.path / videos_dir)) == before
        assert len(os.listdir(m.path / never_listed)) == len(_single_capture(dataset)["video_ids"])
        assert m.process.poll() is None
        log = m.log_text()
    assert "Traceback" not in log
    bad = [(what, result, round(t, 2)) for what, result, t in timings]
    bad = [b for b in bad if b[1] != "EIO" or b[2] > TIMEOUT + SLACK]
    assert bad == [], f"want EIO within {TIMEOUT + SLACK}s; got {bad}"


def test_server_stopped_then_restarted_on_the_same_port(
    mounter: Callable[..., Any], private_fake: FakeServer
) -> None:
    # The server process is gone (connection refused), then a new one comes up on the same
    # port with a new signing key: the mount's old signed URLs are now refused (403) too.
    dataset = private_fake.dataset.snapshot()
    video = largest(dataset)
    content = blob_bytes(private_fake, video.blob_id)
    with mounter(*pin_args(dataset), "--timeout", str(TIMEOUT), server=private_fake) as m:
        private_fake.stats.reset()
        with opened_mid_file(m, video, content) as fd:
            offset = _last_block_untouched(private_fake, video)

            private_fake.stop()
            timings = [timed_errno(lambda: pread_past_cache(fd, offset)) for _ in range(2)]
            timings = [(errno_name(code), round(seconds, 2)) for code, seconds in timings]
            bad = [t for t in timings if t[0] != "EIO" or t[1] > TIMEOUT + SLACK]
            assert bad == [], f"want EIO within {TIMEOUT + SLACK}s; got {timings}"

            restarted = restart_on_same_port(private_fake)
            try:
                assert pread_past_cache(fd, offset) == content[offset : offset + 4096]
                assert sha256_fresh(m.path / video.rel) == video.sha256
            finally:
                restarted.stop()
        assert m.process.poll() is None


def test_sigint_during_an_outage_unmounts_cleanly(
    mounter: Callable[..., Any], fake: FakeServer, dataset: dict[str, Any]
) -> None:
    # A read is stuck waiting on a dead network when the user presses Ctrl-C on the mount:
    # the process ends at once with status 0, the mount is gone, and the reader is released.
    video = largest(dataset)
    content = blob_bytes(fake, video.blob_id)
    with mounter(*pin_args(dataset), "--timeout", "30") as m:
        fake.stats.reset()
        fd = os.open(m.path / video.rel, os.O_RDONLY)
        # Mid-file (a first read at offset 0 would fetch this small file whole).
        assert os.pread(fd, 4096, BLOCK) == content[BLOCK : BLOCK + 4096]
        offset = _last_block_untouched(fake, video)
        fake.faults.update(outage=True)
        outcome: dict[str, Any] = {}

        def reader() -> None:
            outcome["errno"], outcome["seconds"] = timed_errno(lambda: pread_past_cache(fd, offset))

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive(), outcome  # the read is waiting on the network
        m.process.send_signal(signal.SIGINT)
        assert m.process.wait(timeout=10) == 0
        thread.join(timeout=10)
        assert not thread.is_alive(), "the reader is still stuck after the mount ended"
        assert not os.path.ismount(m.path)
        with contextlib.suppress(OSError):  # ENOTCONN: nobody serves the file any more
            os.close(fd)
        log = m.log_text()
    assert outcome["errno"] is not None and outcome["seconds"] < 10, outcome
    assert "Traceback" not in log
