"""Assemble one mount's layers (api -> data -> namespace -> vfs) from a `MountConfig`.

Kept apart from `cupixfs.mount` so tests and tools can build the very same
stack without a kernel mount.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from cupixfs import __version__
from cupixfs.api.client import CupixClient
from cupixfs.config import MountConfig
from cupixfs.data.blocks import BlockCache
from cupixfs.data.fetch import RangeFetcher
from cupixfs.data.signed_url import SignedUrls
from cupixfs.data.store import DataStore
from cupixfs.namespace.listing import Tree
from cupixfs.namespace.tree import Namespace
from cupixfs.retry import RetryPolicy
from cupixfs.vfs import Vfs


@dataclass
class Stack:
    client: CupixClient
    fetcher: RangeFetcher
    blocks: BlockCache
    vfs: Vfs


@asynccontextmanager
async def open_stack(config: MountConfig) -> AsyncIterator[Stack]:
    """The layers of one mount, with their HTTP connection pools open."""
    policy = RetryPolicy(deadline=config.timeout, attempt_timeout=min(15.0, config.timeout))
    timeout = httpx.Timeout(policy.attempt_timeout)
    headers = {"User-Agent": f"cupixfs/{__version__}"}
    limits = httpx.Limits(
        max_connections=config.max_requests + 4, max_keepalive_connections=config.max_requests
    )
    # Two pools: the API (which gets the token) and storage (which must never see it).
    async with (
        httpx.AsyncClient(timeout=timeout, headers=headers) as api_http,
        httpx.AsyncClient(timeout=timeout, headers=headers, limits=limits) as blob_http,
    ):
        client = CupixClient(api_http, config.api_url, config.token, policy, config.per_page)
        fetcher = RangeFetcher(blob_http, SignedUrls(client), policy, config.max_requests)
        blocks = BlockCache(config.memory_cache)
        data = DataStore(
            fetcher, blocks, stat_ttl=max(config.listing_ttl, 600.0), static_ttl=config.listing_ttl
        )
        started = datetime.now(UTC)
        tree = Tree(client, started)
        tree.known_captures.update(config.captures)
        tree.known_records.update(config.records)
        namespace = Namespace(tree.root(), listing_ttl=config.listing_ttl)
        yield Stack(client, fetcher, blocks, Vfs(namespace, data, started))
