"""The mount's pooled HTTP clients: many requests at once are spread over small
connection pools, and every request gives its place back, whatever became of it."""

from __future__ import annotations

import socket

import httpx
import pytest
import trio

from cupixfs.data.http import SHARD_CONNECTIONS, ShardedTransport
from cupixfs.fake.server import FakeServer


def test_requests_at_once_spread_over_small_pools_and_give_their_place_back(
    fake: FakeServer,
) -> None:
    transport = ShardedTransport(4 * SHARD_CONNECTIONS)
    assert transport.busy == [0, 0, 0, 0]
    fake.faults.update(latency_s=0.5)  # so that the requests overlap
    seen: list[list[int]] = []

    async def main() -> None:
        async with httpx.AsyncClient(
            transport=transport, headers={"X-CUPIX-AUTH": fake.token}
        ) as client:

            async def one() -> None:
                response = await client.get(f"{fake.api_url}/me?fields=id")
                assert response.status_code == 200

            async with trio.open_nursery() as nursery:
                for _ in range(40):
                    nursery.start_soon(one)
                await trio.sleep(0.25)
                seen.append(list(transport.busy))
            seen.append(list(transport.busy))
            # A body read as a stream holds its place until it is closed.
            async with client.stream("GET", f"{fake.api_url}/me?fields=id") as response:
                seen.append(list(transport.busy))
                await response.aread()
            seen.append(list(transport.busy))

    trio.run(main)
    during, after, streaming, closed = seen
    assert sorted(during) == [10, 10, 10, 10], during
    assert after == closed == [0, 0, 0, 0]
    assert streaming == [1, 0, 0, 0]  # requests one at a time use the first pool


def test_a_request_that_fails_or_is_cancelled_gives_its_place_back(fake: FakeServer) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{unused.getsockname()[1]}/"  # bound, not listening
    transport = ShardedTransport(2 * SHARD_CONNECTIONS)
    fake.faults.update(latency_s=5)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(refused)
            assert transport.busy == [0, 0]
            with trio.move_on_after(0.3) as scope:
                await client.get(
                    f"{fake.api_url}/me?fields=id", headers={"X-CUPIX-AUTH": fake.token}
                )
            assert scope.cancelled_caught
            assert transport.busy == [0, 0]

    trio.run(main)


def test_the_pools_share_one_tls_context() -> None:
    """Each context holds the CA certificates loaded anew (about 0.7 MiB): seventeen of
    them took a fresh mount from 51 to 64 MiB."""
    transport = ShardedTransport(100)
    contexts = {id(pool._pool._ssl_context) for pool in transport._pools}
    assert len(transport._pools) > 1 and len(contexts) == 1
