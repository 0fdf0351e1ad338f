"""Fault knobs for the fake server, and the seeded dice that apply them.

Resilience code (retries, re-signing expired URLs, resuming cut transfers) is only tested if
the server misbehaves on demand. Each knob names one failure a real deployment shows: slow
responses, API 5xx and 429, S3 ``SlowDown``, bodies cut mid-transfer, connections reset, URLs
that expire, and a host that is down. A seeded RNG decides per response, so a failing run can
be replayed (modulo thread interleaving).

The server reads the knobs through :meth:`Faults.decide` under one lock, so an admin update
from another thread never yields a half-applied configuration.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field, fields
from typing import Any, Literal

__all__ = ["Decision", "Faults"]

RATE_KNOBS = (
    "api_error_rate",
    "api_429_rate",
    "blob_error_rate",
    "blob_429_rate",
    "cut_rate",
    "reset_rate",
)


@dataclass(frozen=True)
class Decision:
    """What to do to one response.

    ``abort`` is ``"outage"`` or ``"reset"`` when the connection must be dropped without a
    response; otherwise ``status`` (429/500/503) replaces the real answer when set, and ``cut``
    says to send only a prefix of the body.
    """

    latency_s: float = 0.0
    abort: Literal["outage", "reset"] | None = None
    status: int | None = None
    retry_after_s: int = 0
    cut: bool = False


@dataclass
class Faults:
    """Knobs (all off by default) plus the RNG that rolls them.

    Rates are probabilities in [0, 1] evaluated independently per request. ``url_ttl_s`` is the
    lifetime of signed URLs issued from now on. ``clock_offset_s`` shifts the blob store's
    clock forward, so URLs already handed out can be made to expire without waiting.
    """

    latency_s: float = 0.0
    api_error_rate: float = 0.0
    api_429_rate: float = 0.0
    retry_after_s: int = 1
    blob_error_rate: float = 0.0
    blob_429_rate: float = 0.0
    cut_rate: float = 0.0
    reset_rate: float = 0.0
    url_ttl_s: int = 3600
    clock_offset_s: float = 0.0
    outage: bool = False
    #: Blob bodies sent with ``Transfer-Encoding: chunked`` and no Content-Length, as a
    #: proxy or CDN in front of storage may re-frame them.
    blob_chunked: bool = False
    #: Blob bodies sent at most this fast, in MB/s, per response: one TCP flow on a link
    #: with a long round trip, held back by its window (4 MiB over 80 ms is 50 MB/s) while
    #: the link could carry more, so that flows side by side add up. 0: no limit.
    blob_flow_mb_s: float = 0.0
    #: All blob bodies together sent at most this fast, in MB/s: the link itself is the
    #: limit, and flows side by side share it. 0: no limit.
    blob_link_mb_s: float = 0.0
    seed: int = 0
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._validate(self.to_dict())
        self._rng = random.Random(self.seed)

    @staticmethod
    def knob_names() -> tuple[str, ...]:
        return tuple(f.name for f in fields(Faults) if not f.name.startswith("_"))

    def to_dict(self) -> dict[str, Any]:
        """The knobs as plain JSON values (what ``GET /_fake/faults`` returns)."""
        return {name: getattr(self, name) for name in self.knob_names()}

    def update(self, **knobs: Any) -> None:
        """Merge ``knobs`` into the current settings; all or nothing on a bad value.

        Setting ``seed`` reseeds the RNG, so a test can pin the exact sequence of decisions.
        """
        unknown = set(knobs) - set(self.knob_names())
        if unknown:
            raise ValueError(f"unknown fault knob(s): {', '.join(sorted(unknown))}")
        with self._lock:
            merged = self.to_dict() | knobs
            clean = self._validate(merged)
            for name in knobs:
                setattr(self, name, clean[name])
            if "seed" in knobs:
                self._rng = random.Random(self.seed)

    def reset(self) -> None:
        """Back to defaults (no faults) with a freshly seeded RNG."""
        defaults = Faults()
        with self._lock:
            for name in self.knob_names():
                setattr(self, name, getattr(defaults, name))
            self._rng = random.Random(self.seed)

    @staticmethod
    def _validate(values: dict[str, Any]) -> dict[str, Any]:
        clean = dict(values)
        for name in RATE_KNOBS:
            v = _number(name, values[name])
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {v}")
            clean[name] = v
        for name in ("latency_s", "clock_offset_s", "blob_flow_mb_s", "blob_link_mb_s"):
            clean[name] = _number(name, values[name])
        for name in ("latency_s", "blob_flow_mb_s", "blob_link_mb_s"):
            if clean[name] < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("retry_after_s", "url_ttl_s", "seed"):
            v = values[name]
            if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v:
                raise ValueError(f"{name} must be an integer, got {v!r}")
            clean[name] = int(v)
        if clean["retry_after_s"] < 0 or clean["url_ttl_s"] < 0:
            raise ValueError("retry_after_s and url_ttl_s must be >= 0")
        for name in ("outage", "blob_chunked"):
            if not isinstance(values[name], bool):
                raise ValueError(f"{name} must be true or false")
        return clean

    # --- decisions -----------------------------------------------------------------------

    def decide(self, kind: Literal["api", "blob"]) -> Decision:
        """Roll the dice for one request of ``kind`` (``blob`` also covers the plain routes).

        Order matters and mirrors where a real failure happens: a down host answers nothing;
        a reset drops the connection before any status line; throttling (429) comes before a
        server error; a cut only applies to a response that is otherwise a success.
        """
        with self._lock:
            if self.outage:
                return Decision(abort="outage")
            if self._roll(self.reset_rate):
                return Decision(latency_s=self.latency_s, abort="reset")
            if kind == "api":
                if self._roll(self.api_429_rate):
                    return Decision(self.latency_s, status=429, retry_after_s=self.retry_after_s)
                if self._roll(self.api_error_rate):
                    return Decision(self.latency_s, status=self._rng.choice((500, 503)))
                return Decision(self.latency_s)
            if self._roll(self.blob_429_rate):
                return Decision(self.latency_s, status=429, retry_after_s=self.retry_after_s)
            if self._roll(self.blob_error_rate):
                return Decision(self.latency_s, status=503, retry_after_s=self.retry_after_s)
            return Decision(self.latency_s, cut=self._roll(self.cut_rate))

    def cut_length(self, length: int) -> int:
        """How many of ``length`` body bytes to send before dropping the connection."""
        with self._lock:
            return self._rng.randrange(length) if length > 0 else 0

    def current(self, name: str) -> Any:
        """Read one knob consistently with concurrent updates."""
        with self._lock:
            return getattr(self, name)

    def _roll(self, rate: float) -> bool:
        return rate > 0.0 and (rate >= 1.0 or self._rng.random() < rate)


def _number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{name} must be a number, got {v!r}")
    return float(v)
