"""Bounded retries with exponential backoff and full jitter.

Both the API client and the blob fetcher ride through transient faults (5xx,
429, resets, cut bodies) the same way: retry until an overall deadline, never
longer, so that no kernel request waits on the network without a bound.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

from cupixfs.errors import Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class Retryable(Exception):
    """A transient failure: worth another attempt after *retry_after* seconds (if given)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying, and how to space the attempts.

    `deadline` bounds the whole operation (all attempts and sleeps): it is the
    longest a read or listing may block before it fails with EIO.
    """

    deadline: float = 30.0
    attempt_timeout: float = 15.0
    base_delay: float = 0.05
    max_delay: float = 4.0

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff (AWS architecture blog's recipe)."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


async def retrying(
    op: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    what: str,
    on_retry: Callable[[], None] | None = None,
) -> T:
    """Run *op* until it succeeds, raises a non-`Retryable` error, or the deadline passes.

    *what* names the operation in log lines and in the final `Unavailable`
    (it must not contain secrets). *on_retry* is called before each new attempt
    (e.g. to count retries).
    """
    deadline = trio.current_time() + policy.deadline
    attempt = 0
    last: Retryable | None = None
    while True:
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            break
        try:
            with trio.fail_after(min(policy.attempt_timeout, remaining)):
                return await op()
        except Retryable as exc:
            last = exc
        except trio.TooSlowError:
            last = Retryable("timed out")
        delay = policy.backoff(attempt)
        if last.retry_after is not None:
            delay = max(delay, last.retry_after)
        attempt += 1
        remaining = deadline - trio.current_time()
        if delay >= remaining:
            break
        log.debug("%s: %s; retry %d in %.2fs", what, last, attempt, delay)
        if on_retry is not None:
            on_retry()
        await trio.sleep(delay)
    reason = f"{last}" if last else "no time left"
    raise Unavailable(
        f"{what}: gave up after {attempt} attempt(s) in {policy.deadline:g}s ({reason})"
    )
