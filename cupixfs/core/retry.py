"""Bounded retries with exponential backoff and full jitter.

Both the API client and the blob fetcher ride through transient faults (5xx,
429, resets, cut bodies) the same way: retry until an overall deadline, never
longer, so that no kernel request waits on the network without a bound.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

from cupixfs.core.errors import Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


#: The least time worth starting one more attempt with.
LAST_ATTEMPT = 0.1


def untrusted_certificate(exc: BaseException, what: str) -> Unavailable | None:
    """`Unavailable` if *exc* (a failed connection, through its causes) is a TLS
    certificate that does not verify; None for anything else.

    Retrying cannot change a certificate: a mount that does not trust its server would
    otherwise retry until its deadline (30 s) and then say only "ConnectError".
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            detail = cause.verify_message or cause.reason or str(cause)
            return Unavailable(
                f"{what}: the server's TLS certificate is not trusted ({detail}); a private"
                " CA's certificate can be given in SSL_CERT_FILE"
            )
        cause = cause.__cause__ or cause.__context__
    return None


def connection_failed(exc: BaseException, what: str, detail: str | None = None) -> Exception:
    """What a failed connection raises: `untrusted_certificate`'s error (no retry can
    help), else `Retryable` (*detail*, or the exception's type, says what happened)."""
    return untrusted_certificate(exc, what) or Retryable(detail or type(exc).__name__)


class Retryable(Exception):
    """A transient failure: worth another attempt after *retry_after* seconds (if given)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Health:
    """Whether the remote answers, learnt from every retried operation's outcome.

    Once an operation has spent its whole retry budget, the remote counts as
    down: later operations make one quick attempt instead of retrying for the
    whole budget again. So when the network is gone, only the first request
    waits `--timeout`; the kernel's retries, listings and stats that can fall
    back on what is cached fail (or fall back) at once, and the first attempt
    that succeeds brings everything back, with no remount.
    """

    def __init__(self) -> None:
        self.down_since: float | None = None

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def succeeded(self) -> None:
        if self.down_since is not None:
            log.warning(
                "the remote answers again (after %.0fs)", trio.current_time() - self.down_since
            )
        self.down_since = None

    def gave_up(self, what: str) -> None:
        if self.down_since is None:
            self.down_since = trio.current_time()
            log.warning("%s: the remote is unreachable; failing fast until it answers", what)


#: While the remote is down: how long the one quick attempt may take.
QUICK_ATTEMPT = 2.0


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
    #: Shared by all operations of a mount (None: each operation on its own).
    health: Health | None = None

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff (AWS architecture blog's recipe)."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** min(attempt, 32)))


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
    health = policy.health
    quick = health is not None and health.down
    budget = min(QUICK_ATTEMPT, policy.deadline) if quick else policy.deadline
    deadline = trio.current_time() + budget
    attempt = 0
    last: Retryable | None = None
    last_chance = False
    while True:
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            break
        try:
            with trio.fail_after(min(policy.attempt_timeout, remaining)):
                result = await op()
            if health is not None:
                health.succeeded()
            return result
        except Retryable as exc:
            last = exc
        except trio.TooSlowError:
            last = Retryable("timed out")
        if quick or last_chance:
            break
        delay = policy.backoff(attempt)
        if last.retry_after is not None:
            delay = max(delay, last.retry_after)
        attempt += 1
        remaining = deadline - trio.current_time()
        if remaining < LAST_ATTEMPT:
            break
        # A backoff that would overshoot the deadline is cut short, leaving time for
        # one last attempt: a short outage inside the budget is still ridden through.
        if delay >= remaining - LAST_ATTEMPT:
            delay, last_chance = remaining - LAST_ATTEMPT, True
        log.debug("%s: %s; retry %d in %.2fs", what, last, attempt, delay)
        if on_retry is not None:
            on_retry()
        await trio.sleep(delay)
    reason = f"{last}" if last else "no time left"
    if health is not None:
        if quick:
            raise Unavailable(f"{what}: the remote is still unreachable ({reason})")
        health.gave_up(what)
    raise Unavailable(
        f"{what}: gave up after {attempt} attempt(s) in {policy.deadline:g}s ({reason})"
    )
