"""Request counters of the fake server, so tests can assert *how* a client used the service.

A filesystem can return the right bytes and still be wrong: re-downloading a whole video per
read, or calling the API on every ``stat``. These counters (requests per route, blob bytes
actually sent, the byte ranges asked for, injected faults) make such behaviour visible to a
test or a benchmark through ``GET /_fake/stats``.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any

__all__ = ["Stats"]


class Stats:
    """Thread-safe counters; :meth:`snapshot` returns a JSON-ready copy."""

    def __init__(self, max_ranges: int = 1000) -> None:
        self._lock = threading.Lock()
        self._max_ranges = max_ranges
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._api_requests = 0
            self._api_by_route: Counter[str] = Counter()
            self._blob_requests = 0
            self._blob_bytes = 0
            self._blob_ranges: deque[list[Any]] = deque(maxlen=self._max_ranges)
            self._plain_requests = 0
            self._plain_bytes = 0
            self._status_counts: Counter[str] = Counter()
            self._faults: Counter[str] = Counter()
            self._api_in_flight = 0
            self._api_in_flight_max = 0
            self._blob_in_flight = 0
            self._blob_in_flight_max = 0

    def api_request(self, route: str) -> None:
        with self._lock:
            self._api_requests += 1
            self._api_by_route[route] += 1

    def api_started(self) -> None:
        """An API request is being answered (with :meth:`api_finished`: the most at once)."""
        with self._lock:
            self._api_in_flight += 1
            self._api_in_flight_max = max(self._api_in_flight_max, self._api_in_flight)

    def api_finished(self) -> None:
        with self._lock:
            self._api_in_flight = max(0, self._api_in_flight - 1)

    def blob_request(self) -> None:
        with self._lock:
            self._blob_requests += 1

    def plain_request(self) -> None:
        with self._lock:
            self._plain_requests += 1

    def blob_range(self, blob_id: str, start: int, end: int) -> None:
        """Record an inclusive byte range a blob response started to send (its body is
        being sent until `body_sent`: the most at once is counted)."""
        with self._lock:
            self._blob_ranges.append([blob_id, start, end])
            self._blob_in_flight += 1
            self._blob_in_flight_max = max(self._blob_in_flight_max, self._blob_in_flight)

    def body_sent(self, kind: str, nbytes: int) -> None:
        with self._lock:
            if kind == "plain":
                self._plain_bytes += nbytes
            else:
                self._blob_bytes += nbytes
                self._blob_in_flight = max(0, self._blob_in_flight - 1)

    def status(self, code: int) -> None:
        with self._lock:
            self._status_counts[str(code)] += 1

    def fault(self, name: str) -> None:
        with self._lock:
            self._faults[name] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "api_requests": self._api_requests,
                "api_by_route": dict(self._api_by_route),
                "api_in_flight_max": self._api_in_flight_max,
                "blob_requests": self._blob_requests,
                "blob_bytes": self._blob_bytes,
                "blob_ranges": [list(r) for r in self._blob_ranges],
                "blob_in_flight_max": self._blob_in_flight_max,
                "plain_requests": self._plain_requests,
                "plain_bytes": self._plain_bytes,
                "status_counts": dict(self._status_counts),
                "faults_injected": dict(self._faults),
            }
