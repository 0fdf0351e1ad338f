"""A shaped link: the fake server in a network namespace behind a rate-limited veth pair.

::

    host (client: cupixfs, curl)                 netns cupixbench (fake server)
    cpxb-host 10.213.7.1/30  <──── veth ────>  cpxb-ns 10.213.7.2/30
                                               egress: tbf 400mbit (server -> client)

Only the server-to-client direction is shaped: that is where the bytes flow. The per-response
latency is the fake server's ``latency_s`` fault knob, set by the caller. The namespace (and
with it both veth ends) is deleted on exit, also after a crash of a previous run.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator

from harness import BenchError, Janitor, delete_netns, run

NETNS = "cupixbench"
HOST_IF = "cpxb-host"
NS_IF = "cpxb-ns"
HOST_ADDR = "10.213.7.1"
NS_ADDR = "10.213.7.2"


def remove_link() -> None:
    """Delete the namespace and the host's veth end, if a previous run left them."""
    delete_netns(NETNS)
    subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True, check=False)


@contextlib.contextmanager
def shaped_link(
    janitor: Janitor, rate: str = "400mbit", burst: str = "256kbit", latency: str = "50ms"
) -> Iterator[str]:
    """Create the namespace and link; yields the namespace's name, for ``ip netns exec``."""
    remove_link()
    janitor.netns.append(NETNS)
    ns = ["ip", "netns", "exec", NETNS]
    try:
        try:
            _setup(ns, rate, burst, latency)
        except BenchError as exc:
            raise BenchError(f"cannot set up the shaped link: {exc}") from None
        yield NETNS
    finally:
        remove_link()
        janitor.netns.remove(NETNS)


def _setup(ns: list[str], rate: str, burst: str, latency: str) -> None:
    tbf = ["tbf", "rate", rate, "burst", burst, "latency", latency]
    commands = [
        ["ip", "netns", "add", NETNS],
        ["ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF],
        ["ip", "link", "set", NS_IF, "netns", NETNS],
        ["ip", "addr", "add", f"{HOST_ADDR}/30", "dev", HOST_IF],
        ["ip", "link", "set", HOST_IF, "up"],
        [*ns, "ip", "addr", "add", f"{NS_ADDR}/30", "dev", NS_IF],
        [*ns, "ip", "link", "set", NS_IF, "up"],
        [*ns, "ip", "link", "set", "lo", "up"],
        [*ns, "tc", "qdisc", "add", "dev", NS_IF, "root", *tbf],
    ]
    for cmd in commands:
        run(cmd, 30)
