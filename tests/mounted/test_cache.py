"""The persistent block cache and read-ahead, observed from the server's side."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cupixfs.data.http import SHARD_CONNECTIONS
from cupixfs.fake.sample import CaptureSpec, SampleSpec
from cupixfs.fake.server import FakeServer
from tests.mounted.helpers import sample_server, sha256_of, video_path
from tests.pagecache import resident_pages

MiB = 1 << 20
BIG = SampleSpec(name="cache-tests", captures=(CaptureSpec("big", (24 * MiB + 5, 6 * MiB + 1)),))


@pytest.fixture(scope="module")
def big_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A server with files large enough for read-ahead and block counting to show."""
    with sample_server(BIG, tmp_path_factory) as server:
        yield server


@pytest.fixture
def big(big_server: FakeServer) -> tuple[FakeServer, dict[str, Any]]:
    big_server.faults.reset()
    big_server.stats.reset()
    return big_server, httpx.get(big_server.base_url + "/_fake/dataset").json()


def _largest_video(dataset: dict[str, Any]) -> dict[str, Any]:
    return max(dataset["videos"], key=lambda v: v["file"]["size"])


def _drop_kernel_cache() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def test_a_remount_reads_cached_data_with_zero_blob_requests(
    mounter: Any, fake: FakeServer, dataset: dict[str, Any], tmp_path: Path
) -> None:
    video = _largest_video(dataset)
    cache = tmp_path / "shared-cache"
    capture = str(video["capture_id"])
    with mounter("--capture", capture, cache_dir=cache) as m:
        assert sha256_of(video_path(m.path, video)) == video["file"]["sha256"]
        os.listdir(m.path / "captures" / capture / "videos")  # sizes of every video
    fake.stats.reset()
    _drop_kernel_cache()
    with mounter("--capture", capture, cache_dir=cache) as m:
        names = os.listdir(m.path / "captures" / capture / "videos")
        for name in names:
            os.stat(m.path / "captures" / capture / "videos" / name)
        assert sha256_of(video_path(m.path, video)) == video["file"]["sha256"]
    stats = fake.stats.snapshot()
    assert stats["blob_requests"] == 0 and stats["blob_bytes"] == 0
    assert os.stat(cache).st_mode & 0o777 == 0o700


def _on_disk(cache: Path) -> int:
    """Bytes the block files take on disk (sparse files: not their length)."""
    return sum(f.stat().st_blocks * 512 for f in (cache / "blocks").rglob("*") if f.is_file())


def test_the_disk_cache_never_exceeds_its_bound(
    mounter: Any, dataset: dict[str, Any], tmp_path: Path
) -> None:
    cache = tmp_path / "small-cache"
    bound = 3 * MiB
    videos = sorted(dataset["videos"], key=lambda v: -v["file"]["size"])[:4]
    with mounter("--cache-size", str(bound), cache_dir=cache) as m:
        for video in videos:
            assert sha256_of(video_path(m.path, video)) == video["file"]["sha256"]
            on_disk = _on_disk(cache)
            assert on_disk <= bound + MiB + 4096  # at most one block beyond, while it is written
    on_disk = _on_disk(cache)
    assert 0 < on_disk <= bound


def test_random_reads_fetch_only_nearby_blocks(
    mounter: Any, big: tuple[FakeServer, dict[str, Any]]
) -> None:
    server, dataset = big
    video = _largest_video(dataset)
    size = video["file"]["size"]
    expected = (server.dataset.dir / "blobs" / video["file"]["blob_id"]).read_bytes()
    with mounter("--capture", str(video["capture_id"]), server=server) as m:
        path = video_path(m.path, video)
        assert os.stat(path).st_size == size, (m.log_text(), os.listdir(path.parent))
        server.stats.reset()
        rng = random.Random(7)
        offsets = [rng.randrange(2 * MiB, size - 4096) for _ in range(3)]
        fd = os.open(path, os.O_RDONLY)
        try:
            for offset in offsets:
                assert os.pread(fd, 4096, offset) == expected[offset : offset + 4096]
        finally:
            os.close(fd)
    served = server.stats.snapshot()["blob_bytes"]
    # Each random 4 KiB read costs at most its own 1 MiB block and the next one
    # (the kernel's readahead can spill over a block boundary): far below the file.
    assert served <= len(offsets) * 2 * MiB
    assert served < size


def test_sequential_reads_are_fetched_ahead_in_large_parts(
    mounter: Any, big: tuple[FakeServer, dict[str, Any]]
) -> None:
    server, dataset = big
    video = _largest_video(dataset)
    with mounter("--capture", str(video["capture_id"]), server=server) as m:
        path = video_path(m.path, video)
        os.stat(path)
        server.stats.reset()
        assert sha256_of(path) == video["file"]["sha256"]
        status = (m.path / ".cupixfs" / "status").read_text()
    stats = server.stats.snapshot()
    # 24 MiB read through read-ahead: a handful of multi-block GETs, each byte once.
    assert stats["blob_bytes"] <= video["file"]["size"]
    assert stats["blob_requests"] <= 12
    assert '"prefetched": 0' not in status


def test_a_later_remount_still_needs_no_storage_request(
    mounter: Any, fake: FakeServer, dataset: dict[str, Any], tmp_path: Path
) -> None:
    # Sizes persist beyond --listing-ttl (keyed by the API's updated_at), so a remount
    # after the listings have gone stale still reads cached files with no blob request.
    video = _largest_video(dataset)
    cache = tmp_path / "later-cache"
    args = ("--capture", str(video["capture_id"]), "--listing-ttl", "1")
    with mounter(*args, cache_dir=cache) as m:
        assert sha256_of(video_path(m.path, video)) == video["file"]["sha256"]
    time.sleep(1.5)
    fake.stats.reset()
    _drop_kernel_cache()
    with mounter(*args, cache_dir=cache) as m:
        assert sha256_of(video_path(m.path, video)) == video["file"]["sha256"]
    assert fake.stats.snapshot()["blob_requests"] == 0


def test_a_warm_read_leaves_none_of_the_cache_files_in_memory(
    mounter: Any, big: tuple[FakeServer, dict[str, Any]], tmp_path: Path
) -> None:
    """After a remount, a sequential read comes from the disk cache (no request to storage)
    through the page cache, read ahead by the kernel; the cache files' pages are dropped
    behind the reader, so its bytes are not held in memory twice (the mounted file's own
    pages are)."""
    server, dataset = big
    video = _largest_video(dataset)
    cache = tmp_path / "warm-cache"
    with mounter(server=server, cache_dir=cache) as m:
        assert sha256_of(video_path(m.path, video)) == video["file"]["sha256"]
    server.stats.reset()
    _drop_kernel_cache()
    files = [f for f in (cache / "blocks").rglob("*") if f.is_file()]
    assert files and all(resident_pages(f) == 0 for f in files)
    with mounter(server=server, cache_dir=cache) as m:
        assert sha256_of(video_path(m.path, video)) == video["file"]["sha256"]
        assert server.stats.snapshot()["blob_requests"] == 0
        time.sleep(0.5)  # the stream closes its reader once the read is done
        resident = {f.name: resident_pages(f) for f in files}
    assert sum(resident.values()) == 0, resident


MANY = SampleSpec(
    name="many-videos", captures=(CaptureSpec("many", tuple(100_000 + n for n in range(40))),)
)


def test_a_folder_of_videos_is_sized_at_once_and_its_sizes_are_saved_behind_it(
    mounter: Any, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``ls -l`` of 40 videos: one download redirect and one ranged GET each, many at once
    (over several of the clients' small pools), and every size on disk by the unmount,
    written behind the listing."""
    with sample_server(MANY, tmp_path_factory) as server:
        dataset = httpx.get(server.base_url + "/_fake/dataset").json()
        capture = str(dataset["captures"][0]["id"])
        count = len(dataset["videos"])
        cache = tmp_path / "many-cache"
        with mounter("--capture", capture, cache_dir=cache, server=server) as m:
            server.faults.update(latency_s=0.2)  # so that the requests overlap
            server.stats.reset()
            folder = m.path / "captures" / capture / "videos"
            sizes = sorted(entry.stat().st_size for entry in os.scandir(folder))
            stats = server.stats.snapshot()
            server.faults.reset()
            status = json.loads((m.path / ".cupixfs" / "status").read_text())
        saved = list((cache / "stats").glob("*.json"))
    assert sizes == sorted(v["file"]["size"] for v in dataset["videos"])
    assert stats["api_by_route"]["GET /videos/{id}/download"] == count
    assert stats["blob_requests"] == count
    # Download redirects answered at once: more than one small pool holds.
    assert stats["api_in_flight_max"] > SHARD_CONNECTIONS
    assert status["unsaved_entries"] == 0
    assert len(saved) == count
