"""What SIGHUP does below the kernel: listings made stale are asked again, and kept while
the API is down; inodes stay."""

from __future__ import annotations

from pathlib import Path

import trio

from cupixfs.fake.server import FakeServer
from tests.core.conftest import inode_of, stack_of


def test_expired_listings_are_asked_again_and_served_stale_while_the_api_is_down(
    server: FakeServer, capture_id: int, tmp_path: Path
) -> None:
    async def main() -> None:
        async with stack_of(server, tmp_path, listing_ttl=3600.0, timeout=1.0) as stack:
            namespace = stack.vfs.namespace
            folder = await inode_of(stack.vfs, f"captures/{capture_id}/videos")
            before = await namespace.listdir(folder)
            capture = server.dataset.captures[capture_id]
            removed = server.dataset.videos[capture["video_ids"].pop()]["attributes"]["name"]
            assert await namespace.listdir(folder) == before  # trusted for the TTL

            entries = namespace.expire_listings()
            assert {(folder, name) for name, _ in before} <= set(entries)
            server.faults.update(outage=True)
            assert await namespace.listdir(folder) == before  # stale beats none
            server.faults.update(outage=False)

            namespace.expire_listings()
            after = await namespace.listdir(folder)
            assert after == [(name, inode) for name, inode in before if name != removed]

    trio.run(main)
