"""The mount's HTTP clients: storage's, tuned for large bodies, and pools that stay cheap
with many requests in flight.

httpcore reads a response 64 KiB per socket read, and every read costs a
round through h11's parser and a few Python frames. On a fast link that
per-chunk cost, not the network, is the limit: one stream of httpx on trio
measured 281 MB/s here with 64 KiB reads and 867 MB/s with 1 MiB reads
(``bench/`` has the figures). So the read size is raised, once, before any
connection is made; it changes nothing else about the protocol.

httpcore's connection pool, each time a request starts or ends, goes over every
connection it holds, polls each idle one's socket, and counts the connections anew
for each idle one: the cost per request grows with the square of the connections
open. Measured here against the fake server, 64 requests at once through one pool cost
5.4 ms of CPU each. So a pool that may hold many connections is made of several small
ones (`ShardedTransport`): 64 at once through pools of 16 cost 1.3-1.4 ms each, through
pools of 8 1.1 ms, through pools of 4 1.4-1.5 ms (more pools to choose from).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpcore
import httpx

READ_SIZE = 1 << 20
#: Connections one httpcore pool holds at most; a larger pool is several of these.
SHARD_CONNECTIONS = 8


def tune_read_size(size: int = READ_SIZE) -> None:
    """Make httpcore's HTTP/1.1 connections (async and sync) read up to *size* bytes per
    socket read."""
    for name in ("AsyncHTTP11Connection", "HTTP11Connection"):
        connection = getattr(httpcore, name, None)
        if connection is not None and hasattr(connection, "READ_NUM_BYTES"):
            connection.READ_NUM_BYTES = max(connection.READ_NUM_BYTES, size)


class ShardedTransport(httpx.AsyncBaseTransport):
    """Up to *max_connections* connections, as pools of at most `SHARD_CONNECTIONS` each.

    A request goes to the pool with the fewest requests in flight (the first one when
    they tie), so requests one after another reuse the first pool's connections, and
    only requests at once spread over the others. Everything else is httpx's own
    transport, one per pool, and one TLS context for them all (with the environment's
    certificates, as httpx loads them): a context each cost about 0.7 MiB.
    """

    def __init__(self, max_connections: int) -> None:
        count = -(-max(1, max_connections) // SHARD_CONNECTIONS)
        each = -(-max(1, max_connections) // count)
        limits = httpx.Limits(max_connections=each, max_keepalive_connections=each)
        tls = httpx.create_ssl_context()
        self._pools = [httpx.AsyncHTTPTransport(verify=tls, limits=limits) for _ in range(count)]
        #: Requests in flight per pool, from sending until their response is closed.
        self.busy = [0] * count

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = self.busy.index(min(self.busy))
        self.busy[index] += 1
        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            self.busy[index] -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Released(response.stream, self.busy, index)
        return response

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


class _Released(httpx.AsyncByteStream):
    """A response body that gives its pool's place back when it is closed (once)."""

    def __init__(self, body: httpx.AsyncByteStream, busy: list[int], index: int) -> None:
        self._body = body
        self._busy: list[int] | None = busy
        self._index = index

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._body:
            yield chunk

    async def aclose(self) -> None:
        if self._busy is not None:
            self._busy[self._index] -= 1
            self._busy = None
        await self._body.aclose()


def pooled_client(
    timeout: httpx.Timeout, headers: dict[str, str], max_connections: int
) -> httpx.AsyncClient:
    """An async client that may hold *max_connections* connections (`ShardedTransport`)."""
    return httpx.AsyncClient(
        timeout=timeout, headers=headers, transport=ShardedTransport(max_connections)
    )


def storage_client(
    timeout: httpx.Timeout, headers: dict[str, str], max_connections: int
) -> httpx.AsyncClient:
    """An async client for signed storage URLs: no auth, a pool sized for parallel ranges."""
    tune_read_size()
    return pooled_client(timeout, headers, max_connections)


def storage_sync_client(
    timeout: httpx.Timeout, headers: dict[str, str], max_connections: int
) -> httpx.Client:
    """The synchronous twin of `storage_client`, for long bodies read in worker threads
    (see `cupixfs.data.fetch.BodyStream`)."""
    tune_read_size()
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx.Client(timeout=timeout, headers=headers, limits=limits)
