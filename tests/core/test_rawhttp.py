"""Long bodies read straight off the socket (`cupixfs.data.rawhttp`), against the fake
server: exact bytes, kept connections, cuts, proxies, and the bodies left to httpx."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cupixfs.data import block_file, rawhttp
from cupixfs.data.rawhttp import Interrupted, RawHttp
from cupixfs.fake.server import FakeServer
from tests.core.conftest import TOKEN, MiB, blob_bytes, inode_of, stack_of, video_path, videos

TIMEOUT = httpx.Timeout(10.0)


def _signed_url(server: FakeServer, video: dict[str, Any]) -> str:
    response = httpx.get(
        f"{server.api_url}/videos/{video['id']}/download", headers={"X-CUPIX-AUTH": TOKEN}
    )
    assert response.status_code == 302, response.text
    return response.headers["location"]


def test_a_body_comes_in_whole_blocks_and_its_connection_is_kept(server: FakeServer) -> None:
    video = videos(server)[0]
    expected = blob_bytes(server, video)
    url = _signed_url(server, video)
    raw = RawHttp(TIMEOUT, {"User-Agent": "test"})
    try:
        for start in (100, 5 * MiB):  # the second request goes over the kept connection
            head, body = raw.open(url, {"Range": f"bytes={start}-{start + 2 * MiB - 1}"})
            assert head.status_code == 206 and body.left == 2 * MiB
            first, second = body.read(MiB), body.read(MiB)
            assert bytes(first) + bytes(second) == expected[start : start + 2 * MiB]
            # Received into its disk slot's frame, handed on read-only.
            assert isinstance(first, memoryview) and first.readonly and len(first) == MiB
            assert isinstance(first.obj, block_file.Frame)
            assert body.left == 0
            assert sum(len(kept) for kept in raw._idle.values()) == 1
        assert server.stats.snapshot()["blob_requests"] == 2
    finally:
        raw.close()


def test_a_cut_body_gives_what_arrived_then_interrupted(server: FakeServer) -> None:
    video = videos(server)[0]
    url = _signed_url(server, video)
    expected = blob_bytes(server, video)
    server.faults.update(cut_rate=1.0, seed=3)
    raw = RawHttp(TIMEOUT, {})
    try:
        _head, body = raw.open(url, {"Range": f"bytes=0-{8 * MiB - 1}"})
        got = b""
        with pytest.raises(Interrupted):
            while True:
                got += body.read(MiB)
        assert 0 < len(got) < 8 * MiB and got == expected[: len(got)]
        assert not raw._idle  # a broken connection is never kept
    finally:
        raw.close()


def test_a_chunked_body_is_left_to_httpx(server: FakeServer) -> None:
    video = videos(server)[1]
    server.faults.update(blob_chunked=True)
    raw = RawHttp(TIMEOUT, {})
    try:
        head, body = raw.open(_signed_url(server, video), {"Range": "bytes=0-999"})
        assert head.status_code == 206 and body.left is None
        body.close()
    finally:
        raw.close()


def test_a_proxy_in_the_environment_leaves_the_body_to_httpx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    assert rawhttp.applies("http://storage.example/blob?sig=1")
    assert not rawhttp.applies("ftp://storage.example/blob")
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert not rawhttp.applies("https://storage.example/blob?sig=1")
    assert rawhttp.applies("http://storage.example/blob?sig=1")
    monkeypatch.setenv("no_proxy", "storage.example")
    assert rawhttp.applies("https://storage.example/blob?sig=1")


@pytest.mark.parametrize("knobs", [{"blob_chunked": True}, {"cut_rate": 0.5, "seed": 7}])
def test_a_sequential_read_is_exact_whatever_the_body(
    server: FakeServer, capture_id: int, tmp_path: Path, knobs: dict[str, Any]
) -> None:
    """Through the whole stack: a chunked body is read by httpx instead, a cut one is
    resumed where it stopped; every byte is right either way."""
    video = videos(server)[0]
    expected = blob_bytes(server, video)
    got = bytearray()

    async def main() -> None:
        async with stack_of(server, tmp_path) as stack:
            inode = await inode_of(stack.vfs, video_path(capture_id, video))
            fh = (await stack.vfs.open(inode))[0]
            server.faults.update(**knobs)
            while chunk := await stack.vfs.read(fh, len(got), MiB):
                got.extend(chunk)

    trio.run(main)
    assert bytes(got) == expected
    if "blob_chunked" in knobs:
        # Still a stream: a few GETs of growing size (and the one raw GET refused), where a
        # stream that failed leaves its blocks to be fetched one run at a time (80 and more).
        requests = server.stats.snapshot()["blob_requests"]
        assert requests <= 10, requests


@contextmanager
def _one_connection(serve: Callable[[socket.socket], None]) -> Iterator[int]:
    """A server on loopback that accepts one connection (a retry on a new one fails) and
    runs *serve* on it in a thread; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = listener.accept()
        listener.close()
        with conn:
            serve(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(5)


def test_body_bytes_that_came_with_the_head_still_make_whole_blocks() -> None:
    """A server may send the head and the body's first bytes in one segment: the first
    block read is still a whole one (the rest of it read off the socket)."""
    body = bytes(range(256)) * (3 * MiB // 256)

    def serve(conn: socket.socket) -> None:
        conn.recv(65536)
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        conn.sendall(head + body[:1000])  # one segment: the head and 1000 body bytes
        time.sleep(0.2)  # the reader has the head (and those bytes) by now
        conn.sendall(body[1000:])
        conn.recv(1)  # until the client is done

    raw = RawHttp(TIMEOUT, {})
    with _one_connection(serve) as port:
        try:
            head, reply = raw.open(f"http://127.0.0.1:{port}/blob", {})
            assert head.status_code == 200 and reply.left == len(body)
            blocks = [reply.read(MiB) for _ in range(3)]
            assert [len(block) for block in blocks] == [MiB] * 3
            assert b"".join(blocks) == body
            # The first block, begun with the head's bytes, is a frame's payload too.
            assert all(isinstance(memoryview(b).obj, block_file.Frame) for b in blocks)
        finally:
            raw.close()


def test_a_body_trickling_in_small_packets_ends_without_waiting_for_more() -> None:
    """The kernel wakes the reader only once many bytes are queued (``SO_RCVLOWAT``), but
    never waits for more than the body still holds: its last block, and the head of the
    next response on the kept connection, arrive as soon as they are sent."""
    body = bytes(range(251)) * ((2 * MiB + 5000) // 251)

    def serve(conn: socket.socket) -> None:
        for _request in range(2):  # on the one connection: the second reuses it
            conn.recv(65536)
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            conn.sendall(head)
            for start in range(0, len(body) - 3000, 16384):  # small segments
                conn.sendall(body[start : min(start + 16384, len(body) - 3000)])
                time.sleep(0.0005)
            time.sleep(0.3)  # the reader waits for its last block now
            conn.sendall(body[-3000:])

    raw = RawHttp(httpx.Timeout(10.0), {})
    with _one_connection(serve) as port:
        try:
            for _request in range(2):
                started = time.monotonic()
                _head, reply = raw.open(f"http://127.0.0.1:{port}/blob", {})
                got = b""
                while reply.left:
                    got += reply.read(MiB)
                assert got == body
                assert time.monotonic() - started < 5  # no read waited out its timeout
        finally:
            raw.close()
