"""A mount that lives for weeks: a rotated token, SIGHUP, systemd readiness, a rotated log.

* The token is rotated (a new one written to its file, the old one revoked): reads and
  listings work again without a remount, at once or on SIGHUP.
* SIGHUP reloads: a listing changed on the server shows at once, an open file reads on,
  and the mount stays. SIGTERM still unmounts.
* Under systemd (a fake ``NOTIFY_SOCKET`` here), ``READY=1`` comes once the mount answers,
  from the process systemd started, and ``STOPPING=1`` when it goes.
* The log file of a background mount is renamed (logrotate): new lines go to a new file.
* A cache directory written by a cupixfs of another cache format is set aside, never read;
  one from before the format marker is set aside too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cupixfs.core import cache_layout as layout
from cupixfs.data import block_file
from cupixfs.fake.server import FakeServer
from tests.conftest import TOKEN, Mount, cupixfs_cmd, mount_env
from tests.faults.conftest import (
    DataFile,
    data_files,
    errno_name,
    largest,
    log_lines,
    pin_args,
    sha256_fresh,
)

NEW_TOKEN = "rotated-token-1111-SECRET"
NEWER_TOKEN = "rotated-token-2222-SECRET"


def write_token(path: Path, token: str) -> None:
    """Rotate a token file the way tools do: a private new file renamed over the old one."""
    new = path.with_suffix(".new")
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(new, path)


def wait_for_log(m: Mount, needle: str, count: int = 1, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if m.log_text().count(needle) >= count:
            return
        time.sleep(0.05)
    pytest.fail(f"no {needle!r} (x{count}) in the log within {timeout}s:\n{m.log_text()}")


def reload(m: Mount, count: int = 1) -> None:
    """SIGHUP, then wait until the mount says the reload is done (its *count*-th)."""
    m.process.send_signal(signal.SIGHUP)
    wait_for_log(m, "reloaded:", count)


def lazy_unmount(path: Path) -> None:
    """Unmount whatever is left at *path*, even a stale mount (``ismount`` misses those)."""
    subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True, check=False)


def _capture(dataset: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in dataset["captures"] if c["name"] == name)


def _errno_of(operation: Callable[[], object]) -> str:
    try:
        operation()
    except OSError as exc:
        return errno_name(exc.errno)
    return "no error"


# --- a rotated token ---------------------------------------------------------------------------


def test_a_token_rotated_in_its_file_is_picked_up_without_a_remount(
    mounter: Callable[..., Any], fake: FakeServer, dataset: dict[str, Any], tmp_path: Path
) -> None:
    main, single = _capture(dataset, "main"), _capture(dataset, "single")
    videos = [f for f in data_files(dataset) if f.rel.startswith(f"captures/{main['id']}/")]
    token_file = tmp_path / "token"
    write_token(token_file, TOKEN)
    # The environment's token is never valid: only the file's tokens can make this work.
    with mounter(*pin_args(dataset), "--token-file", str(token_file), token="env-SECRET") as m:
        assert os.listdir(m.path / "captures" / str(main["id"]) / "videos")
        # Signed URLs handed out so far count as expired: every read below needs the API.
        fake.faults.update(clock_offset_s=7200, url_ttl_s=4 * 3600)

        # A rotation: the new token is written, then the old one is revoked.
        write_token(token_file, NEW_TOKEN)
        fake.set_tokens([NEW_TOKEN])
        single_videos = m.path / "captures" / str(single["id"]) / "videos"
        assert len(os.listdir(single_videos)) == len(single["video_ids"])
        for f in videos:
            with open(m.path / f.rel, "rb") as file:
                file.seek(max(0, f.size - 100))
                assert len(file.read()) == min(100, f.size), f.rel

        # Revoked with nothing new written: EACCES, as before.
        fake.set_tokens([])
        cluster = dataset["clusters"][0]["id"]
        refused = _errno_of(lambda: os.listdir(m.path / "clusters" / str(cluster)))
        # A new token written after the refusal is read at once on SIGHUP.
        write_token(token_file, NEWER_TOKEN)
        fake.set_tokens([NEWER_TOKEN])
        reload(m)
        assert os.listdir(m.path / "clusters" / str(cluster))
        log = m.log_text()

    assert refused == "EACCES"
    picked = log_lines(log, "picked up a new API token")
    assert len(picked) == 2, log
    assert all(f"from token file {token_file}" in line for line in picked), picked
    for secret in (TOKEN, NEW_TOKEN, NEWER_TOKEN, "env-SECRET"):
        assert secret not in log
    assert "Traceback" not in log


# --- SIGHUP ------------------------------------------------------------------------------------


def test_sighup_shows_server_changes_at_once_and_open_files_read_on(
    mounter: Callable[..., Any], private_fake: FakeServer
) -> None:
    dataset = private_fake.dataset.snapshot()
    main = _capture(dataset, "main")
    opened = largest(dataset)  # 3 blocks, read across the reload
    assert opened.rel.startswith(f"captures/{main['id']}/videos/")
    others = [
        f
        for f in data_files(dataset)
        if f.rel.startswith(f"captures/{main['id']}/videos/") and f != opened
    ]
    removed, renamed, resized = others[0], others[1], others[2]
    removed_id, renamed_id, resized_id = (
        int(f.blob_id.split("-")[1]) for f in (removed, renamed, resized)
    )
    opened_bytes = (private_fake.dataset.dir / "blobs" / opened.blob_id).read_bytes()
    folder = f"captures/{main['id']}/videos"
    args = [*pin_args(dataset), "--listing-ttl", "3600"]  # nothing expires by itself here
    with mounter(*args, server=private_fake) as m:
        before = sorted(os.listdir(m.path / folder))
        assert (m.path / resized.rel).stat().st_size == resized.size
        assert (m.path / renamed.rel).exists()
        handle = open(m.path / opened.rel, "rb")  # noqa: SIM115 (closed below)
        try:
            head = handle.read(opened.size // 2)

            # On the server: a video leaves the capture, one is renamed, one grows.
            capture = private_fake.dataset.captures[main["id"]]
            capture["video_ids"] = [v for v in capture["video_ids"] if v != removed_id]
            private_fake.dataset.videos[renamed_id]["attributes"]["name"] = "renamed.insv"
            video = private_fake.dataset.videos[resized_id]
            video["attributes"]["updated_at"] = "2031-01-01T00:00:00.000Z"
            private_fake.dataset.replace_blob(resized.blob_id, resized.size + 12345)
            # Without a reload, the mount trusts what it listed for the listing TTL.
            assert sorted(os.listdir(m.path / folder)) == before
            assert (m.path / resized.rel).stat().st_size == resized.size

            reload(m)
            after = sorted(os.listdir(m.path / folder))
            new_size = (m.path / resized.rel).stat().st_size
            gone = [os.path.exists(m.path / f.rel) for f in (removed, renamed)]
            tail = handle.read()
        finally:
            handle.close()
        still_mounted = os.path.ismount(m.path) and m.process.poll() is None
        m.process.send_signal(signal.SIGTERM)  # and SIGTERM still unmounts cleanly
        code = m.process.wait(timeout=15)
        log = m.log_text()

    names = {Path(f.rel).name for f in (removed, renamed)}
    assert after == sorted((set(before) - names) | {"renamed.insv"})
    assert gone == [False, False]
    assert new_size == resized.size + 12345
    assert head + tail == opened_bytes
    assert still_mounted and code == 0 and not os.path.ismount(m.path)
    assert "received SIGHUP; reloading" in log and "Traceback" not in log


# --- systemd readiness -------------------------------------------------------------------------


@dataclass
class Message:
    text: str
    sender: int  # the sending process's pid (SCM_CREDENTIALS, as systemd checks it)
    mounted: bool  # whether the mount was there when the message arrived
    answered_stat: bool  # whether a stat of the mountpoint answered right then


@dataclass
class NotifySocket:
    """A stand-in for systemd's notification socket, checking the mount on each message."""

    address: str  # as NOTIFY_SOCKET says it ("@name" for an abstract socket)
    mountpoint: Path
    messages: list[Message] = field(default_factory=list)

    def wait_for(self, prefix: str, timeout: float = 20) -> Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                if message.text.startswith(prefix):
                    return message
            time.sleep(0.05)
        pytest.fail(f"no {prefix!r} from the mount; got {self.messages}")


def _answers_stat(path: Path) -> bool:
    """Whether the FUSE mount at *path* answers statfs within 2 s (asked from a thread)."""
    answered = threading.Event()

    def ask() -> None:
        try:
            os.statvfs(path)
            answered.set()
        except OSError:
            pass

    threading.Thread(target=ask, daemon=True).start()
    return answered.wait(2)


@contextmanager
def notify_socket(address: str, mountpoint: Path) -> Iterator[NotifySocket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + address[1:] if address.startswith("@") else address)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.settimeout(0.2)
    listener = NotifySocket(address, mountpoint)
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            try:
                data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            sender = next(
                struct.unpack("3i", cdata)[0]
                for level, kind, cdata in ancillary
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
            )
            mounted = os.path.ismount(mountpoint)
            answered = mounted and _answers_stat(mountpoint)
            listener.messages.append(Message(data.decode(), sender, mounted, answered))

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join()
        sock.close()


def test_foreground_mount_notifies_systemd_once_it_answers(
    fake: FakeServer, tmp_path: Path
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    address = f"@cupixfs-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    with notify_socket(address, mountpoint) as systemd:
        env = dict(mount_env(), NOTIFY_SOCKET=address)
        args = cupixfs_cmd("mount", str(mountpoint), "--api-url", fake.api_url, "--foreground",
                           "--cache-dir", str(tmp_path / "cache"))  # fmt: skip
        with open(tmp_path / "log", "wb") as log:
            process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            ready = systemd.wait_for("READY=1")
            assert os.listdir(mountpoint)
            process.send_signal(signal.SIGHUP)
            reloading = systemd.wait_for("RELOADING=1")
            deadline = time.monotonic() + 15
            while [m.text for m in systemd.messages].count("READY=1") < 2:
                assert time.monotonic() < deadline, systemd.messages
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
            stopping = systemd.wait_for("STOPPING=1")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            lazy_unmount(mountpoint)

    assert ready.mounted and ready.answered_stat, ready
    assert ready.text == "READY=1" and ready.sender == process.pid
    assert "MONOTONIC_USEC=" in reloading.text and reloading.sender == process.pid
    assert stopping.sender == process.pid
    texts = [m.text.splitlines()[0] for m in systemd.messages]
    assert texts == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], texts


def test_background_mount_hands_systemd_the_pid_that_serves(
    fake: FakeServer, tmp_path: Path
) -> None:
    """The process systemd started (its main PID) says READY=1 with MAINPID= of the child
    that serves, so a plain ``Type=notify`` unit works without ``--foreground``."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    short = Path(tempfile.mkdtemp(prefix="cupixfs-notify-"))  # a socket path is <108 bytes
    try:
        with notify_socket(str(short / "notify"), mountpoint) as systemd:
            env = dict(mount_env(), NOTIFY_SOCKET=str(short / "notify"))
            args = cupixfs_cmd("mount", str(mountpoint), "--api-url", fake.api_url,
                               "--cache-dir", str(tmp_path / "cache"),
                               "--log-file", str(tmp_path / "log"))  # fmt: skip
            try:
                parent = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
                _, stderr = parent.communicate(timeout=60)
                assert parent.returncode == 0, stderr
                ready = systemd.wait_for("READY=1")
                main_pid = int(ready.text.split("MAINPID=")[1])
                serving = Path(f"/proc/{main_pid}/cmdline").read_bytes()
                subprocess.run(["fusermount3", "-u", str(mountpoint)], check=True)
                stopping = systemd.wait_for("STOPPING=1")
            finally:
                lazy_unmount(mountpoint)
    finally:
        (short / "notify").unlink(missing_ok=True)
        short.rmdir()

    assert ready.mounted and ready.answered_stat, ready
    assert ready.sender == parent.pid and main_pid != parent.pid
    assert b"cupixfs" in serving
    assert stopping.sender == main_pid


# --- the log file ------------------------------------------------------------------------------


def test_a_background_mounts_log_renamed_by_logrotate_goes_on_in_a_new_file(
    fake: FakeServer, tmp_path: Path
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log = tmp_path / "state" / "cupixfs.log"
    args = cupixfs_cmd("mount", str(mountpoint), "--api-url", fake.api_url,
                       "--cache-dir", str(tmp_path / "cache"), "--log-file", str(log))  # fmt: skip
    old_umask = os.umask(0o022)
    try:
        result = subprocess.run(args, env=mount_env(), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        pid = next(int(line.split()[0]) for line in _pids_of(mountpoint))
        os.rename(log, tmp_path / "state" / "cupixfs.log.1")  # logrotate, without copytruncate
        os.kill(pid, signal.SIGHUP)  # anything the mount logs from now on
        deadline = time.monotonic() + 15
        while not (log.exists() and "reloaded:" in log.read_text()):
            assert time.monotonic() < deadline, "no new log file after the rename"
            time.sleep(0.05)
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=True)
        while "unmounted" not in log.read_text():
            assert time.monotonic() < deadline + 15, log.read_text()
            time.sleep(0.05)
    finally:
        os.umask(old_umask)
        lazy_unmount(mountpoint)

    rotated = (tmp_path / "state" / "cupixfs.log.1").read_text()
    current = log.read_text()
    assert "mounted" in rotated and "reloaded:" not in rotated
    assert "received SIGHUP" in current and "unmounted" in current
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def _pids_of(mountpoint: Path) -> list[str]:
    """``pid cmdline`` of the processes serving *mountpoint* (a background mount's child)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(mountpoint).encode() in cmdline and b"mount" in cmdline:
            found.append(f"{proc.name} {cmdline!r}")
    assert len(found) == 1, found
    return found


# --- another version's cache -------------------------------------------------------------------


def _cached_payloads(cache: Path) -> Iterator[tuple[Path, int, bytes]]:
    """Every block in the cache: its version's file, its index, its payload."""
    for path in (cache / "blocks").rglob("*"):
        if path.is_file():
            for index in block_file.slots(str(path)):
                payload = block_file.read(str(path), index)
                assert payload is not None
                yield path, index, payload


def _poison_blocks(cache: Path) -> int:
    """Give every cached block other bytes under a valid header: whoever reads them is misled."""
    count = 0
    for path, index, payload in list(_cached_payloads(cache)):
        block_file.write(str(path), index, bytes(b ^ 0xFF for b in payload))
        count += 1
    return count


def _cached_video(
    mounter: Callable[..., Any], dataset: dict[str, Any], tmp_path: Path
) -> tuple[DataFile, list[str], Path]:
    """A video read once through a mount, so its blocks are in a fresh cache dir: the
    video, the mount's arguments and that cache dir."""
    single = _capture(dataset, "single")
    video = next(f for f in data_files(dataset) if f.rel.startswith(f"captures/{single['id']}/"))
    cache = tmp_path / "cache"
    args = ["--capture", str(single["id"])]
    with mounter(*args, cache_dir=cache) as m:
        assert sha256_fresh(m.path / video.rel) == video.sha256
    return video, args, cache


def test_a_cache_of_a_future_format_is_set_aside_unread(
    mounter: Callable[..., Any], fake: FakeServer, dataset: dict[str, Any], tmp_path: Path
) -> None:
    video, args, cache = _cached_video(mounter, dataset, tmp_path)
    assert json.loads((cache / "cache-format.json").read_text())["format"] == layout.FORMAT
    # A newer cupixfs took the directory over: same names, bytes that mean something else.
    assert _poison_blocks(cache) > 0
    (cache / "cache-format.json").write_text('{"format": 99, "written_by": "cupixfs 9.0"}')
    (cache / "demo-data").mkdir()  # the demo's sample data is not the cache's: it stays

    with mounter(*args, cache_dir=cache) as m:
        digest = sha256_fresh(m.path / video.rel)
        log = m.log_text()
    stats = subprocess.run(cupixfs_cmd("cache", "stats", "--cache-dir", str(cache)),
                           capture_output=True, text=True, check=False)  # fmt: skip
    aside = cache / "old-format-99"
    aside_files = sorted(str(p.relative_to(aside)) for p in aside.rglob("*") if p.is_file())
    marker = json.loads((cache / "cache-format.json").read_text())
    cleared = subprocess.run(cupixfs_cmd("cache", "clear", "--cache-dir", str(cache)),
                             capture_output=True, text=True, check=False)  # fmt: skip

    assert digest == video.sha256  # fetched again, not misread from the other format
    assert len(log_lines(log, "set it aside")) == 1, log
    assert "format 99 (written by cupixfs 9.0)" in log and "Traceback" not in log
    assert "cache-format.json" in aside_files and "last-mount.json" in aside_files
    assert any(name.startswith("blocks/") for name in aside_files)
    assert marker["format"] == layout.FORMAT and (cache / "demo-data").is_dir()
    assert "old-format-99" in stats.stdout, stats.stdout
    assert cleared.returncode == 0 and not aside.exists()


def test_a_cache_from_before_the_format_marker_is_set_aside_unread(
    mounter: Callable[..., Any], fake: FakeServer, dataset: dict[str, Any], tmp_path: Path
) -> None:
    video, args, cache = _cached_video(mounter, dataset, tmp_path)
    # As the cupixfs of before the marker left it: no marker, and its blocks in the old
    # layout (a 16-byte header), here holding other bytes: whoever reads them is misled.
    (cache / "cache-format.json").unlink()
    for path, index, payload in list(_cached_payloads(cache)):
        payload = bytes(b ^ 0xFF for b in payload)
        path.with_name(f"{path.name}-{index}").write_bytes(
            struct.pack("<4sIII", b"CPXB", len(payload), zlib.crc32(payload), 0) + payload
        )
        path.unlink(missing_ok=True)
    with mounter(*args, cache_dir=cache) as m:
        digest = sha256_fresh(m.path / video.rel)
        log = m.log_text()
    assert digest == video.sha256  # fetched again, never misread
    assert len(log_lines(log, "set it aside")) == 1, log
    assert (cache / f"old-format-{layout.UNMARKED_FORMAT}" / "blocks").is_dir()
    assert json.loads((cache / "cache-format.json").read_text())["format"] == layout.FORMAT
