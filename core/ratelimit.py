"""Token buckets per key: the rate limit that ingest applies per device and the API per
user, per failed sign-in and per camera (``api/limits.py`` adds its HTTP error).

``rate_per_s`` tokens a second per key, up to ``burst`` saved. The table of keys is bounded:
the least recently seen key is forgotten first, which only ever lets a forgotten key start
again with a full bucket.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

__all__ = ["TokenBuckets"]


class TokenBuckets:
    """Thread-safe; ``take`` and ``wait`` answer in seconds (0.0: go ahead)."""

    def __init__(self, *, rate_per_s: float, burst: int, max_keys: int = 100_000) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a rate limiter needs a positive rate and a burst of at least 1")
        self.rate_per_s, self.burst = rate_per_s, burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key: (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str, *, now: float | None = None) -> float:
        """Take one token: 0.0 if there was one, else the seconds until there is."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate_per_s
            self._buckets[key] = (tokens - 1.0 if wait == 0.0 else tokens, now)
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
            return wait

    def give_back(self, key: str) -> None:
        """Return a token taken by :meth:`take` (an attempt that turned out not to count)."""
        with self._lock:
            if key in self._buckets:
                tokens, at = self._buckets[key]
                self._buckets[key] = (min(float(self.burst), tokens + 1.0), at)

    def wait(self, key: str, *, now: float | None = None) -> float:
        """Seconds until ``key`` has a token (0.0: it has one now); takes nothing."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate_per_s
