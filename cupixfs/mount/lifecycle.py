"""A mount's life: check, mount, tell the caller it is ready, serve, reload, unmount.

The mount is ready once the kernel answers a stat of the mountpoint (its FUSE
INIT exchange is over). Without ``--foreground`` the process forks *before* any
thread or event loop exists; the parent waits on a pipe until the child is
ready (exit 0) or has failed (its one-line error, exit 1), so ``cupixfs mount``
returns only once the mount is usable, and a wrong token never leaves a mount
behind. Under systemd (``NOTIFY_SOCKET``) the ready process, or in background
mode the parent on the child's behalf, also sends ``READY=1``.

Signals: SIGINT and SIGTERM unmount; SIGHUP reloads (the token is read again,
cached listings and sizes are dropped) and the mount stays.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pyfuse3
import trio

from cupixfs.api.regions import token_page
from cupixfs.config.settings import MountConfig, default_state_dir
from cupixfs.core.errors import AuthError, CupixError, unwrap
from cupixfs.core.memory import keep_block_memory
from cupixfs.core.redact import redact_url
from cupixfs.fs.fuse_ops import CupixOperations
from cupixfs.mount import systemd
from cupixfs.mount.logs import setup as setup_logging
from cupixfs.mount.mountinfo import find
from cupixfs.mount.stack import Stack, open_stack

log = logging.getLogger(__name__)

Notify = Callable[[str | None], None]


class MountError(Exception):
    """A mount that cannot start; the message is the one line the user sees."""


def fuse_options(config: MountConfig) -> set[str]:
    options = set(pyfuse3.default_options) | {"fsname=cupixfs", "subtype=cupixfs", "ro"}
    if config.allow_other:
        options.add("allow_other")
    return options


def is_stale_mount(path: Path) -> bool:
    """A mount whose process died answers ENOTCONN ("Transport endpoint is not connected").

    statfs is asked because it always reaches the daemon; stat may be answered
    from the kernel's attribute cache even when nobody serves the mount.
    """
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def unmount(mountpoint: Path, lazy: bool = False) -> None:
    """Unmount with ``fusermount3 -u`` (as a user may); raise `MountError` with its reason."""
    args = ["fusermount3", "-u", *(["-z"] if lazy else []), str(mountpoint)]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        raise MountError(f"cannot unmount {mountpoint}: {reason}")


def check_mountpoint(mountpoint: Path) -> None:
    if is_stale_mount(mountpoint):
        log.warning("%s is a stale mount (its process died); cleaning it up", mountpoint)
        try:
            unmount(mountpoint, lazy=True)
        except MountError as exc:
            raise MountError(
                f"{mountpoint} is a stale mount and could not be cleaned ({exc}); "
                f"run: fusermount3 -uz {mountpoint}"
            ) from None
    if not mountpoint.is_dir():
        raise MountError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"{mountpoint} is already mounted; unmount it first")


async def serve(config: MountConfig, notify: Notify) -> None:
    """Mount and serve until unmounted or signalled.

    *notify* gets None once the mount answers, or the error line if it never will.
    """
    async with open_stack(config) as stack:
        try:
            await stack.client.check_auth()
        except AuthError as exc:
            raise MountError(
                f"{exc}; check the token (CUPIX_API_TOKEN, --token-file, the profile or "
                f"cupixfs login), or create one at {token_page(config.region)}"
            ) from None
        except CupixError as exc:
            raise MountError(
                f"cannot reach the Cupix API at {redact_url(config.api_url)}: {exc}"
            ) from None
        operations = CupixOperations(stack.vfs, attr_timeout=config.listing_ttl)
        stack.metrics.add_source(
            lambda: {
                "errors": operations.errors,
                "pushed_bytes": stack.vfs.kernel.pushed_bytes,
                "streams": stack.data.streams_started,
            }
        )
        try:
            pyfuse3.init(operations, str(config.mountpoint), fuse_options(config))
        except RuntimeError as exc:
            raise MountError(f"cannot mount {config.mountpoint}: {exc}") from None
        stack.vfs.kernel.enable()
        stack.data.on_change = stack.vfs.changed
        stack.data.on_resize = stack.vfs.resized
        log.info("mounted %s at %s", redact_url(config.api_url), config.mountpoint)
        unmounted = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_handle_signals, nursery, lambda: reload(stack, config))
                nursery.start_soon(_after_init, config.mountpoint, notify)
                await pyfuse3.main()
                unmounted = True  # the kernel ended the session (fusermount3 -u)
                nursery.cancel_scope.cancel()
        finally:
            systemd.notify("STOPPING=1")
            stack.vfs.kernel.disable()
            pyfuse3.close(unmount=not unmounted)
            log.info("unmounted %s", config.mountpoint)


async def reload(stack: Stack, config: MountConfig) -> None:
    """SIGHUP: read the token again, and drop cached listings and sizes.

    The next ``ls`` or stat asks the API (and storage) again, as after their TTL;
    the kernel is told to forget the names it caches, so it asks us. The mount
    stays, and open files keep the version they read. A reload that goes wrong is
    logged; it never takes the mount down.
    """
    systemd.reloading()
    try:
        source = config.token_source
        if source is not None and source.kind == "environment":
            log.info("the token came from %s, which a running mount cannot read again", source)
        else:
            await stack.client.renew_token()  # logs a line if there is a new one
        entries = stack.vfs.namespace.expire_listings()
        stack.data.drop_sizes()
        await trio.to_thread.run_sync(_forget_kernel_entries, entries)
        log.info(
            "reloaded: %d cached names dropped; listings and sizes are fetched again", len(entries)
        )
    except Exception as exc:
        log.error("reload failed: %s: %s", type(exc).__name__, exc)
        log.debug("traceback of the failed reload", exc_info=exc)
    finally:
        systemd.notify("READY=1")


def _forget_kernel_entries(entries: list[tuple[int, str]]) -> None:
    """Make the kernel forget cached names (and with them their attributes).

    Run from a worker thread: the kernel waits for any lookup in progress in
    the directory, which our own event loop answers.
    """
    for parent, name in entries:
        try:
            pyfuse3.invalidate_entry(pyfuse3.InodeT(parent), pyfuse3.FileNameT(os.fsencode(name)))
        except OSError as exc:  # ENOENT: the kernel had not cached it
            log.debug("invalidate_entry(%d, %r): %s", parent, name, exc)


#: The kernel's readahead for the mount (KiB). Its default, 128, caps FUSE reads at
#: 128 KiB; at 1024 the kernel sends 1 MiB reads, which measured 540 -> 780 MB/s on
#: cached data (fewer round trips through the FUSE request loop).
KERNEL_READAHEAD_KB = 1024


def raise_kernel_readahead(mountpoint: Path, kb: int = KERNEL_READAHEAD_KB) -> None:
    """Raise the mount's backing-device readahead (root only; silently skipped otherwise).

    The device number comes from /proc/self/mountinfo, not stat(): a stat of our
    own mountpoint before the request loop runs would wait on ourselves.
    """
    try:
        entry = find(mountpoint)
        if entry is not None:
            with open(f"/sys/class/bdi/{entry.device}/read_ahead_kb", "w") as setting:
                setting.write(str(kb))
    except OSError as exc:
        log.debug("kernel readahead left at its default: %s", exc)


#: How long the kernel may take to answer the first stat of a new mount.
READY_TIMEOUT = 30.0


async def _after_init(mountpoint: Path, notify: Notify) -> None:
    """Say the mount is ready once the kernel answers a stat of it; then apply the
    settings the kernel only keeps after its FUSE_INIT exchange.

    A statfs from a worker thread returns only after our own request loop has
    answered INIT (and then the statfs): from then on the mount is usable.
    """
    with trio.move_on_after(READY_TIMEOUT):
        await trio.to_thread.run_sync(os.statvfs, mountpoint, abandon_on_cancel=True)
        notify(None)
        await trio.to_thread.run_sync(raise_kernel_readahead, mountpoint)
        return
    raise MountError(f"{mountpoint} did not answer a stat within {READY_TIMEOUT:g}s of mounting")


async def _handle_signals(nursery: trio.Nursery, reload: Callable[[], Awaitable[None]]) -> None:
    """SIGHUP reloads (in its own task, so a stop is never held up); SIGINT and SIGTERM
    unmount."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("received SIGHUP; reloading")
                nursery.start_soon(reload)
                continue
            log.info("received %s; unmounting", signal.Signals(signum).name)
            nursery.cancel_scope.cancel()
            return


def run(config: MountConfig) -> int:
    """Mount per *config*; returns the process exit code."""
    os.umask(0o077)  # everything the mount writes (cache, logs) is private to its user
    config.mountpoint = config.mountpoint.resolve()
    try:
        check_mountpoint(config.mountpoint)
    except MountError as exc:
        print(f"cupixfs: {exc}", file=sys.stderr)
        return 1
    if config.foreground:
        setup_logging(config.debug, config.log_file)
        return _run_here(config, _tell_systemd)
    return _run_daemon(config)


def _tell_systemd(error: str | None) -> None:
    if error is None:
        systemd.notify("READY=1")


def _run_here(config: MountConfig, notify: Notify) -> int:
    notified = False

    def once(error: str | None) -> None:
        nonlocal notified
        if not notified:
            notified = True
            notify(error)

    keep_block_memory()
    try:
        trio.run(serve, config, once)
    except BaseException as raw:
        exc = unwrap(raw)
        if isinstance(exc, KeyboardInterrupt):
            return 0
        message = str(exc) if isinstance(exc, MountError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, MountError):
            log.error("mount failed", exc_info=exc)
        once(message)
        if config.foreground:
            print(f"cupixfs: {message}", file=sys.stderr)
        return 1
    return 0


def _run_daemon(config: MountConfig) -> int:
    """Fork; the child mounts and serves, the parent reports how that went."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid > 0:  # parent
        os.close(write_end)
        with os.fdopen(read_end, "r") as pipe:
            line = pipe.readline().strip()
        if line == "ok":
            # The parent is the process systemd started (its main PID): it says the
            # mount is ready and hands the main PID over to the child that serves it.
            systemd.notify("READY=1", f"MAINPID={pid}")
            return 0
        print(f"cupixfs: {line or 'the mount process died before it was ready'}", file=sys.stderr)
        os.waitpid(pid, 0)
        return 1
    # child
    os.close(read_end)
    os.setsid()
    log_file = config.log_file or default_state_dir() / "cupixfs.log"
    setup_logging(config.debug, log_file)

    def notify(error: str | None) -> None:
        os.write(write_end, b"ok\n" if error is None else error.encode() + b"\n")
        os.close(write_end)
        if error is None:
            _detach_stdio()

    code = _run_here(config, notify)
    os._exit(code)


def _detach_stdio() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
