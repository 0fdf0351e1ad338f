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
import trio.testing

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


# -- a rotated token ------------------------------------------------------------------------


class _Source:
    """A token source that counts its reads; *token* is what a rotation wrote there."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.reads = 0

    def read(self) -> str:
        self.reads += 1
        if not self.token:
            raise OSError("cannot read token file /etc/t: No such file or directory")
        return self.token

    def __str__(self) -> str:
        return "token file /etc/t"


def _accepting(valid: set[str], seen: list[str]) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["X-CUPIX-AUTH"])
        if request.headers["X-CUPIX-AUTH"] not in valid:
            return httpx.Response(401)
        return _page([_video(1)])

    return handler


def _rotating_client(
    handler: Callable[[httpx.Request], httpx.Response], source: _Source
) -> CupixClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return CupixClient(http, API, "old-SECRET", RetryPolicy(deadline=2.0), token_source=source)


def test_a_refused_call_is_retried_once_with_a_rotated_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []
    source = _Source("new-SECRET")
    client = _rotating_client(_accepting({"new-SECRET"}, seen), source)

    async def session() -> None:
        assert len(await client.list_videos(10)) == 1
        assert len(await client.list_videos(10)) == 1  # the new token sticks

    with caplog.at_level(logging.DEBUG):
        trio.run(session)
    assert seen == ["old-SECRET", "new-SECRET", "new-SECRET"]
    assert source.reads == 1
    lines = [r.getMessage() for r in caplog.records]
    assert lines.count("picked up a new API token from token file /etc/t") == 1
    assert not any("SECRET" in line for line in lines)


def test_an_unchanged_token_is_read_again_at_most_every_30_s() -> None:
    seen: list[str] = []
    source = _Source("old-SECRET")  # revoked, and nothing new written yet
    client = _rotating_client(_accepting(set(), seen), source)
    clock = trio.testing.MockClock()

    async def session() -> None:
        async def refused() -> None:
            with pytest.raises(AuthError):
                await client.list_videos(10)

        async with trio.open_nursery() as nursery:  # a burst of refusals reads it once
            for _ in range(5):
                nursery.start_soon(refused)
        assert source.reads == 1
        clock.jump(29)
        await refused()
        assert source.reads == 1
        source.token = "new-SECRET"  # written now: picked up at the next refusal after 30 s
        clock.jump(2)
        with pytest.raises(AuthError):  # "new-SECRET" is refused too: still EACCES
            await client.list_videos(10)
        assert source.reads == 2 and seen[-1] == "new-SECRET"
        assert await client.renew_token() is False  # SIGHUP reads at once, even within 30 s
        assert source.reads == 3

    trio.run(session, clock=clock)
    assert len(seen) == 5 + 1 + 2


def test_a_token_that_cannot_be_read_again_keeps_the_old_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []
    source = _Source("")  # the file vanished mid-rotation
    client = _rotating_client(_accepting({"old-SECRET"}, seen), source)

    async def session() -> None:
        assert await client.renew_token() is False
        assert len(await client.list_videos(10)) == 1

    with caplog.at_level(logging.WARNING):
        trio.run(session)
    assert seen == ["old-SECRET"]
    assert "cannot read the API token again: cannot read token file /etc/t" in caplog.text
