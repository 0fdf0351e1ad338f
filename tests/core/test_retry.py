"""`retrying`: attempts end at the deadline, never later; Retry-After is honoured; once the
remote is down, the next operation makes one quick attempt. Time is trio's mock clock, so
these run in milliseconds and are exact."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from cupixfs.core.errors import NotFound, Unavailable
from cupixfs.core.retry import QUICK_ATTEMPT, Health, Retryable, RetryPolicy, retrying


def _run(main: object) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


def test_a_failing_operation_gives_up_at_the_deadline() -> None:
    attempts = 0

    async def op() -> None:
        nonlocal attempts
        attempts += 1
        raise Retryable("HTTP 503")

    async def main() -> None:
        start = trio.current_time()
        with pytest.raises(Unavailable, match=r"gave up after .* in 10s"):
            await retrying(op, RetryPolicy(deadline=10.0), "read x")
        elapsed = trio.current_time() - start
        assert 9.0 <= elapsed <= 10.0
        assert attempts >= 5

    _run(main)


def test_a_hanging_attempt_is_cut_and_the_deadline_still_holds() -> None:
    async def op() -> None:
        await trio.sleep_forever()

    async def main() -> None:
        start = trio.current_time()
        with pytest.raises(Unavailable, match="timed out"):
            await retrying(op, RetryPolicy(deadline=7.0, attempt_timeout=3.0), "read x")
        assert trio.current_time() - start <= 7.0

    _run(main)


def test_retry_after_is_honoured_and_success_ends_the_loop() -> None:
    answers = [Retryable("HTTP 429", retry_after=3.0), "ok"]

    async def op() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def main() -> None:
        start = trio.current_time()
        assert await retrying(op, RetryPolicy(deadline=30.0), "list x") == "ok"
        assert 3.0 <= trio.current_time() - start < 4.0

    _run(main)


def test_an_error_that_is_not_transient_is_not_retried() -> None:
    attempts = 0

    async def op() -> None:
        nonlocal attempts
        attempts += 1
        raise NotFound("no such video")

    async def main() -> None:
        with pytest.raises(NotFound):
            await retrying(op, RetryPolicy(deadline=30.0), "list x")

    _run(main)
    assert attempts == 1


def test_once_the_remote_is_down_the_next_operation_fails_fast_and_success_heals() -> None:
    health = Health()
    policy = RetryPolicy(deadline=20.0, health=health)
    up = False
    attempts = 0

    async def op() -> str:
        nonlocal attempts
        attempts += 1
        if not up:
            raise Retryable("connection refused")
        return "ok"

    async def main() -> None:
        nonlocal up, attempts
        with pytest.raises(Unavailable):
            await retrying(op, policy, "first")
        assert health.down
        start, attempts = trio.current_time(), 0
        with pytest.raises(Unavailable, match="still unreachable"):
            await retrying(op, policy, "second")
        assert trio.current_time() - start <= QUICK_ATTEMPT
        assert attempts == 1
        up = True
        assert await retrying(op, policy, "third") == "ok"
        assert not health.down

    _run(main)
