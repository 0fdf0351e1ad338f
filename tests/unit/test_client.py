"""CupixClient against hand-made HTTP answers: odd JSON, paging, statuses, retries.

These use httpx's MockTransport to play a misbehaving server (the fake server
follows the API pages, so it cannot produce these answers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from cupixfs.api.client import MAX_API_REQUESTS, CupixClient
from cupixfs.api.response_cache import ResponseCache
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


# -- pages at once, odd paginations, all or nothing --------------------------------------------


def _paged(
    items: int, per_page: int, pagination: str = "full"
) -> Callable[[httpx.Request], object]:
    """A handler serving *items* videos in pages, with the pagination block *pagination*."""

    async def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        total_pages = -(-items // per_page)
        data = [_video(i) for i in range((page - 1) * per_page, min(items, page * per_page))]
        await trio.sleep(0.001 * ((page * 7) % 5))  # later pages may answer first
        block: dict[str, object] | None = {
            "full": {
                "total_entries": items,
                "total_pages": total_pages,
                "per_page": per_page,
                "current_page": page,
                "next_page": page + 1 if page < total_pages else None,
            },
            "totals": {"total_entries": items, "total_pages": total_pages},
            "entries": {"total_entries": items, "per_page": per_page},
            "next": {"next_page": page + 1 if page < total_pages else None},
            "null": None,
        }[pagination]
        return httpx.Response(200, json={"result": {"data": data, "pagination": block}})

    return handler


def _async_client(handler: Callable[[httpx.Request], object], **kwargs: object) -> CupixClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))  # type: ignore[arg-type]
    return CupixClient(http, API, "tok", RetryPolicy(deadline=2.0), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("pagination", ["full", "totals", "entries", "next"])
def test_every_page_in_order_whatever_the_pagination_says(pagination: str) -> None:
    videos = trio.run(_async_client(_paged(23, 5, pagination)).list_videos, 10)
    assert [v.id for v in videos] == list(range(23))


def test_a_null_pagination_is_one_page() -> None:
    videos = trio.run(_async_client(_paged(4, 5, "null")).list_videos, 10)
    assert [v.id for v in videos] == list(range(4))


def test_pages_are_fetched_at_once_within_the_mount_wide_bound() -> None:
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await trio.sleep(0.01)
            return await _paged(50 * 40, 50)(request)  # type: ignore[misc]
        finally:
            in_flight -= 1

    client = _async_client(handler)

    async def main() -> None:
        async with trio.open_nursery() as nursery:  # two listings share one bound
            nursery.start_soon(client.list_videos, 1)
            nursery.start_soon(client.list_videos, 2)

    trio.run(main)
    assert peak == MAX_API_REQUESTS


def test_a_listing_grown_since_page_one_is_followed_to_its_end() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        pagination = {"total_pages": 2, "next_page": page + 1 if page < 3 else None}
        return httpx.Response(
            200, json={"result": {"data": [_video(page)], "pagination": pagination}}
        )

    assert [v.id for v in trio.run(_async_client(handler).list_videos, 10)] == [1, 2, 3]


def test_a_failed_page_fails_the_listing_and_nothing_is_saved(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)
    cache.open()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params["page"] == "3":
            return httpx.Response(503)
        return await _paged(30, 5)(request)  # type: ignore[misc]

    with pytest.raises(Unavailable):
        trio.run(_async_client(handler, cache=cache).list_videos, 10)
    assert not list(cache.root.iterdir())
    trio.run(_async_client(_paged(30, 5), cache=cache).list_videos, 10)
    assert len(list(cache.root.iterdir())) == 1  # a complete listing is kept


def test_an_item_on_two_pages_is_listed_once() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        data = [_video(1), _video(2)] if page == 1 else [_video(2), _video(3)]
        pagination = {"total_pages": 2, "next_page": 2 if page == 1 else None}
        return httpx.Response(200, json={"result": {"data": data, "pagination": pagination}})

    assert [v.id for v in trio.run(_async_client(handler).list_videos, 10)] == [1, 2, 3]


def test_errors_carry_the_apis_message() -> None:
    body = {
        "result": {"code": 403, "type": "forbidden", "reason": "Forbidden", "message": "No\nway"}
    }
    with pytest.raises(AuthError, match=r"403 Forbidden: No way\)"):
        trio.run(_client(lambda request: httpx.Response(403, json=body)).list_videos, 10)
    with pytest.raises(NotFound, match=r"404: gone\)"):
        trio.run(_client(lambda r: httpx.Response(404, json={"message": "gone"})).list_videos, 10)
    with pytest.raises(NotFound, match=r"\(404\)"):
        trio.run(_client(lambda r: httpx.Response(404, text="<html>")).list_videos, 10)


def test_the_token_check_asks_me_and_falls_back_where_there_is_none() -> None:
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(f"{request.url.path} {request.url.params.get('fields')}")
        if request.url.path.endswith("/me"):
            return httpx.Response(404)
        return _page([])

    trio.run(_client(handler).check_auth)
    assert asked == ["/api/v1/me id", "/api/v1/pointclouds id"]
