"""CupixClient against hand-made HTTP answers: odd JSON, paging, statuses, retries.

These use httpx's MockTransport to play a misbehaving server (the fake server
follows the API pages, so it cannot produce these answers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest
import trio

from cupixfs.api.client import CupixClient
from cupixfs.core.errors import AuthError, NotFound, ProtocolError, Unavailable
from cupixfs.core.retry import Health, RetryPolicy

API = "https://api.example/api/v1"


def _client(handler: Callable[[httpx.Request], httpx.Response], **policy: float) -> CupixClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return CupixClient(http, API, "tok", RetryPolicy(**{"deadline": 2.0, **policy}))


def _page(items: list[object], next_page: int | None = None) -> httpx.Response:
    body = {"result": {"data": items, "pagination": {"next_page": next_page}}, "session": None}
    return httpx.Response(200, json=body)


def _video(vid: int, name: object = "v.insv") -> dict[str, object]:
    return {"id": str(vid), "type": "video", "attributes": {"id": vid, "name": name}}


def test_malformed_items_are_skipped_and_the_endpoint_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["X-CUPIX-AUTH"] == "tok"
        return _page([_video(1), _video(2, name=None), "junk", _video(3)])

    with caplog.at_level(logging.WARNING):
        videos = trio.run(_client(handler).list_videos, 10)
    assert [v.id for v in videos] == [1, 3]
    assert sum("GET videos" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>not json</html>"),
        httpx.Response(200, json=["no", "result"]),
        httpx.Response(200, json={"result": {"data": "not a list"}}),
        httpx.Response(200, json={"result": {"data": [], "pagination": {"next_page": 1}}}),
        httpx.Response(418),
    ],
)
def test_unexpected_answers_are_protocol_errors(response: httpx.Response) -> None:
    with pytest.raises(ProtocolError):
        trio.run(_client(lambda request: response).list_videos, 10)


def test_every_page_is_followed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        return _page([_video(page * 10 + i) for i in range(3)], page + 1 if page < 4 else None)

    videos = trio.run(_client(handler).list_videos, 10)
    assert len(videos) == 12


def test_statuses_map_to_errors() -> None:
    for status, error in ((401, AuthError), (403, AuthError), (404, NotFound)):
        with pytest.raises(error):
            trio.run(_client(lambda request, s=status: httpx.Response(s)).list_videos, 10)


def test_429_honours_retry_after_then_succeeds() -> None:
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(trio.current_time())
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "0.3"})
        return _page([_video(1)])

    assert len(trio.run(_client(handler).list_videos, 10)) == 1
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.3


def test_persistent_5xx_gives_up_within_the_deadline_and_the_breaker_opens() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503)

    health = Health()
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = CupixClient(http, API, "tok", RetryPolicy(deadline=0.5, health=health))

    async def twice() -> None:
        with pytest.raises(Unavailable):
            await client.list_videos(10)
        first = calls
        assert first > 1 and health.down
        with pytest.raises(Unavailable):  # down: one quick attempt, no second budget
            await client.list_videos(10)
        assert calls == first + 1

    trio.run(twice)


def test_download_resolves_one_redirect_without_following_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith("/videos/5/download")
        return httpx.Response(
            302, headers={"Location": "https://store.example/b?X-Amz-Signature=s"}
        )

    url = trio.run(_client(handler).resolve_download, "videos/5/download")
    assert url == "https://store.example/b?X-Amz-Signature=s"
