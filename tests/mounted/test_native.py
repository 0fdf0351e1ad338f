"""The command line around a mount: mount(8) and fstab, config profiles, tokens, cache, status.

Everything runs as a user would: the real ``mount``/``umount`` with our helper
linked into /sbin, the real ``cupixfs`` command in a subprocess, and the
results checked through the kernel and on the fake server's counters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cupixfs.data.store import HEAD_SIZE
from cupixfs.fake.server import FakeServer
from cupixfs.mount import mountinfo
from tests.conftest import TOKEN, cupixfs_cmd, force_unmount, mount_env
from tests.mounted.helpers import sha256_of, walk_files

MiB = 1 << 20
MAIN = 1000  # the test profile's capture with 17 videos (4.3 MB)
SINGLE = 1001  # a capture with one 256 KiB video


# -- helpers ---------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    """The environment without CUPIX_API_TOKEN, so the token must come from where we say."""
    env = {k: v for k, v in os.environ.items() if k != "CUPIX_API_TOKEN"}
    env.update(extra)
    return env


def _run(
    cmd: list[str], env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        env=env if env is not None else _env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _cupixfs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return _run(cupixfs_cmd(*args), env=env)


def _token_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(mode)
    return path


def _videos(dataset: dict[str, Any], capture: int) -> list[dict[str, Any]]:
    return [v for v in dataset["videos"] if v["capture_id"] == capture]


def _read_videos(root: Path, dataset: dict[str, Any], capture: int) -> None:
    """Read every video of *capture* through the mount and check its bytes."""
    folder = root / "captures" / str(capture) / "videos"
    for video in _videos(dataset, capture):
        assert sha256_of(folder / video["attributes"]["name"]) == video["file"]["sha256"]


def _drop_kernel_cache() -> None:
    """So that a re-read reaches the mount, not the kernel's page cache."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def _wait_unmounted(log: Path) -> None:
    """A background mount's process logs "unmounted" as it exits; wait for that line."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if log.exists() and "unmounted" in log.read_text():
            return
        time.sleep(0.05)
    pytest.fail(f"the mount process did not finish:\n{log.read_text()}")


def _mount_line(mountpoint: Path) -> str:
    with open("/proc/mounts") as mounts:
        return next(line for line in mounts if line.split()[1] == str(mountpoint))


def _block_files(cache: Path) -> list[Path]:
    return [p for p in (cache / "blocks").rglob("*") if p.is_file()]


@pytest.fixture
def mount_helper() -> Iterator[Path]:
    """``/sbin/mount.fuse.cupixfs`` linked to our console script, as docs/usage.md says."""
    if os.geteuid() != 0:
        pytest.skip("installing a mount helper into /sbin needs root")
    script = Path(sys.executable).parent / "mount.cupixfs"
    if not script.exists():
        pytest.fail(f"{script} is missing: reinstall cupixfs (make install)")
    link = Path("/sbin/mount.fuse.cupixfs")
    ours = not link.is_symlink() and not link.exists()
    if not ours and link.resolve() != script.resolve():
        pytest.skip(f"{link} exists and is not this checkout's helper")
    if ours:
        link.symlink_to(script)
    try:
        yield link
    finally:
        if ours:
            link.unlink()


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    force_unmount(path)


# -- mount(8) and fstab ----------------------------------------------------------------------


def test_mount_t_fuse_cupixfs_runs_the_helper(
    fake: FakeServer, tmp_path: Path, mountpoint: Path, mount_helper: Path, dataset: dict[str, Any]
) -> None:
    token = _token_file(tmp_path)
    log = tmp_path / "mount.log"
    options = (
        f"token_file={token},api_url={fake.api_url},cache_dir={tmp_path / 'cache'},"
        f"log_file={log},capture={SINGLE}"
    )
    fake.api.configure(refuse={"GET /captures": 403})  # /captures then shows just the pins
    result = _run(["mount", "-t", "fuse.cupixfs", "cupixfs", str(mountpoint), "-o", options])
    assert result.returncode == 0, result.stderr + (log.read_text() if log.exists() else "")
    assert os.path.ismount(mountpoint)  # ready as soon as mount(8) returns
    line = _mount_line(mountpoint)
    assert line.split()[0] == "cupixfs" and line.split()[2] == "fuse.cupixfs"
    assert line.split()[3].startswith("ro,")
    assert os.listdir(mountpoint / "captures") == [str(SINGLE)]
    _read_videos(mountpoint, dataset, SINGLE)
    assert _run(["umount", str(mountpoint)]).returncode == 0
    assert not os.path.ismount(mountpoint)
    _wait_unmounted(log)


def test_an_fstab_line_mounts_with_mount_fstab(
    fake: FakeServer, tmp_path: Path, mountpoint: Path, mount_helper: Path, dataset: dict[str, Any]
) -> None:
    token = _token_file(tmp_path)
    log = tmp_path / "mount.log"
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# a comment line, as in /etc/fstab\n"
        f"cupixfs {mountpoint} fuse.cupixfs token_file={token},api_url={fake.api_url},"
        f"cache_dir={tmp_path / 'cache'},log_file={log},capture={SINGLE},"
        "_netdev,noauto,nofail,x-systemd.automount,x-systemd.idle-timeout=60 0 0\n"
    )
    result = _run(["mount", "--fstab", str(fstab), str(mountpoint)])
    assert result.returncode == 0, result.stderr + (log.read_text() if log.exists() else "")
    assert _mount_line(mountpoint).split()[2] == "fuse.cupixfs"
    _read_videos(mountpoint, dataset, SINGLE)
    assert _run(["umount", str(mountpoint)]).returncode == 0
    _wait_unmounted(log)


def test_the_fstab_source_names_a_config_profile(
    fake: FakeServer, tmp_path: Path, mountpoint: Path, mount_helper: Path
) -> None:
    token = _token_file(tmp_path)
    log = tmp_path / "mount.log"
    config = tmp_path / "config.toml"
    config.write_text(
        "[profiles.site-a]\n"
        f'api_url = "{fake.api_url}"\n'
        f'token_file = "{token}"\n'
        'cache_dir = "cache-a"\n'  # relative to the config file's directory
        f'log_file = "{log}"\n'
        f"captures = [{MAIN}, {SINGLE}]\n"
    )
    fstab = tmp_path / "fstab"
    fstab.write_text(f"site-a {mountpoint} fuse.cupixfs config={config},_netdev,noauto 0 0\n")
    fake.api.configure(refuse={"GET /captures": 403})  # /captures then shows just the pins
    result = _run(["mount", "--fstab", str(fstab), str(mountpoint)])
    assert result.returncode == 0, result.stderr + (log.read_text() if log.exists() else "")
    assert sorted(os.listdir(mountpoint / "captures")) == [str(MAIN), str(SINGLE)]
    assert _run(["umount", str(mountpoint)]).returncode == 0
    _wait_unmounted(log)
    assert (tmp_path / "cache-a" / "blocks").is_dir()


def test_a_bad_option_fails_mount_with_one_line(
    fake: FakeServer, tmp_path: Path, mountpoint: Path, mount_helper: Path
) -> None:
    token = _token_file(tmp_path)
    result = _run(
        ["mount", "-t", "fuse.cupixfs", "cupixfs", str(mountpoint), "-o", f"token_file={token},"
         f"api_url={fake.api_url},cache_sise=4G"]
    )  # fmt: skip
    assert result.returncode != 0
    assert "unknown mount option 'cache_sise'" in result.stderr
    assert not os.path.ismount(mountpoint)


# -- config file and tokens ------------------------------------------------------------------


def test_command_line_over_profile_over_defaults(
    fake: FakeServer, tmp_path: Path, mountpoint: Path, dataset: dict[str, Any]
) -> None:
    token = _token_file(tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(
        'default_profile = "site"\n'
        "[profiles.site]\n"
        f'api_url = "{fake.api_url}"\n'
        f'token_file = "{token}"\n'
        f'cache_dir = "{tmp_path / "profile-cache"}"\n'
        f"captures = [{MAIN}]\n"
    )
    log = tmp_path / "mount.log"
    fake.api.configure(refuse={"GET /captures": 403})  # /captures then shows just the pins
    result = _cupixfs(
        "mount",
        str(mountpoint),
        "--config",
        str(config),
        "--capture",
        str(SINGLE),
        "--cache-dir",
        str(tmp_path / "cli-cache"),
        "--log-file",
        str(log),
    )
    assert result.returncode == 0, result.stderr
    # pins add up; the command line's cache dir wins over the profile's
    assert sorted(os.listdir(mountpoint / "captures")) == [str(MAIN), str(SINGLE)]
    _read_videos(mountpoint, dataset, SINGLE)
    assert _cupixfs("unmount", str(mountpoint)).returncode == 0
    _wait_unmounted(log)
    assert _block_files(tmp_path / "cli-cache")
    assert not (tmp_path / "profile-cache").exists()


def test_a_config_file_error_is_one_line_with_its_position(
    tmp_path: Path, mountpoint: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[profiles.site]\napi_url = "http://x"\ncache_size = \n')
    result = _cupixfs("mount", str(mountpoint), "--config", str(config), "--profile", "site")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "line 3" in result.stderr, result.stderr
    config.write_text("[profiles.site]\ncache_sise = 1\n")
    result = _cupixfs("mount", str(mountpoint), "--config", str(config), "--profile", "site")
    assert result.returncode == 2 and "unknown key 'cache_sise'" in result.stderr


def test_a_token_file_others_can_read_is_refused(
    fake: FakeServer, tmp_path: Path, mountpoint: Path
) -> None:
    token = _token_file(tmp_path, mode=0o644)
    result = _cupixfs(
        "mount", str(mountpoint), "--api-url", fake.api_url, "--token-file", str(token)
    )
    assert result.returncode == 2
    assert "chmod 600" in result.stderr and TOKEN not in result.stderr
    config = tmp_path / "config.toml"
    config.write_text(f'[profiles.default]\ntoken_file = "{token}"\n')
    result = _cupixfs("mount", str(mountpoint), "--api-url", fake.api_url, "--config", str(config))
    assert result.returncode == 2 and "chmod 600" in result.stderr
    assert not os.path.ismount(mountpoint)


def test_login_without_keyring_says_so_in_one_line(tmp_path: Path) -> None:
    # A keyring package that fails to import, whether or not the real one is installed.
    shadow = tmp_path / "shadow"
    (shadow / "keyring").mkdir(parents=True)
    (shadow / "keyring" / "__init__.py").write_text("raise ImportError('no keyring here')\n")
    env = _env(PYTHONPATH=os.pathsep.join([str(shadow), *sys.path]))
    result = _run(cupixfs_cmd("login"), env=env, stdin=TOKEN + "\n")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "keyring" in result.stderr and "--token-file" in result.stderr
    assert TOKEN not in result.stderr + result.stdout


# -- cache stats / clear ---------------------------------------------------------------------


def _stats(cache: Path) -> dict[str, Any]:
    result = _cupixfs("cache", "stats", "--cache-dir", str(cache), "--json")
    assert result.returncode == 0, result.stderr
    stats: dict[str, Any] = json.loads(result.stdout)
    return stats


def test_cache_stats_after_a_mount_that_read_files(
    mounter: Any, dataset: dict[str, Any], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    bound = 3 * MiB
    with mounter("--capture", str(MAIN), "--cache-size", str(bound), cache_dir=cache) as m:
        _read_videos(m.path, dataset, MAIN)  # 4.3 MB through a 3 MiB cache
    stats = _stats(cache)
    assert stats["block_files"] > 0
    assert 0 < stats["bytes"] <= stats["bound"] == bound
    last = stats["last_mount"]
    assert last["mountpoint"] == str(m.path) and last["fetched"] > 0
    table = _cupixfs("cache", "stats", "--cache-dir", str(cache))
    assert table.returncode == 0
    assert "block files" in table.stdout and "hit ratio" in table.stdout
    assert "of 3.0 MiB" in table.stdout


def test_cache_stats_of_an_empty_cache(tmp_path: Path) -> None:
    result = _cupixfs("cache", "stats", "--cache-dir", str(tmp_path / "nothing"))
    assert result.returncode == 0, result.stderr
    assert "does not exist" in result.stdout and "none recorded" in result.stdout


def test_cache_clear_all_makes_the_server_serve_again(
    mounter: Any, fake: FakeServer, dataset: dict[str, Any], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with mounter("--capture", str(SINGLE), cache_dir=cache) as m:
        _read_videos(m.path, dataset, SINGLE)
    assert _block_files(cache)
    result = _cupixfs("cache", "clear", "--cache-dir", str(cache))
    assert result.returncode == 0 and "cleared everything" in result.stdout, result.stderr
    assert not _block_files(cache) and not list((cache / "stats").iterdir())
    fake.stats.reset()
    _drop_kernel_cache()
    with mounter("--capture", str(SINGLE), cache_dir=cache) as m:
        _read_videos(m.path, dataset, SINGLE)
    assert fake.stats.snapshot()["blob_bytes"] >= _videos(dataset, SINGLE)[0]["file"]["size"]


def test_cache_clear_of_one_mounted_file(
    mounter: Any, fake: FakeServer, dataset: dict[str, Any], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    videos = sorted(_videos(dataset, MAIN), key=lambda v: -v["file"]["size"])[:2]
    cleared, kept = (v["attributes"]["name"] for v in videos)
    with mounter("--capture", str(MAIN), cache_dir=cache) as m:
        folder = m.path / "captures" / str(MAIN) / "videos"
        for video in videos:
            assert sha256_of(folder / video["attributes"]["name"]) == video["file"]["sha256"]
        # while mounted, as a user would: without --cache-dir, the cache of the mount the
        # file is on (not this user's default one)
        result = _cupixfs("cache", "clear", str(folder / cleared))
        assert result.returncode == 0, result.stderr
        assert "cleared 1 file" in result.stdout and f"removed from {cache}\n" in result.stdout
    fake.stats.reset()
    _drop_kernel_cache()
    with mounter("--capture", str(MAIN), cache_dir=cache) as m:
        folder = m.path / "captures" / str(MAIN) / "videos"
        assert sha256_of(folder / kept) == videos[1]["file"]["sha256"]
        assert fake.stats.snapshot()["blob_bytes"] == 0  # still cached
        assert sha256_of(folder / cleared) == videos[0]["file"]["sha256"]
        assert fake.stats.snapshot()["blob_bytes"] >= videos[0]["file"]["size"]


def test_cache_clear_of_a_path_off_any_mount_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text("not on a mount")
    result = _cupixfs("cache", "clear", "--cache-dir", str(tmp_path), str(tmp_path / "plain.txt"))
    assert result.returncode == 2 and "cupixfs mount" in result.stderr


# -- prefetch --------------------------------------------------------------------------------


def _prefetch_and_remount(
    mounter: Any, fake: FakeServer, cache: Path, folder_of: Any, smaller_than_probe: bool
) -> subprocess.CompletedProcess[str]:
    """Prefetch a folder, remount on the same cache, read its files: the server must send nothing.

    *smaller_than_probe* picks the files read after the remount: those the size
    probe reads whole (at most HEAD_SIZE bytes), or the others.
    """
    with mounter("--capture", str(MAIN), cache_dir=cache) as m:
        folder = folder_of(m.path)
        files = walk_files(folder)
        result = _cupixfs("prefetch", str(folder), "--jobs", "3")
        assert result.returncode == 0, result.stderr
        sizes = {name: os.stat(folder / name).st_size for name in files}
    assert f"prefetched {len(files)} of {len(files)} files" in result.stderr
    fake.stats.reset()
    _drop_kernel_cache()
    with mounter("--capture", str(MAIN), cache_dir=cache) as m:
        for name, size in sizes.items():
            if (size <= HEAD_SIZE) == smaller_than_probe:
                assert len((folder_of(m.path) / name).read_bytes()) == size
    assert fake.stats.snapshot()["blob_bytes"] == 0
    return result


def test_prefetch_fills_the_cache_so_a_remount_needs_no_blob(
    mounter: Any, fake: FakeServer, dataset: dict[str, Any], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    result = _prefetch_and_remount(  # videos and pointclouds, in sub-folders
        mounter, fake, cache, lambda root: root / "captures" / str(MAIN), False
    )
    lines = result.stderr.splitlines()
    assert any(line.startswith("prefetch: ") and "(100.0%)" in line for line in lines), lines
    assert "\r" not in result.stderr  # not a terminal: plain lines
    big = sum(v["file"]["size"] for v in _videos(dataset, MAIN) if v["file"]["size"] > HEAD_SIZE)
    assert _stats(cache)["bytes"] >= big


def test_prefetch_also_keeps_files_the_size_probe_read_whole(
    mounter: Any, fake: FakeServer, tmp_path: Path
) -> None:
    _prefetch_and_remount(
        mounter, fake, tmp_path / "cache", lambda root: root / "captures" / str(MAIN), True
    )


def test_prefetch_then_an_offline_mount_without_token(
    mounter: Any, fake: FakeServer, dataset: dict[str, Any], tmp_path: Path, mountpoint: Path
) -> None:
    """The site-visit recipe: prefetch at the office, mount --offline on site (no network)."""
    cache = tmp_path / "cache"
    with mounter("--capture", str(SINGLE), cache_dir=cache) as m:
        assert _cupixfs("prefetch", str(m.path / "captures" / str(SINGLE))).returncode == 0
    fake.stats.reset()
    fake.faults.update(outage=True)
    _drop_kernel_cache()
    log = tmp_path / "offline.log"
    result = _cupixfs(
        "mount",
        str(mountpoint),
        "--offline",
        "--api-url",
        fake.api_url,
        "--cache-dir",
        str(cache),
        "--capture",
        str(SINGLE),
        "--log-file",
        str(log),
    )
    assert result.returncode == 0, result.stderr + (log.read_text() if log.exists() else "")
    try:
        _read_videos(mountpoint, dataset, SINGLE)
    finally:
        _cupixfs("unmount", str(mountpoint))
    assert fake.stats.snapshot()["blob_bytes"] == 0


def test_prefetch_reports_failures_and_exits_non_zero(
    mounter: Any, fake: FakeServer, dataset: dict[str, Any]
) -> None:
    big = max(_videos(dataset, MAIN), key=lambda v: v["file"]["size"])
    with mounter("--capture", str(MAIN), "--timeout", "2") as m:
        folder = m.path / "captures" / str(MAIN) / "videos"
        os.stat(folder / big["attributes"]["name"])  # its size is known before the outage
        fake.faults.update(outage=True)
        result = _cupixfs(
            "prefetch", str(folder / big["attributes"]["name"]), str(folder / "no-such.insv")
        )
    assert result.returncode == 1
    assert "2 failed" in result.stderr, result.stderr
    assert "no-such.insv: No such file or directory" in result.stderr
    assert f"{big['attributes']['name']}: Input/output error" in result.stderr


# -- status ----------------------------------------------------------------------------------


def test_status_of_a_mount(mounter: Any, dataset: dict[str, Any], tmp_path: Path) -> None:
    cache = tmp_path / "status-cache"
    with mounter("--capture", str(SINGLE), cache_dir=cache) as m:
        _read_videos(m.path, dataset, SINGLE)
        table = _cupixfs("status", str(m.path))
        raw = _cupixfs("status", str(m.path), "--json")
    assert table.returncode == 0, table.stderr
    assert str(m.path) in table.stdout
    for label in ("uptime", "requests", "hit ratio", "disk cache bound"):
        assert label in table.stdout, table.stdout
    assert f"disk cache directory        {cache}\n" in table.stdout, table.stdout
    status = json.loads(raw.stdout)
    assert status["mountpoint"] == str(m.path) and status["fetched"] > 0
    assert status["cache_dir"] == str(cache)


@pytest.mark.skipif(os.geteuid() != 0, reason="the kernel's readahead is raised as root only")
def test_a_mountpoint_with_a_space_gets_its_readahead_raised_and_a_status(
    mounter: Any,
) -> None:
    with mounter("--capture", str(SINGLE), name="my site\tA") as m:
        entry = mountinfo.find(m.path)
        assert entry is not None and entry.fstype == "fuse.cupixfs"
        setting = Path(f"/sys/class/bdi/{entry.device}/read_ahead_kb")
        deadline = time.monotonic() + 10
        while setting.read_text().strip() != "1024" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert setting.read_text().strip() == "1024"
        status = _cupixfs("status", str(m.path))
    assert status.returncode == 0, status.stderr


def test_status_of_something_else_is_a_clear_error(tmp_path: Path) -> None:
    result = _cupixfs("status", str(tmp_path))
    assert result.returncode == 2 and "not a mount point" in result.stderr
    result = _cupixfs("status", "/proc")
    assert result.returncode == 2 and "not a cupixfs mount (it is proc)" in result.stderr


def test_every_command_documents_its_options() -> None:
    for command in (
        ["mount"],
        ["unmount"],
        ["demo"],
        ["login"],
        ["cache", "stats"],
        ["cache", "clear"],
        ["prefetch"],
        ["status"],
    ):
        result = _cupixfs(*command, "--help", env=mount_env())
        assert result.returncode == 0 and "usage: cupixfs" in result.stdout, command
    helper = _run([str(Path(sys.executable).parent / "mount.cupixfs"), "--help"])
    assert helper.returncode == 0 and "SOURCE" in helper.stdout
