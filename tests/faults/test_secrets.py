"""Secrets stay secret: the API token and the signed URLs' signatures are never written down.

A ``--debug`` mount that lists, reads, retries through faults, re-resolves expired URLs and
finally loses its token; then every byte it wrote (its output, its log file, every file and
file name under its cache dir) is searched for the token, for every signed URL the server
handed out (each signature and each query string), and for any ``X-Amz-Signature``.

Also: a token file others may read is refused with a clear message; the mount is private
(no ``allow_other``).
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from cupixfs.fake.server import FakeServer
from tests.conftest import TOKEN, cupixfs_cmd
from tests.faults.conftest import data_files, pin_args, pread_fresh, sha256_fresh

WRONG_TOKEN = "wrong-token-9876543210-ALSO-SECRET"


@pytest.fixture
def issued_urls(fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every signed URL the fake API hands out during the test (the Location of each 302)."""
    urls: list[str] = []
    sign = fake.api.sign_url

    def recording(blob_id: str, name: str) -> str:
        url = sign(blob_id, name)
        urls.append(url)
        return url

    monkeypatch.setattr(fake.api, "sign_url", recording)
    yield urls


def secrets_of(urls: list[str]) -> set[str]:
    found = {TOKEN, WRONG_TOKEN}
    for url in urls:
        query = urlsplit(url).query
        found.add(query)
        found.update(parse_qs(query)["X-Amz-Signature"])
    return found


def everything_written(paths: list[Path]) -> dict[str, bytes]:
    """{where: bytes} for each given file, and each file (content and name) under each dir."""
    written: dict[str, bytes] = {}
    for path in paths:
        if path.is_dir():
            for dirpath, dirs, files in os.walk(path):
                for name in dirs + files:
                    written[f"name of {dirpath}/{name}"] = name.encode()
                for name in files:
                    written[f"{dirpath}/{name}"] = Path(dirpath, name).read_bytes()
        elif path.exists():
            written[str(path)] = path.read_bytes()
    return written


def run_cupixfs(
    *args: str, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess:
    return subprocess.run(
        cupixfs_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def env_without_token(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CUPIX_API_TOKEN"}
    return env | extra


def test_no_token_or_signature_in_logs_or_cache(
    mounter: Callable[..., Any],
    fake: FakeServer,
    dataset: dict[str, Any],
    issued_urls: list[str],
    tmp_path: Path,
) -> None:
    log_file = tmp_path / "state" / "cupixfs.log"
    files = data_files(dataset)
    big = [f for f in files if f.size > 64 * 1024]
    fake.faults.update(
        seed=4242,
        blob_error_rate=0.2,
        cut_rate=0.2,
        reset_rate=0.05,
        api_429_rate=0.2,
        api_error_rate=0.1,
        retry_after_s=0,
        url_ttl_s=2,
    )
    args = (*pin_args(dataset), "--debug", "--log-file", str(log_file), "--timeout", "10")
    with mounter(*args, "--memory-cache", "2M") as m:
        for f in files:  # listings and reads, with retries logged at debug level
            assert sha256_fresh(m.path / f.rel) == f.sha256
        fake.faults.update(clock_offset_s=7200, url_ttl_s=4 * 3600)  # 403s: URLs resolved again
        for f in big:
            pread_fresh(m.path / f.rel, f.size - 10, 10)
        fake.faults.update(clock_offset_s=30000)  # expire them all again...
        fake.set_tokens([])  # ...and refuse the token: auth errors are logged
        refusals = 0
        for rel in [f"records/{r['id']}" for r in dataset["records"]] + [f.rel for f in big]:
            try:
                if (m.path / rel).is_dir():
                    os.listdir(m.path / rel)
                else:
                    pread_fresh(m.path / rel, 0, 10)
            except PermissionError:
                refusals += 1
        assert refusals >= 1  # so the log does hold an auth error to inspect
        cache_dir = m.cache_dir
    fake.set_tokens([TOKEN])

    # A mount refused at start-up: its one-line error must not echo the token either.
    refused = run_cupixfs(
        "mount", str(tmp_path / "mnt-refused"), "--api-url", fake.api_url, "--foreground",
        env=env_without_token(CUPIX_API_TOKEN=WRONG_TOKEN),
    )  # fmt: skip

    assert len(issued_urls) >= len(files)  # a signed URL for every file, at least
    debug_log = log_file.read_text()
    assert " DEBUG " in debug_log and "retry" in debug_log  # retries were logged, in detail
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    written = everything_written([m.log, log_file, cache_dir])
    written["stderr of the refused mount"] = (refused.stdout + refused.stderr).encode()
    assert refused.returncode != 0
    leaks = [
        (where, secret if len(secret) < 40 else secret[:40] + "...")
        for secret in sorted(secrets_of(issued_urls))
        for where, data in written.items()
        if secret.encode() in data
    ]
    leaks += [(where, "X-Amz-Signature") for where, data in written.items() if b"X-Amz-Sig" in data]
    assert leaks == [], "\n".join(f"{where}: {what}" for where, what in leaks)


def test_token_file_readable_by_others_is_refused(fake: FakeServer, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    for mode in (0o644, 0o640, 0o604):
        os.chmod(token_file, mode)
        result = run_cupixfs(
            "mount", str(mountpoint), "--api-url", fake.api_url, "--foreground",
            "--token-file", str(token_file), env=env_without_token(),
        )  # fmt: skip
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (oct(mode), result.stderr)
        assert len(lines) == 1 and str(token_file) in lines[0], result.stderr
        assert "600" in lines[0] or "readable" in lines[0], lines[0]
        assert TOKEN not in result.stderr + result.stdout
        assert not os.path.ismount(mountpoint)


def test_private_token_file_is_used_and_the_mount_is_private(
    mounter: Callable[..., Any], fake: FakeServer, dataset: dict[str, Any], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    os.chmod(token_file, 0o600)
    # The environment's token is wrong: the mount works only if the file's token is used.
    with mounter("--token-file", str(token_file), token=WRONG_TOKEN) as m:
        assert sorted(os.listdir(m.path)) == ["captures", "clusters", "projects", "records"]
        capture = dataset["captures"][0]["id"]
        assert os.listdir(m.path / "captures" / str(capture))
        options = mount_options(m.path)
    assert "allow_other" not in options, options
    assert "ro" in options, options


def mount_options(path: Path) -> list[str]:
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == str(path):
                return fields[3].split(",")
    raise AssertionError(f"{path} not in /proc/mounts")


def test_the_api_url_is_logged_without_its_password(
    mounter: Callable[..., Any], fake: FakeServer, tmp_path: Path
) -> None:
    secret_url = fake.api_url.replace("http://", "http://cupix:pw-SECRET@")
    with mounter("--api-url", secret_url) as m:
        assert os.listdir(m.path)
    assert f"mounted {fake.api_url} at" in m.log_text()
    # Nothing answers on port 9: the one-line error names the host, not the password.
    (tmp_path / "mnt-unreachable").mkdir()
    refused = run_cupixfs(
        "mount", str(tmp_path / "mnt-unreachable"), "--foreground", "--timeout", "1",
        "--api-url", "http://cupix:pw-SECRET@127.0.0.1:9/api/v1",
        env=env_without_token(CUPIX_API_TOKEN=TOKEN),
    )  # fmt: skip
    assert refused.returncode == 1
    assert "cannot reach the Cupix API at http://127.0.0.1:9/api/v1" in refused.stderr
    assert "pw-SECRET" not in m.log_text() + refused.stderr + refused.stdout
