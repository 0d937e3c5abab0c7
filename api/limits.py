"""Request limits: a reusable rate limiter (token bucket per key) and the limits one API
process applies.

* Per user: every authenticated request takes a token from the caller's bucket (in
  :func:`api.auth.principal`), so a script with a stolen or runaway token cannot flood the
  database; ``429`` with ``Retry-After`` when it is empty.
* Failed sign-ins: per (client address, username), to slow password guessing. Only
  failures take a token (a control room behind one address signs in all at once), but an
  empty bucket refuses even the right password until it refills.
* Per device: ``app.state.limits.device.hit(device_id)`` in the WHIP route.

Buckets are per process: behind a load balancer with N API processes, a caller gets up to N
times the rate (use sticky sessions to make it exact). The table of keys is bounded: the
least recently seen key is forgotten first, which only ever lets a forgotten caller start
again with a full bucket.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from api.errors import TooManyRequests

__all__ = ["Limits", "RateLimiter"]


class RateLimiter:
    """``rate_per_s`` tokens a second per key, up to ``burst`` saved. Thread-safe."""

    def __init__(self, *, rate_per_s: float, burst: int, what: str, max_keys: int = 100_000) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a rate limiter needs a positive rate and a burst of at least 1")
        self.rate_per_s, self.burst, self.what = rate_per_s, burst, what
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

    def wait(self, key: str, *, now: float | None = None) -> float:
        """Seconds until ``key`` has a token (0.0: it has one now); takes nothing."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate_per_s

    def check(self, key: str) -> None:
        """Raise :class:`TooManyRequests` if ``key``'s bucket is empty; takes nothing."""
        wait = self.wait(key)
        if wait > 0.0:
            raise TooManyRequests(f"too many {self.what}; retry in {math.ceil(wait)} s", retry_after_s=wait)

    def hit(self, key: str) -> None:
        """Take one token or raise :class:`TooManyRequests` (429 with ``Retry-After``)."""
        wait = self.take(key)
        if wait > 0.0:
            raise TooManyRequests(f"too many {self.what}; retry in {math.ceil(wait)} s", retry_after_s=wait)


@dataclass(frozen=True)
class Limits:
    """The limiters of one API process (``app.state.limits``)."""

    user: RateLimiter
    sign_in: RateLimiter
    device: RateLimiter
