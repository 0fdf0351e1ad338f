"""Processes, mounts and measurements shared by the benchmark figures.

Everything that starts something (the fake server, a cupixfs or rclone mount, a network
namespace) is a context manager that always undoes it, and also registers with the
:class:`Janitor`, the backstop that cleans up after a crash or Ctrl-C. Every external command
runs with a timeout, so a hung mount turns into a :class:`BenchError` instead of a hung run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

MB = 1_000_000
MiB = 1 << 20
GiB = 1 << 30
TOKEN = "bench-token-0123456789"

#: Slowest throughput a read may have before it is called hung (sets every read's timeout).
MIN_RATE = 5 * MB


class BenchError(Exception):
    """A figure cannot be measured; the message is printed in its row."""


# --------------------------------------------------------------------------------------------
# Cleanup
# --------------------------------------------------------------------------------------------


class Janitor:
    """Remembers what this run started, so it can be torn down whatever happens.

    Spawned processes are also written to ``pidfile`` with their start time; a later run kills
    those still alive with that same pid and start time (a crashed run's leftovers), nothing
    else.
    """

    def __init__(self, pidfile: Path) -> None:
        self.pidfile = pidfile
        self.procs: list[subprocess.Popen[Any]] = []
        self.mounts: list[Path] = []
        self.netns: list[str] = []

    def reap_previous(self, work: Path) -> None:
        """Unmount mounts left under ``work`` and kill processes a crashed run left behind."""
        for mountpoint in mounts_under(work):
            force_unmount(mountpoint)
        if not self.pidfile.exists():
            return
        for line in self.pidfile.read_text().splitlines():
            try:
                entry = json.loads(line)
                pid, started = int(entry["pid"]), int(entry["started"])
            except (ValueError, KeyError, TypeError):
                continue
            if _start_time(pid) == started:
                _kill(pid)
        self.pidfile.unlink()

    def spawn(self, args: Sequence[str], log: Path, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``args`` in its own session (Ctrl-C reaches only us), stderr to ``log``."""
        with open(log, "ab") as log_file:
            kwargs.setdefault("stdout", log_file)
            proc: subprocess.Popen[Any] = subprocess.Popen(
                list(args),
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **kwargs,
            )
        self.procs.append(proc)
        started = _start_time(proc.pid)
        if started is not None:
            with open(self.pidfile, "a") as f:
                f.write(json.dumps({"pid": proc.pid, "started": started}) + "\n")
        return proc

    def cleanup(self) -> None:
        for mountpoint in reversed(self.mounts):
            force_unmount(mountpoint)
        for proc in reversed(self.procs):
            stop_process(proc)
        for name in reversed(self.netns):
            delete_netns(name)
        self.mounts.clear()
        self.procs.clear()
        self.netns.clear()
        self.pidfile.unlink(missing_ok=True)


def _start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with the pid, a process's identity."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            time.sleep(0.1)
            os.kill(pid, 0)
        os.kill(pid, signal.SIGKILL)


def mounts_under(root: Path) -> list[Path]:
    root_s = str(root.resolve())
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            point = line.split()[1].replace("\\040", " ")
            if point.startswith(root_s + "/"):
                found.append(Path(point))
    return found


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def force_unmount(mountpoint: Path) -> None:
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, check=False)
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True, check=False)


def delete_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


# --------------------------------------------------------------------------------------------
# Commands and measurements
# --------------------------------------------------------------------------------------------


def run(
    args: Sequence[str], timeout: float, *, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; a timeout or a non-zero exit is a :class:`BenchError`."""
    full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
    try:
        done = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False, env=full_env
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{args[0]} timed out after {timeout:.0f} s") from None
    except FileNotFoundError:
        raise BenchError(f"{args[0]} is not installed") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise BenchError(f"{args[0]} exited {done.returncode}: {lines[-1] if lines else ''}")
    return done


def drop_caches() -> None:
    """Write back dirty pages and drop the page cache, dentries and inodes."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        raise BenchError(f"cannot drop the page cache ({exc.strerror}); run as root") from None


def warm(paths: Sequence[Path]) -> None:
    """Read files into the page cache: the server side of a cold read is a hot CDN, not a disk."""
    buf = bytearray(4 * MiB)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def cold(server_files: Sequence[Path]) -> None:
    """The state before every cold measurement: empty page cache, server blobs in memory."""
    drop_caches()
    warm(server_files)


@dataclass(frozen=True)
class Transfer:
    """Bytes moved in seconds; ``mb_s`` in decimal MB/s like dd and curl."""

    nbytes: int
    seconds: float

    @property
    def mb_s(self) -> float:
        return self.nbytes / MB / self.seconds


def read_timeout(size: int) -> float:
    return 60 + size / MIN_RATE


_DD = re.compile(r"^(\d+) bytes .* copied, ([0-9.e+-]+) s,", re.MULTILINE)


def dd_read(path: Path, expected: int) -> Transfer:
    """``dd if=path of=/dev/null bs=1M``; fails on a short read."""
    done = run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], read_timeout(expected))
    match = _DD.search(done.stderr)
    if not match:
        raise BenchError(f"cannot parse dd output: {done.stderr.strip()[-200:]}")
    nbytes, seconds = int(match[1]), float(match[2])
    if nbytes != expected:
        raise BenchError(f"dd read {nbytes} bytes of {path.name}, expected {expected}")
    return Transfer(nbytes, seconds)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by the ``openssl`` command."""
    if shutil.which("openssl") is None:
        raise BenchError("needs the openssl command")
    cert, key = folder / "cert.pem", folder / "key.pem"
    done = run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        60,
    )
    if done.returncode != 0:
        raise BenchError(f"openssl could not make a certificate: {done.stderr.strip()}")
    return cert, key


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """*values* in this process's environment (so in every process it starts) meanwhile."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def curl_read(url: str, expected: int) -> Transfer:
    """``curl -o /dev/null`` of one URL; its own ``speed_download`` gives the rate."""
    done = run(
        [
            "curl",
            "-sS",
            "--fail",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{speed_download}",
            url,
        ],
        read_timeout(expected),
    )
    size_s, speed_s = done.stdout.split()
    nbytes, speed = int(size_s), float(speed_s)
    if nbytes != expected or speed <= 0:
        raise BenchError(f"curl downloaded {nbytes} bytes, expected {expected}")
    return Transfer(nbytes, nbytes / speed)


def timed(args: Sequence[str], timeout: float) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall time of a command run to completion."""
    start = time.perf_counter()
    done = run(args, timeout)
    return time.perf_counter() - start, done


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError as exc:
        raise BenchError(f"cannot read /proc/{pid}/stat: {exc.strerror}") from None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _vm(pid: int, field: str) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        raise BenchError(f"cannot read /proc/{pid}/status: {exc.strerror}") from None
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    if not match:
        raise BenchError(f"no {field} in /proc/{pid}/status")
    return int(match[1]) * 1024


def vm_hwm(pid: int) -> int:
    """Peak resident set size of a process, in bytes (``VmHWM``)."""
    return _vm(pid, "VmHWM")


def vm_rss(pid: int) -> int:
    """Resident set size of a process now, in bytes (``VmRSS``)."""
    return _vm(pid, "VmRSS")


def drop_dentries() -> None:
    """Make the kernel drop its unused dentries and inodes (a FUSE mount gets FORGETs)."""
    try:
        Path("/proc/sys/vm/drop_caches").write_text("2\n")
    except OSError as exc:
        raise BenchError(f"cannot drop dentries and inodes ({exc.strerror}); run as root") from None


def fresh_dir(path: Path) -> Path:
    """An empty directory at ``path`` (whatever was there is deleted)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


# --------------------------------------------------------------------------------------------
# The fake server
# --------------------------------------------------------------------------------------------


@dataclass
class Server:
    """A running ``python -m cupixfs.fake serve`` and its admin routes."""

    proc: subprocess.Popen[Any]
    data_dir: Path
    api_url: str
    base_url: str
    plain_url: str
    token: str
    http: httpx.Client

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            resp = self.http.request(method, self.base_url + path, json=body)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise BenchError(f"fake server {method} {path}: {exc}") from None
        return resp.json()

    def stats(self) -> dict[str, Any]:
        return dict(self._admin("GET", "/_fake/stats"))

    def reset_stats(self) -> None:
        self._admin("POST", "/_fake/stats/reset")

    def set_faults(self, **knobs: Any) -> None:
        self._admin("POST", "/_fake/faults", knobs)

    def reset_faults(self) -> None:
        self._admin("POST", "/_fake/faults/reset")

    def dataset(self) -> dict[str, Any]:
        return dict(self._admin("GET", "/_fake/dataset"))

    def signed_url(self, api_path: str) -> str:
        """Follow the API's 302 once: the signed blob URL for e.g. ``/videos/5000/download``."""
        try:
            resp = self.http.get(self.api_url + api_path, headers={"X-CUPIX-AUTH": self.token})
        except httpx.HTTPError as exc:
            raise BenchError(f"GET {api_path}: {exc}") from None
        if resp.status_code != 302 or "location" not in resp.headers:
            raise BenchError(f"GET {api_path} answered {resp.status_code}, expected a 302")
        return resp.headers["location"]

    def blob_file(self, blob_id: str) -> Path:
        return self.data_dir / "blobs" / blob_id


def generate_data(data_dir: Path, log: Path, profile: str = "bench") -> None:
    """Write a profile (``bench``: ~3 GiB) into ``data_dir`` unless it is already there."""
    with open(log, "ab") as log_file:
        try:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cupixfs.fake",
                    "generate",
                    "--data",
                    str(data_dir),
                    "--profile",
                    profile,
                ],
                stdout=log_file,
                stderr=log_file,
                timeout=1800,
                check=True,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"generating the {profile} data took over 30 minutes") from None
        except subprocess.CalledProcessError as exc:
            raise BenchError(f"generating the {profile} data failed ({exc}); see {log}") from None


@contextlib.contextmanager
def fake_server(
    janitor: Janitor,
    data_dir: Path,
    log: Path,
    *,
    host: str = "127.0.0.1",
    netns: str | None = None,
    profile: str = "bench",
    per_page: int = 30,
    tls: tuple[Path, Path] | None = None,
) -> Iterator[Server]:
    """Serve (already generated) data of *profile*; inside ``netns`` when given; over
    HTTPS with *tls* (certificate and key files)."""
    args = [
        sys.executable,
        "-m",
        "cupixfs.fake",
        "serve",
        "--data",
        str(data_dir),
        "--profile",
        profile,
        "--host",
        host,
        "--token",
        TOKEN,
        "--per-page",
        str(per_page),
    ]
    if tls is not None:
        args += ["--tls", str(tls[0]), str(tls[1])]
    if netns is not None:
        args = ["ip", "netns", "exec", netns, *args]
    proc = janitor.spawn(args, log, stdout=subprocess.PIPE)
    trust = ssl.create_default_context(cafile=str(tls[0])) if tls is not None else True
    http = httpx.Client(timeout=30, verify=trust)
    try:
        info = _read_info(proc, log, timeout=120)
        server = Server(
            proc,
            data_dir,
            info["api_url"],
            info["base_url"],
            info["plain_url"],
            info["token"],
            http,
        )
        server.reset_faults()
        yield server
    finally:
        http.close()
        stop_process(proc)


def _read_info(proc: subprocess.Popen[Any], log: Path, timeout: float) -> dict[str, str]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if not line:
        stop_process(proc)
        raise BenchError(f"the fake server did not start: {tail(log)}")
    return dict(json.loads(line))


# --------------------------------------------------------------------------------------------
# Mounts
# --------------------------------------------------------------------------------------------


@dataclass
class Mount:
    path: Path
    proc: subprocess.Popen[Any]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def _wait_mounted(mount: Mount, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mount.path):
        if mount.proc.poll() is not None:
            raise BenchError(
                f"{what} exited {mount.proc.returncode} before mounting: {tail(mount.log)}"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not mount within {timeout:.0f} s: {tail(mount.log)}")
        time.sleep(0.05)


def _unmount(mount: Mount) -> None:
    force_unmount(mount.path)
    try:
        mount.proc.wait(15)
    except subprocess.TimeoutExpired:
        stop_process(mount.proc)
    force_unmount(mount.path)


@contextlib.contextmanager
def _mounted(
    janitor: Janitor,
    args: list[str],
    mountpoint: Path,
    log: Path,
    what: str,
    env: dict[str, str] | None = None,
) -> Iterator[Mount]:
    if os.path.ismount(mountpoint):
        force_unmount(mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    janitor.mounts.append(mountpoint)
    proc = janitor.spawn(args, log, env={**os.environ, **(env or {})})
    mount = Mount(mountpoint, proc, log)
    try:
        _wait_mounted(mount, what)
        yield mount
    finally:
        _unmount(mount)


#: Runs ``cupixfs`` from the checkout given as its first argument (``--cupixfs-src``),
#: ahead of the installed one, so a baseline is measured by the very same harness.
_FROM_SOURCE = (
    "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
    "runpy.run_module('cupixfs', run_name='__main__', alter_sys=True)"
)


def cupixfs_mount(
    janitor: Janitor,
    server: Server,
    mountpoint: Path,
    cache_dir: Path,
    log: Path,
    captures: Sequence[int],
    src: Path | None = None,
    extra: Sequence[str] = (),
) -> contextlib.AbstractContextManager[Mount]:
    """``cupixfs mount --foreground``; the mount process is the one whose RSS we read.

    *src* runs the cupixfs of another checkout (its ``cupixfs/`` folder's parent).
    """
    command = ["-m", "cupixfs"] if src is None else ["-c", _FROM_SOURCE, str(src.resolve())]
    args = [
        sys.executable,
        *command,
        "mount",
        str(mountpoint),
        "--api-url",
        server.api_url,
        "--foreground",
        "--cache-dir",
        str(cache_dir),
        "--cache-size",
        "4G",
    ]
    for capture in captures:
        args += ["--capture", str(capture)]
    args += extra
    return _mounted(janitor, args, mountpoint, log, "cupixfs", {"CUPIX_API_TOKEN": server.token})


#: The smallest mount of the same stack (``bench/minimal_mount.py``), that ``cp_r_minimal``
#: puts cupixfs beside.
MINIMAL_MOUNT = Path(__file__).resolve().parent / "minimal_mount.py"


def minimal_mount(
    janitor: Janitor,
    server: Server,
    mountpoint: Path,
    cache_dir: Path | None,
    log: Path,
    cluster: int,
) -> contextlib.AbstractContextManager[Mount]:
    """``bench/minimal_mount.py`` showing *cluster*'s cpc files; a disk cache in *cache_dir*."""
    args = [sys.executable, str(MINIMAL_MOUNT), str(mountpoint), "--api-url", server.api_url]
    args += ["--cluster", str(cluster)]
    if cache_dir is not None:
        args += ["--cache-dir", str(cache_dir)]
    return _mounted(
        janitor, args, mountpoint, log, "the minimal mount", {"CUPIX_API_TOKEN": server.token}
    )


def rclone_mount(
    janitor: Janitor,
    server: Server,
    mountpoint: Path,
    cache_dir: Path,
    log: Path,
    mode: str,
) -> contextlib.AbstractContextManager[Mount]:
    """rclone's http backend over the fake server's ``/plain/`` index, with its defaults."""
    config = cache_dir.parent / "rclone.conf"
    config.touch()
    args = [
        "rclone",
        "mount",
        ":http:",
        str(mountpoint),
        "--http-url",
        server.plain_url,
        "--read-only",
        "--vfs-cache-mode",
        mode,
        "--cache-dir",
        str(cache_dir),
        "--config",
        str(config),
    ]
    if shutil.which("rclone") is None:
        raise BenchError("rclone is not installed (make bench installs it)")
    return _mounted(janitor, args, mountpoint, log, "rclone")
