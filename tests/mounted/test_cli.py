"""The command line: background mounts, wrong tokens, unmounting, signals."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from cupixfs.fake.server import FakeServer
from tests.conftest import (
    TOKEN,
    cupixfs_cmd,
    force_unmount,
    mount_env,
    run_cupixfs,
    wait_for_mount,
)


def _run(*args: str, token: str = TOKEN, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_cupixfs(*args, env=mount_env(token), timeout=timeout)


def test_wrong_token_fails_before_mounting(fake: FakeServer, tmp_path: Path) -> None:
    for extra in ([], ["--foreground"]):
        result = _run("mount", str(tmp_path), "--api-url", fake.api_url, *extra, token="wrong")
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "token" in lines[0], result.stderr
        assert "Traceback" not in result.stderr
        assert not os.path.ismount(tmp_path)


def test_missing_token_is_a_clear_error(fake: FakeServer, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CUPIX_API_TOKEN"}
    result = run_cupixfs("mount", str(tmp_path), "--api-url", fake.api_url, env=env, timeout=30)
    assert result.returncode == 2
    assert "CUPIX_API_TOKEN" in result.stderr and "Traceback" not in result.stderr


def test_the_region_builds_the_api_url(tmp_path: Path) -> None:
    """A mount of each region reaches for that region's host (here through a proxy that
    refuses, so nothing leaves the machine), and says which host it could not reach."""
    env = dict(mount_env(), HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    for argv, host in (
        (["--region", "eu"], "api.cupix-eu.works"),
        (["-o", "region=jp"], "api.cupix-jp.works"),
        ([], "api.cupix.works"),
    ):
        result = subprocess.run(
            cupixfs_cmd("mount", str(tmp_path), "--timeout", "2", *argv),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1, result.stderr
        assert f"cannot reach the Cupix API at https://{host}/api/v1" in result.stderr
        assert not os.path.ismount(tmp_path)


def test_a_refused_token_shows_the_apis_message_and_the_token_page(
    fake: FakeServer, tmp_path: Path
) -> None:
    result = _run("mount", str(tmp_path), "--api-url", fake.api_url, "--region", "au", token="x")
    assert result.returncode == 1
    assert "invalid or revoked token" in result.stderr  # the API's own message
    assert "https://app.cupix-au.works/settings/api" in result.stderr
    assert fake.stats.snapshot()["api_by_route"] == {"GET /me": 1}  # the check is /me?fields=id


def test_unreachable_api_fails_fast_and_clearly(tmp_path: Path) -> None:
    result = _run(
        "mount", str(tmp_path), "--api-url", "http://127.0.0.1:9/api/v1", "--timeout", "2"
    )
    assert result.returncode == 1
    assert "cannot reach the Cupix API" in result.stderr
    assert not os.path.ismount(tmp_path)


def test_background_mount_returns_when_ready_and_unmounts(
    fake: FakeServer, tmp_path: Path, dataset: dict[str, Any]
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    capture = str(dataset["captures"][0]["id"])
    try:
        result = _run(
            "mount",
            str(mountpoint),
            "--api-url",
            fake.api_url,
            "--capture",
            capture,
            "--log-file",
            str(tmp_path / "log"),
        )
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mountpoint)  # ready as soon as the command returns
        assert sorted(os.listdir(mountpoint / "captures")) == sorted(
            str(c["id"]) for c in dataset["captures"]
        )
        with open("/proc/mounts") as mounts:
            line = next(m for m in mounts if str(mountpoint) in m)
        assert "fuse.cupixfs" in line and " ro," in line
        assert "allow_other" not in line
        assert _run("unmount", str(mountpoint)).returncode == 0
        assert not os.path.ismount(mountpoint)
    finally:
        force_unmount(mountpoint)


def test_unmount_of_something_not_mounted_is_a_clear_error(tmp_path: Path) -> None:
    result = _run("unmount", str(tmp_path))
    assert result.returncode == 2 and "cannot unmount" in result.stderr


def test_sigterm_unmounts_cleanly(mounter: Any) -> None:
    with mounter() as m:
        m.process.send_signal(signal.SIGTERM)
        assert m.process.wait(timeout=15) == 0
        assert not os.path.ismount(m.path)
        assert "Traceback" not in m.log_text()


def test_a_stale_mount_is_cleaned_up(mounter: Any, fake: FakeServer) -> None:
    with mounter() as m:
        m.process.kill()  # a crash: the mount stays, but nobody serves it
        m.process.wait()
        try:
            result = _run("mount", str(m.path), "--api-url", fake.api_url)
            assert result.returncode == 0, result.stderr
            assert sorted(os.listdir(m.path)) == ["captures", "clusters", "projects", "records"]
        finally:
            force_unmount(m.path)


def test_demo_mounts_sample_data_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    mountpoint = tmp_path / "demo"
    log = tmp_path / "demo.log"
    args = cupixfs_cmd(
        "demo",
        str(mountpoint),
        "--data-dir",
        str(tmp_path / "data"),
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    with open(log, "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_mount(mountpoint, process, log)
        captures = os.listdir(mountpoint / "captures")
        assert captures
        videos = mountpoint / "captures" / captures[0] / "videos"
        assert all((videos / name).stat().st_size > 0 for name in os.listdir(videos))
        assert os.listdir(mountpoint / "clusters")
        walk = mountpoint / "projects" / "Riverside Tower" / "Level 1" / "2023-11-17 Level 1 walk"
        assert os.readlink(walk).startswith("../../../captures/")
        assert os.listdir(walk / "videos")  # the project tree leads to the capture's files
        assert "projects" in log.read_text()  # the demo points at the project tree
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
        assert not os.path.ismount(mountpoint)
        assert "Traceback" not in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
        force_unmount(mountpoint)
