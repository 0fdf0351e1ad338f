"""Faults the mount must ride through: every byte right, no error reaches the reader.

A user copying files off the mount never sees the storage's 503s and 429s, a body cut short,
a reset connection or a signed URL that expired: cupixfs retries (with backoff and jitter),
resumes from the byte it reached, and resolves URLs again. Each test turns the fake server's
fault knobs, reads through the real mount, and compares with the bytes the server holds.

Reads go through ``pread_fresh``/``sha256_fresh``, which drop the kernel's page cache first,
and mounts use the smallest caches, so that repeated reads really reach the network.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cupixfs.fake.server import FakeServer
from tests.faults.conftest import (
    BLOCK,
    DataFile,
    blob_bytes,
    data_files,
    largest,
    log_lines,
    pin_args,
    pread_fresh,
    sha256_fresh,
)
from tests.mounted.helpers import stored_only
from tests.mounted.oracle import Oracle

#: Caches as small as cupixfs allows, so that reads keep going to the network.
SMALL_CACHES = ("--memory-cache", "2M", "--cache-size", "1M")

SOAK_SEED = 20240611
SOAK_READS = 300


def walk(root: Path) -> tuple[set[str], list[str]]:
    """Every file under *root* (relative paths) and every error met on the way."""
    errors: list[str] = []
    found: set[str] = set()
    for dirpath, _dirs, names in os.walk(root, onerror=lambda e: errors.append(repr(e))):
        for name in names:
            found.add(str(Path(dirpath, name).relative_to(root)))
    return found, errors


def read_every_meta_json(root: Path, paths: set[str]) -> list[str]:
    errors = []
    for rel in sorted(p for p in paths if p.endswith("meta.json")):
        try:
            json.loads((root / rel).read_bytes())
        except (OSError, ValueError) as exc:
            errors.append(f"{rel}: {exc!r}")
    return errors


def check_whole_files(root: Path, files: list[DataFile]) -> list[str]:
    """sha256 of every file; the problems found (wrong bytes or errors), as readable lines."""
    problems = []
    for f in files:
        try:
            digest = sha256_fresh(root / f.rel)
        except OSError as exc:
            problems.append(f"{f.rel}: {exc!r}")
            continue
        if digest != f.sha256:
            problems.append(f"{f.rel}: sha256 {digest} != {f.sha256}")
    return problems


def random_reads(
    root: Path, files: list[DataFile], expected: Callable[[DataFile], bytes], count: int, seed: int
) -> list[str]:
    """*count* reads of random ranges (half of them in files bigger than the probe's head)."""
    rng = random.Random(seed)
    big = [f for f in files if f.size > 64 * 1024]
    some = [f for f in files if f.size > 0]
    problems = []
    for i in range(count):
        f = rng.choice(big if i % 2 else some)
        offset = rng.randrange(f.size)
        length = rng.choice([1, 4096, 65_536, 300_000, BLOCK, 2 * BLOCK + 17])
        try:
            got = pread_fresh(root / f.rel, offset, length)
        except OSError as exc:
            problems.append(f"read #{i} {f.rel}[{offset}:+{length}]: {exc!r}")
            continue
        want = expected(f)[offset : offset + length]
        if got != want:
            problems.append(f"read #{i} {f.rel}[{offset}:+{length}]: wrong bytes ({len(got)})")
    return problems


def test_soak_with_random_faults_every_byte_right_and_no_error(
    mounter: Callable[..., Any], fake: FakeServer, dataset: dict[str, Any]
) -> None:
    # The soak: 20 % of blob responses 503, 10 % of bodies cut, 20 % of API calls 429,
    # signed URLs living 2 s, all from a fixed seed. Retry-After is 0 here so the suite stays
    # fast; test_api_429_retry_after_is_honoured checks a real Retry-After wait.
    files = data_files(dataset)
    cache: dict[str, bytes] = {}

    def expected(f: DataFile) -> bytes:
        if f.blob_id not in cache:
            cache[f.blob_id] = blob_bytes(fake, f.blob_id)
        return cache[f.blob_id]

    fake.faults.update(
        seed=SOAK_SEED,
        blob_error_rate=0.2,
        cut_rate=0.1,
        api_429_rate=0.2,
        retry_after_s=0,
        url_ttl_s=2,
    )
    with mounter(*pin_args(dataset), *SMALL_CACHES, "--timeout", "20") as m:
        found, walk_errors = walk(m.path)
        meta_errors = read_every_meta_json(m.path, found)
        read_problems = random_reads(m.path, files, expected, SOAK_READS, SOAK_SEED)
        whole_problems = check_whole_files(m.path, files)
        log = m.log_text()

    assert walk_errors == [] and meta_errors == []
    assert {f.rel for f in files} <= found
    assert read_problems == [], "\n".join(read_problems[:20])
    assert whole_problems == [], "\n".join(whole_problems)
    assert "Traceback" not in log
    injected = fake.stats.snapshot()["faults_injected"]
    assert injected.get("blob_503", 0) >= 10, injected
    assert injected.get("cut", 0) >= 5, injected
    assert injected.get("api_429", 0) >= 5, injected


def test_reads_spanning_several_url_lifetimes(
    mounter: Callable[..., Any], fake: FakeServer, dataset: dict[str, Any]
) -> None:
    # URLs live 2 s; the reader spends ~6 s on one file, re-reading blocks the small caches
    # have dropped. cupixfs must refresh each URL from its own expiry before it lapses
    # (so storage refuses next to nothing), and never fail a read.
    fake.faults.update(url_ttl_s=2)
    video = largest(dataset)
    content = blob_bytes(fake, video.blob_id)
    with mounter(*pin_args(dataset), *SMALL_CACHES, "--timeout", "10") as m:
        path = m.path / video.rel
        fake.stats.reset()
        rng = random.Random(7)
        deadline = time.monotonic() + 6
        reads = 0
        while time.monotonic() < deadline:
            offset = rng.randrange(video.size)
            assert pread_fresh(path, offset, 300_000) == content[offset : offset + 300_000]
            reads += 1
            time.sleep(0.05)
        assert sha256_fresh(path) == video.sha256
    stats = fake.stats.snapshot()
    resolves = sum(n for route, n in stats["api_by_route"].items() if "download" in route)
    assert resolves >= 3, stats["api_by_route"]  # the URL was renewed as it aged
    # Renewal happens before expiry: storage refuses (403) at most a couple of requests.
    assert stats["status_counts"].get("403", 0) <= 2, stats["status_counts"]


def test_expired_url_is_resolved_again(
    mounter: Callable[..., Any], fake: FakeServer, dataset: dict[str, Any]
) -> None:
    # URLs that say they are good for an hour, then the storage clock jumps 2 h ahead: every URL
    # handed out so far is refused with 403. New ones (valid 4 h) work: cupixfs must notice the
    # 403, resolve the URL again and carry on, with no error to the reader.
    video = largest(dataset)
    content = blob_bytes(fake, video.blob_id)
    with mounter(*pin_args(dataset), *SMALL_CACHES, "--timeout", "10") as m:
        path = m.path / video.rel
        assert pread_fresh(path, 0, BLOCK) == content[:BLOCK]
        fake.faults.update(clock_offset_s=7200, url_ttl_s=4 * 3600)
        fake.stats.reset()
        tail = video.size - BLOCK
        assert pread_fresh(path, tail, BLOCK) == content[tail:]
        assert sha256_fresh(path) == video.sha256
    stats = fake.stats.snapshot()
    assert stats["status_counts"].get("403", 0) >= 1, stats  # the old URL was really refused
    assert any("download" in route for route in stats["api_by_route"]), stats


def test_cut_bodies_resume_from_the_byte_reached(
    mounter: Callable[..., Any], fake: FakeServer, dataset: dict[str, Any]
) -> None:
    fake.faults.update(seed=99, cut_rate=0.5)
    files = [f for f in data_files(dataset) if f.size > 64 * 1024]
    with mounter(*pin_args(dataset), *SMALL_CACHES, "--timeout", "20") as m:
        problems = check_whole_files(m.path, files)
    assert problems == [], "\n".join(problems)
    stats = fake.stats.snapshot()
    assert stats["faults_injected"].get("cut", 0) >= 3, stats["faults_injected"]
    # A resumed transfer asks for the rest of a range from where the cut body stopped, which
    # is (almost surely) not on a block boundary; a restart would ask for the block again.
    resumed = [r for r in stats["blob_ranges"] if r[1] % BLOCK != 0]
    assert resumed, f"no request resumed mid-block: {stats['blob_ranges']}"
    # ...and so the bytes sent stay near the bytes needed (cut prefixes are not re-sent).
    needed = sum(f.size for f in files)
    assert stats["blob_bytes"] <= 2 * needed, (stats["blob_bytes"], needed)


def test_connection_resets_are_retried(
    mounter: Callable[..., Any], fake: FakeServer, dataset: dict[str, Any]
) -> None:
    with mounter(*pin_args(dataset), *SMALL_CACHES, "--timeout", "20") as m:
        fake.faults.update(seed=5, reset_rate=0.3)
        found, walk_errors = walk(m.path)
        problems = check_whole_files(m.path, data_files(dataset))
    assert walk_errors == []
    assert problems == [], "\n".join(problems)
    assert {f.rel for f in data_files(dataset)} <= found
    assert fake.stats.snapshot()["faults_injected"].get("reset", 0) >= 5


def test_listings_ride_through_api_429_and_5xx(
    mounter: Callable[..., Any], fake: FakeServer, dataset: dict[str, Any]
) -> None:
    # Hostile names are renamed by the mount, so that capture is compared by count only.
    hostile = next(c for c in dataset["captures"] if c["name"] == "hostile")
    prefix = f"captures/{hostile['id']}/"
    expected = Oracle(fake).expected_tree(
        [c["id"] for c in dataset["captures"] if c is not hostile],
        [r["id"] for r in dataset["records"]],
    )
    with mounter(*pin_args(dataset), "--timeout", "20") as m:
        fake.faults.update(seed=3, api_429_rate=0.3, api_error_rate=0.2, retry_after_s=0)
        found, errors = walk(m.path)
        meta_errors = read_every_meta_json(m.path, found)
    assert errors == [] and meta_errors == []
    assert stored_only({p for p in found if not p.startswith(prefix)}) == expected
    assert len([p for p in found if p.startswith(prefix)]) == len(hostile["video_ids"])
    injected = fake.stats.snapshot()["faults_injected"]
    assert (
        injected.get("api_429", 0) >= 3
        and injected.get("api_500", 0) + injected.get("api_503", 0) >= 1
    ), injected


def test_api_429_retry_after_is_honoured(
    mounter: Callable[..., Any], fake: FakeServer, dataset: dict[str, Any]
) -> None:
    # Every API call answers 429 "Retry-After: 2" until the test lifts it after 0.5 s. A client
    # that honours the header asks once, waits 2 s, asks again and gets its listing; one that
    # ignores it hammers the API with fast retries.
    capture = next(c for c in dataset["captures"] if c["name"] == "main")
    videos = [
        v["attributes"]["name"] for v in dataset["videos"] if v["capture_id"] == capture["id"]
    ]
    with mounter(*pin_args(dataset), "--timeout", "10") as m:
        path = m.path / "captures" / str(capture["id"]) / "videos"
        fake.faults.update(api_429_rate=1.0, retry_after_s=2)
        fake.stats.reset()
        result: dict[str, Any] = {}

        def list_it() -> None:
            start = time.monotonic()
            try:
                result["names"] = sorted(os.listdir(path))
            except OSError as exc:
                result["error"] = exc
            result["seconds"] = time.monotonic() - start

        lister = threading.Thread(target=list_it)
        lister.start()
        time.sleep(0.5)
        asked_while_throttled = fake.stats.snapshot()["api_requests"]
        fake.faults.update(api_429_rate=0.0)
        lister.join(timeout=15)
    assert "error" not in result, result
    assert result["names"] == sorted(videos)
    assert 1 <= asked_while_throttled <= 2, asked_while_throttled
    assert result["seconds"] >= 1.8, result


def test_chunked_blob_bodies_are_read_whole_and_said_once(
    mounter: Callable[..., Any], fake: FakeServer, dataset: dict[str, Any]
) -> None:
    # A proxy in front of storage re-frames bodies in chunks: the stream's own body
    # reader cannot take those, so httpx reads them, every byte the same; the log says
    # so once for the host, not once per request.
    fake.faults.update(blob_chunked=True)
    video = largest(dataset)
    with mounter(*pin_args(dataset)) as m:
        assert sha256_fresh(m.path / video.rel) == video.sha256
        log = m.log_text()
    assert len(log_lines(log, "sends bodies in chunks or coded")) == 1, log
