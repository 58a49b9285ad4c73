"""A token bucket per key (per agent credential), for the ingest route."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """`rate` events per second per key, with bursts of up to `burst_seconds` of it."""

    def __init__(
        self, rate: float, burst_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate * burst_seconds)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take one token; 0 when allowed, else the seconds until one is available."""
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(key, (self._capacity, now))
            tokens = min(self._capacity, tokens + (now - at) * self._rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self._rate
