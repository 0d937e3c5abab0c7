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
        if rate_per_s <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("a rate limiter needs a positive rate, a burst of at least 1 and room for a key")
        self.rate_per_s, self.burst = rate_per_s, burst
        self._full = float(burst)
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key: (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str, *, now: float | None = None) -> float:
        """Take one token: 0.0 if there was one, else the seconds until there is.

        Ingest calls this for every message (with ``now`` read once per batch), so it is
        written for speed: one lookup, no intermediate objects on the common path."""
        if now is None:
            now = time.monotonic()
        burst = self._full
        with self._lock:
            buckets = self._buckets
            state = buckets.pop(key, None)
            if state is None:
                tokens = burst
                if len(buckets) >= self._max_keys:  # the new key would be one too many
                    buckets.popitem(last=False)
            else:
                tokens = state[0] + (now - state[1]) * self.rate_per_s
                if tokens > burst:
                    tokens = burst
            if tokens >= 1.0:
                buckets[key] = (tokens - 1.0, now)
                return 0.0
            buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate_per_s

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
