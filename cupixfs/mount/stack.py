"""Assemble one mount's layers (api -> data -> namespace -> vfs) from a `MountConfig`.

Kept apart from `cupixfs.mount.lifecycle` so tests and tools can build the very same
stack without a kernel mount.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import trio

from cupixfs import __version__
from cupixfs.api.client import MAX_API_REQUESTS, CupixClient
from cupixfs.api.response_cache import ResponseCache
from cupixfs.config.settings import MountConfig
from cupixfs.core import cache_format
from cupixfs.core.retry import Health, RetryPolicy
from cupixfs.core.write_behind import WriteBehind
from cupixfs.data.blocks import BLOCK_SIZE, BlockCache
from cupixfs.data.disk_cache import DiskCache, default_cache_size, prepare_cache_dir
from cupixfs.data.fetch import POOL_SIZE, STREAMS_AT_ONCE, RangeFetcher
from cupixfs.data.http import pooled_client, storage_client, storage_sync_client
from cupixfs.data.rawhttp import RawHttp
from cupixfs.data.signed_url import SignedUrls
from cupixfs.data.stat_cache import StatCache
from cupixfs.data.store import DataStore, ReadAheadConfig
from cupixfs.fs.vfs import Vfs
from cupixfs.mount.metrics import Metrics
from cupixfs.namespace.listing import Tree
from cupixfs.namespace.tree import Namespace
from cupixfs.views import DerivedViews
from cupixfs.views.notes import Notes

log = logging.getLogger(__name__)

PERSISTED_STAT_TTL = 24 * 3600.0
#: At unmount, how long the blocks still on their way to the disk cache may take.
DRAIN_TIMEOUT = 10.0


@dataclass
class Stack:
    client: CupixClient
    fetcher: RangeFetcher
    blocks: BlockCache
    data: DataStore
    vfs: Vfs
    metrics: Metrics
    views: DerivedViews | None = None


def readahead_for(memory_cache: int) -> ReadAheadConfig:
    """Read-ahead sized to the memory cache it lands in.

    Blocks fetched ahead wait in the memory LRU until read; if the window were a
    large part of it, they would be evicted before use and fetched twice
    (measured: a 64 MiB window in a 64 MiB cache halved warm throughput, while a
    16 MiB one lost 2 % on a 20 ms link). So the window is at most half the cache,
    and the blocks in flight three quarters of it.
    """
    default = ReadAheadConfig()
    maximum = max(BLOCK_SIZE, min(default.maximum, memory_cache // 2))
    budget = max(2, min(default.budget_blocks, memory_cache * 3 // (4 * BLOCK_SIZE)))
    return ReadAheadConfig(
        initial=min(default.initial, maximum), maximum=maximum, budget_blocks=budget
    )


@asynccontextmanager
async def _closing(client: httpx.Client | RawHttp) -> AsyncIterator[None]:
    """Close a synchronous client at the end (in a thread: it may wait on sockets)."""
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(client.close)


@asynccontextmanager
async def open_stack(config: MountConfig) -> AsyncIterator[Stack]:
    """The layers of one mount, with their HTTP pools and background tasks running."""
    policy = RetryPolicy(
        deadline=config.timeout, attempt_timeout=min(15.0, config.timeout), health=Health()
    )
    timeout = httpx.Timeout(policy.attempt_timeout)
    headers = {"User-Agent": f"cupixfs/{__version__}"}
    if config.cache_size <= 0:  # "auto": a fraction of the free space
        config.cache_size = await trio.to_thread.run_sync(default_cache_size, config.cache_dir)
    disk = DiskCache(config.cache_dir, config.cache_size)
    # On disk, a size is trusted for a day while the API's updated_at is unchanged,
    # so a remount serves cached files without a request to storage; in memory it
    # is re-checked every --listing-ttl, which catches changes updated_at misses.
    # Sizes and API responses are written to disk behind the loop, by one task.
    writer = WriteBehind()
    stat_cache = StatCache(
        config.cache_dir, ttl=max(config.listing_ttl, PERSISTED_STAT_TTL), writer=writer
    )
    responses = ResponseCache(config.cache_dir, writer=writer)

    def prepare() -> str | None:
        # A cache written by another cupixfs version is set aside before anything reads it.
        return prepare_cache_dir(config.cache_dir) or cache_format.settle(config.cache_dir)

    problem = await trio.to_thread.run_sync(prepare)
    notes = Notes(config.cache_dir)
    if problem is None:

        def open_caches() -> None:
            disk.open()
            stat_cache.open()
            responses.open()
            notes.open()

        await trio.to_thread.run_sync(open_caches)
    else:
        log.warning(
            "cache directory %s is unusable (%s): serving from the network only",
            config.cache_dir,
            problem,
        )
        disk.enabled = stat_cache.enabled = responses.enabled = notes.enabled = False
    # Two pools: the API (which gets the token) and storage (which must never see it),
    # the latter with a synchronous twin for long bodies read in worker threads.
    blob_sync = storage_sync_client(timeout, headers, STREAMS_AT_ONCE + 4)
    raw_http = RawHttp(timeout, headers)
    async with (
        pooled_client(timeout, headers, MAX_API_REQUESTS) as api_http,
        storage_client(timeout, headers, POOL_SIZE) as blob_http,
        _closing(blob_sync),
        _closing(raw_http),
        trio.open_nursery() as background,
    ):
        offline = config.offline
        stat_cache.offline = offline
        source = config.token_source
        client = CupixClient(
            api_http,
            config.api_url,
            config.token,
            policy,
            config.per_page,
            cache=responses,
            offline=offline,
            # A token from the environment cannot change: nothing to read again.
            token_source=source if source is not None and source.rereadable else None,
        )
        fetcher = RangeFetcher(
            blob_http, SignedUrls(client), policy, sync_http=blob_sync, raw=raw_http
        )
        fetcher.offline = offline
        blocks = BlockCache(config.memory_cache, disk)
        # Sizes and ETags are trusted as long as listings are: after that, the next
        # stat asks storage again, so a file changed remotely shows its new version.
        data = DataStore(
            fetcher,
            blocks,
            stat_cache,
            stat_ttl=config.listing_ttl,
            static_ttl=config.listing_ttl,
            readahead=readahead_for(config.memory_cache),
        )
        data.start(background)
        background.start_soon(writer.run)
        # mesh/ and pointcloud.las: inflated zip members may take a quarter of what
        # the block cache may, on top of it.
        views = DerivedViews(data, notes, inflated_bytes=config.memory_cache // 4)
        metrics = Metrics(config.mountpoint, config.cache_dir, config.cache_size)
        metrics.add_source(
            lambda: {
                "memory_hits": blocks.stats.memory_hits,
                "disk_hits": blocks.stats.disk_hits,
                "fetched": blocks.stats.fetched,
                "prefetched": blocks.stats.prefetched,
                "requests": fetcher.stats.requests + client.requests,
                "blob_requests": fetcher.stats.requests,
                "api_requests": client.requests,
                "bytes": fetcher.stats.bytes,
                "retries": fetcher.stats.retries + client.retries,
                "parts": fetcher.stats.parts,
                "parts_given_up": fetcher.stats.parts_given_up,
                "disk_cache_bytes": disk.used_bytes,
                "disk_cache_blocks": len(disk),
                "corrupt_blocks": disk.corrupt,
                "uncached_blocks": data.uncached_blocks,
                "unsaved_entries": writer.dropped + writer.failed,
            }
        )
        background.start_soon(metrics.save_periodically)
        started = datetime.now(UTC)
        tree = Tree(
            client, started, status=metrics.render, views=views, listing_ttl=config.listing_ttl
        )
        tree.known_captures.update(config.captures)
        tree.known_records.update(config.records)
        namespace = Namespace(tree.root(), listing_ttl=config.listing_ttl)
        vfs = Vfs(namespace, data, started)
        # What a walk fetches waits in the memory cache for its reader: at most half of it.
        vfs.walk.ahead_bytes = min(config.walk_ahead, config.memory_cache // 2)
        vfs.start(background)
        metrics.add_source(
            lambda: {
                "walks_followed": vfs.walk.walks,
                "files_fetched_ahead": data.files_ahead,
                "scans_followed": vfs.walk.scans,
            }
        )
        # What memory holds per entry, so a test (or a user) sees it follow what is in use.
        metrics.add_source(vfs.table_sizes)
        try:
            yield Stack(client, fetcher, blocks, data, vfs, metrics, views)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(DRAIN_TIMEOUT) as drain:
                await data.aclose()
                await writer.aclose()
            if drain.cancelled_caught:
                log.warning("unmounting before the last blocks reached the disk cache")
            background.cancel_scope.cancel()
