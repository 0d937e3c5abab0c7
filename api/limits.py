"""Request limits: a reusable rate limiter (token bucket per key) and the limits one API
process applies.

* Per user: every authenticated request takes a token from the caller's bucket (in
  :func:`api.auth.principal`), so a script with a stolen or runaway token cannot flood the
  database; ``429`` with ``Retry-After`` when it is empty.
* Attempts at a secret (a password for a username, a device secret for WHIP): see
  :class:`Attempts`. The client is the address :mod:`api.client_address` resolves (a
  trusted proxy's word, else the peer).
* Password checks at once: :class:`Verifications` (503 past it).

Buckets are per process (:class:`core.ratelimit.TokenBuckets`): behind a load balancer
with N API processes, a caller gets up to N times the rate (use sticky sessions to make it
exact).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from api.client_address import Network
from api.feed_slots import FeedSlots
from core.ratelimit import TokenBuckets
from services.errors import Overloaded, TooManyRequests

__all__ = ["ApiLimits", "Attempt", "Attempts", "RateLimiter", "Verifications"]


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


@dataclass
class Attempt:
    """One attempt that took its tokens; :meth:`succeeded` gives them back."""

    attempts: Attempts
    client: str
    account: str
    took_account: bool

    def succeeded(self) -> None:
        """The secret was right: the tokens go back, and the address is known to the account."""
        self.attempts.give_back(self)
        self.attempts.remember(self)

    def abandoned(self) -> None:
        """Nothing was checked (e.g. the process was too busy): the tokens go back."""
        self.attempts.give_back(self)


class Attempts:
    """Attempts at one kind of secret, by client address and by account (a username, a device).

    The policy, so that nobody can use up someone else's attempts:

    * Each attempt takes a token **before** the secret is checked (atomically, under the
      buckets' lock), so that N concurrent guesses against a burst of B evaluate at most B.
      A success gives its tokens back: only failures count.
    * ``per_client`` is keyed by (client, account): a guesser at one address locks out that
      account from that address only.
    * ``per_account`` is keyed by the account alone, across every address, and bounds a guess
      spread over many addresses. It applies only to addresses the account has not succeeded
      from in the last ``known_for_s``: those keep only their own (client, account) bucket,
      so a flood from elsewhere slows newcomers but never refuses the account's own known
      addresses (an officer's workstation, a camera's usual address).
    """

    def __init__(self, *, per_client: RateLimiter, per_account: RateLimiter, known_for_s: float = 7 * 86_400,
                 max_known: int = 100_000) -> None:
        self.per_client, self.per_account = per_client, per_account
        self._known_for_s, self._max_known = known_for_s, max_known
        self._known: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def _is_known(self, client: str, account: str) -> bool:
        with self._lock:
            at = self._known.get((account, client))
            return at is not None and time.monotonic() - at < self._known_for_s

    def start(self, client: str, account: str) -> Attempt:
        """Take this attempt's tokens, or raise :class:`TooManyRequests` (nothing is checked then)."""
        key = f"{client}|{account}"
        self.per_client.hit(key)
        took_account = not self._is_known(client, account)
        if took_account:
            try:
                self.per_account.hit(account)
            except TooManyRequests:
                self.per_client.give_back(key)  # not evaluated: it does not count against this address
                raise
        return Attempt(self, client, account, took_account)

    def give_back(self, attempt: Attempt) -> None:
        self.per_client.give_back(f"{attempt.client}|{attempt.account}")
        if attempt.took_account:
            self.per_account.give_back(attempt.account)

    def remember(self, attempt: Attempt) -> None:
        with self._lock:
            self._known.pop((attempt.account, attempt.client), None)
            self._known[(attempt.account, attempt.client)] = time.monotonic()
            while len(self._known) > self._max_known:
                self._known.popitem(last=False)


class Verifications:
    """At most ``limit`` password checks at once in this process; the next is refused at once
    (:class:`Overloaded`, 503) rather than queued, so that a flood of sign-ins cannot take
    every worker thread and core from the signed-in users' requests."""

    def __init__(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit)

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._slots.acquire(blocking=False):
            raise Overloaded("too many sign-ins in progress; retry in 1 s", retry_after_s=1.0)
        try:
            yield
        finally:
            self._slots.release()


@dataclass(frozen=True)
class ApiLimits:
    """The limiters of one API process (``app.state.limits``)."""

    user: RateLimiter
    sign_in: Attempts
    device: Attempts
    verifications: Verifications
    feeds: FeedSlots  # live feeds open at once
    proxies: tuple[Network, ...]  # whose forwarded headers name the client
