"""Faults cupixfs must report clearly (a revoked token) or survive quietly (a bad cache dir).

* The token is revoked while mounted: the operations that need the API fail with EACCES,
  and the log says so in one clear line, not one line per failed block or read.
* A cache file corrupted or truncated on disk is detected and fetched again, never served.
* A cache dir that cannot be used (unwritable, disk full): reads still work from the network,
  and the log says so once.
* The cache is private: directories 0700, files 0600.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cupixfs.data import block_file
from cupixfs.fake.server import FakeServer
from tests.conftest import TOKEN
from tests.faults.conftest import (
    BLOCK,
    blob_bytes,
    data_files,
    errno_name,
    largest,
    log_lines,
    pin_args,
    pread_fresh,
    sha256_fresh,
)

#: Words a log line about the token being refused would use.
AUTH_WORDS = ("token", "401", "unauthori", "forbidden", "permission", "auth")

HEADER = block_file.PAGE  # bytes of header in front of each block file's payload


def _capture(dataset: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in dataset["captures"] if c["name"] == name)


def warnings_about_cache(log: str) -> list[str]:
    return [
        line
        for line in log.splitlines()
        if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line) and "cache" in line.lower()
    ]


# --- a token revoked while mounted ------------------------------------------------------------


def test_revoked_token_gives_eacces_and_one_log_line(
    mounter: Callable[..., Any], fake: FakeServer, dataset: dict[str, Any]
) -> None:
    main = _capture(dataset, "main")
    single = _capture(dataset, "single")
    main_videos = [f for f in data_files(dataset) if f.rel.startswith(f"captures/{main['id']}/")]
    big = [f for f in main_videos if f.size > 64 * 1024]
    cached = next(f for f in main_videos if 0 < f.size < 64 * 1024)
    with mounter(*pin_args(dataset), "--timeout", "5") as m:
        listed = sorted(os.listdir(m.path / "captures" / str(main["id"]) / "videos"))
        assert sha256_fresh(m.path / cached.rel) == cached.sha256
        # Signed URLs handed out so far now count as expired, so reading anything not cached
        # needs a new one from the API, which the revoked token cannot get.
        fake.faults.update(clock_offset_s=7200, url_ttl_s=4 * 3600)
        fake.set_tokens([])
        log_before = len(m.log_text())

        results: list[tuple[str, str]] = []

        def attempt(what: str, operation: Callable[[], object]) -> None:
            try:
                operation()
            except OSError as exc:
                results.append((what, errno_name(exc.errno)))
            else:
                results.append((what, "no error"))

        never_listed = m.path / "captures" / str(single["id"]) / "videos"
        for _ in range(5):
            attempt("list a new dir", lambda: os.listdir(never_listed))
        for _ in range(5):
            for f in big:
                offset = f.size - 100
                attempt(f"read {f.rel}", lambda f=f, o=offset: pread_fresh(m.path / f.rel, o, 100))
        # Only what needs the API is refused: what is cached still reads and lists.
        still_cached = sha256_fresh(m.path / cached.rel) == cached.sha256
        still_listed = sorted(os.listdir(m.path / "captures" / str(main["id"]) / "videos"))
        time.sleep(0.3)  # let the last log lines reach the file
        log = m.log_text()[log_before:]

        fake.set_tokens([TOKEN])  # the token works again: so does the mount
        assert len(os.listdir(never_listed)) == len(single["video_ids"])

    assert {r for _, r in results} == {"EACCES"}, results
    assert still_cached and still_listed == listed
    auth_lines = log_lines(log, *AUTH_WORDS)
    assert 1 <= len(auth_lines) <= 2, f"{len(results)} failed operations gave:\n" + "\n".join(
        auth_lines
    )
    assert "Traceback" not in log


# --- the disk cache ---------------------------------------------------------------------------


def block_files(cache_dir: Path) -> dict[Path, dict[int, int]]:
    """The files of versions under ``<cache>/blocks`` (at any depth) and the blocks each
    holds: {path: {index: bytes on disk}}."""
    return {
        path: block_file.slots(str(path))
        for path in (cache_dir / "blocks").rglob("*")
        if path.is_file() and re.fullmatch(r"[0-9a-f]{16}", path.name)
    }


def wait_for_blocks(cache_dir: Path, count: int, timeout: float = 10) -> Path:
    """The file of the one version with *count* blocks on disk (writes run in background)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path, blocks in block_files(cache_dir).items():
            if len(blocks) == count and all(size > HEADER for size in blocks.values()):
                return path
        time.sleep(0.05)
    pytest.fail(f"no version with {count} blocks in {cache_dir}: {block_files(cache_dir)}")


def test_corrupt_and_truncated_cache_blocks_are_fetched_again(
    mounter: Callable[..., Any], fake: FakeServer, dataset: dict[str, Any], tmp_path: Path
) -> None:
    video = largest(dataset)  # 3 blocks
    cache = tmp_path / "cache"
    with mounter(*pin_args(dataset), cache_dir=cache) as m:
        assert sha256_fresh(m.path / video.rel) == video.sha256
        version = wait_for_blocks(cache, 3)

    # Power cut, bad disk, a curious user: one block has a flipped byte, one is cut short.
    with open(version, "r+b") as f:
        f.seek(block_file.SLOT + HEADER + 1000)
        flipped = f.read(1)[0] ^ 0xFF
        f.seek(block_file.SLOT + HEADER + 1000)
        f.write(bytes([flipped]))
        f.truncate(2 * block_file.SLOT + block_file.slots(str(version))[2] // 2)

    fake.stats.reset()
    with mounter(*pin_args(dataset), cache_dir=cache) as m:
        assert sha256_fresh(m.path / video.rel) == video.sha256
        content = blob_bytes(fake, video.blob_id)
        assert (
            pread_fresh(m.path / video.rel, BLOCK + 990, 20) == content[BLOCK + 990 : BLOCK + 1010]
        )
        assert "Traceback" not in m.log_text()

    fetched = [(start, end) for b, start, end in fake.stats.snapshot()["blob_ranges"]
               if b == video.blob_id]  # fmt: skip
    covers = {i: any(s <= i * BLOCK + 1000 <= e for s, e in fetched) for i in range(3)}
    assert covers[1] and covers[2], f"damaged blocks not fetched again: {fetched}"
    assert not covers[0], f"the intact block was fetched again: {fetched}"


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory on a 256 KiB tmpfs: room for the cache's directories, not for one block."""
    where = tmp_path / "full"
    where.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        filler = where / "filler"
        with open(filler, "wb") as f:  # leave ~16 KiB free
            f.write(b"\0" * (240 * 1024))
        yield where / "cache"
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


@pytest.mark.parametrize(
    "where", ["under a file", "on a full disk"], ids=["unwritable", "disk-full"]
)
def test_unusable_cache_dir_still_serves_and_says_so_once(
    where: str,
    mounter: Callable[..., Any],
    fake: FakeServer,
    dataset: dict[str, Any],
    request: pytest.FixtureRequest,
) -> None:
    # As root, chmod cannot make a directory unwritable, so "unwritable" is a path that can
    # never be a directory (under /dev/null); "full" is a tiny tmpfs, filled up.
    cache = Path("/dev/null/cupixfs-cache") if where == "under a file" else None
    if cache is None:
        cache = request.getfixturevalue("full_disk")
    files = [f for f in data_files(dataset) if f.size > 64 * 1024]
    with mounter(*pin_args(dataset), "--memory-cache", "2M", cache_dir=cache) as m:
        for _ in range(2):  # twice: the second pass cannot come from the (small) memory cache
            for f in files:
                assert sha256_fresh(m.path / f.rel) == f.sha256, f.rel
        time.sleep(0.3)
        log = m.log_text()
    lines = warnings_about_cache(log)
    assert len(lines) == 1, "want one line saying the cache is off:\n" + "\n".join(lines)
    assert "Traceback" not in log


def test_cache_dir_is_0700_and_its_files_0600(
    mounter: Callable[..., Any], fake: FakeServer, dataset: dict[str, Any], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)  # a cache dir the user made with the usual umask
    os.chmod(cache, 0o755)
    with mounter(*pin_args(dataset), cache_dir=cache) as m:
        for f in data_files(dataset):
            assert sha256_fresh(m.path / f.rel) == f.sha256
        wait_for_blocks(cache, (largest(dataset).size - 1) // BLOCK + 1)
    modes = {}
    for dirpath, dirs, files in os.walk(cache):
        for name in [".", *dirs]:
            path = Path(dirpath, name)
            modes[str(path.resolve().relative_to(cache.parent))] = stat.S_IMODE(path.stat().st_mode)
        for name in files:
            path = Path(dirpath, name)
            modes[str(path.relative_to(cache.parent))] = stat.S_IMODE(path.stat().st_mode)
    assert any(stat.S_ISREG(os.stat(cache.parent / p).st_mode) for p in modes)
    wrong = {
        p: oct(mode)
        for p, mode in modes.items()
        if mode != (0o700 if (cache.parent / p).is_dir() else 0o600)
    }
    assert wrong == {}, wrong


def test_unknown_ids_are_enoent_even_while_faulty(
    mounter: Callable[..., Any], fake: FakeServer, dataset: dict[str, Any]
) -> None:
    # ENOENT is an answer, not a fault: 5xx/429 on the way must not turn it into EIO.
    with mounter("--timeout", "10") as m:
        fake.faults.update(seed=11, api_error_rate=0.3, api_429_rate=0.2, retry_after_s=0)
        for path in ("captures/999999", "records/999999", "clusters/999999", "captures/0x10"):
            with pytest.raises(OSError) as info:
                os.stat(m.path / path)
            assert info.value.errno == errno.ENOENT, (path, errno_name(info.value.errno))
