"""Fixtures shared by every test: the fake Cupix server and real FUSE mounts of it.

A mount is the real `cupixfs mount` command in a subprocess, talking HTTP over
loopback to a real `FakeServer`; tests then use it through the kernel.
Fixtures own setup and teardown: no test leaves a mount or a server behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from cupixfs.fake.sample import generate, profile
from cupixfs.fake.server import FakeServer

TOKEN = "test-token-0123456789-SECRET"
PER_PAGE = 5


@pytest.fixture(scope="session")
def test_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("fake-data")
    generate(profile("test"), data_dir)
    return data_dir


@pytest.fixture(scope="session")
def fake_session(test_data: Path) -> Iterator[FakeServer]:
    with FakeServer(test_data, token=TOKEN, per_page=PER_PAGE) as server:
        yield server


@pytest.fixture
def fake(fake_session: FakeServer) -> Iterator[FakeServer]:
    """The session's fake server, with faults, API switches, tokens and counters reset for
    each test."""
    fake_session.faults.reset()
    fake_session.api.reset()
    fake_session.set_tokens([TOKEN])
    fake_session.stats.reset()
    yield fake_session
    fake_session.faults.reset()
    fake_session.api.reset()
    fake_session.set_tokens([TOKEN])


@dataclass
class Mount:
    path: Path
    process: subprocess.Popen[bytes]
    log: Path
    cache_dir: Path
    args: list[str] = field(default_factory=list)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        """The mount's ``/.cupixfs/status`` document."""
        return dict(json.loads((self.path / ".cupixfs" / "status").read_text()))


def wait_for_mount(path: Path, process: subprocess.Popen[bytes] | None, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if os.path.ismount(path):
            return
        if process is not None and process.poll() is not None:
            pytest.fail(f"cupixfs exited {process.returncode} before mounting:\n{log.read_text()}")
        time.sleep(0.05)
    pytest.fail(f"{path} was not mounted within 20 s:\n{log.read_text()}")


def force_unmount(path: Path) -> None:
    if os.path.ismount(path):
        subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, check=False)
    if os.path.ismount(path):
        subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True, check=False)


def cupixfs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cupixfs", *args]


def mount_env(token: str = TOKEN) -> dict[str, str]:
    env = dict(os.environ)
    env["CUPIX_API_TOKEN"] = token
    return env


def run_cupixfs(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``cupixfs ARGS`` to its end, its output captured (*env*: `mount_env` by default)."""
    return subprocess.run(
        cupixfs_cmd(*args),
        env=mount_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def mounter(fake: FakeServer, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """A factory: ``with mounter(*extra_args) as m:`` mounts, and always unmounts after."""
    mounts: list[Mount] = []

    @contextmanager
    def mount(
        *extra: str,
        cache_dir: Path | None = None,
        token: str = TOKEN,
        server: FakeServer | None = None,
        name: str | None = None,
    ) -> Iterator[Mount]:
        path = tmp_path / (name or f"mnt{len(mounts)}")
        path.mkdir()
        log = tmp_path / f"mount{len(mounts)}.log"
        cache = cache_dir or tmp_path / "cache"
        args = cupixfs_cmd(
            "mount",
            str(path),
            "--api-url",
            (server or fake).api_url,
            "--foreground",
            "--cache-dir",
            str(cache),
            *extra,
        )
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                args, env=mount_env(token), stdout=log_file, stderr=subprocess.STDOUT
            )
        m = Mount(path, process, log, cache, args)
        mounts.append(m)
        try:
            wait_for_mount(path, process, log)
            yield m
        finally:
            stop(m)

    def stop(m: Mount) -> None:
        force_unmount(m.path)
        try:
            m.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            m.process.send_signal(signal.SIGKILL)
            m.process.wait()
            force_unmount(m.path)

    yield mount
    for m in mounts:
        stop(m)


@pytest.fixture
def mounted(mounter: Callable[..., Any], dataset: dict[str, Any]) -> Iterator[Mount]:
    """One mount of the test data set, with every capture and record id pinned."""
    pins: list[str] = []
    for capture in dataset["captures"]:
        pins += ["--capture", str(capture["id"])]
    for record in dataset["records"]:
        pins += ["--record", str(record["id"])]
    with mounter(*pins) as m:
        yield m


@pytest.fixture
def dataset(fake: FakeServer) -> dict[str, Any]:
    """The fake server's model (with each blob's sha256), fetched over its admin route."""
    return httpx.get(fake.base_url + "/_fake/dataset").json()
