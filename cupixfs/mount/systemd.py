"""Tell systemd how the mount is doing (the sd_notify(3) protocol, standard library only).

systemd starts a ``Type=notify`` service with ``NOTIFY_SOCKET`` naming an AF_UNIX
datagram socket: a path, or an abstract name written with a leading ``@``. Each
message is one datagram of ``KEY=VALUE`` lines: ``READY=1`` once the mount answers,
``RELOADING=1`` and ``READY=1`` around a SIGHUP reload, ``STOPPING=1`` when it goes.
Without the variable (not run by systemd) nothing is sent.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)

#: How long a send may wait on a busy systemd before the message is given up (and logged).
SEND_TIMEOUT = 1.0


def notify(*lines: str) -> bool:
    """Send *lines* as one message to ``$NOTIFY_SOCKET``; whether it was sent."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET=%s is not a socket path cupixfs can notify", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto("\n".join(lines).encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", lines[0], exc.strerror or exc)
        return False
    return True


def reloading() -> bool:
    """``RELOADING=1`` with the timestamp ``Type=notify-reload`` requires."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")
