"""Request limits: a reusable rate limiter (token bucket per key) and the limits one API
process applies.

* Per user: every authenticated request takes a token from the caller's bucket (in
  :func:`api.auth.principal`), so a script with a stolen or runaway token cannot flood the
  database; ``429`` with ``Retry-After`` when it is empty.
* Failed sign-ins: per (client address, username), to slow password guessing. Only
  failures take a token (a control room behind one address signs in all at once), but an
  empty bucket refuses even the right password until it refills.
* Per device: ``app.state.limits.device.hit(device_id)`` in the WHIP route.

Buckets are per process (:class:`core.ratelimit.TokenBuckets`): behind a load balancer
with N API processes, a caller gets up to N times the rate (use sticky sessions to make it
exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.ratelimit import TokenBuckets
from services.errors import TooManyRequests

__all__ = ["Limits", "RateLimiter"]


class RateLimiter(TokenBuckets):
    """Token buckets whose empty bucket is an HTTP 429 (:class:`TooManyRequests`)."""

    def __init__(self, *, rate_per_s: float, burst: int, what: str, max_keys: int = 100_000) -> None:
        super().__init__(rate_per_s=rate_per_s, burst=burst, max_keys=max_keys)
        self.what = what

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
