"""The token buckets of core/ratelimit.py, pure: every call is given the time (``now``), so
refill and wait times are checked exactly, without sleeping."""

from __future__ import annotations

import pytest

from core.ratelimit import TokenBuckets


def test_a_burst_then_one_token_per_interval_with_exact_wait_times() -> None:
    """A new key has ``burst`` tokens; once they are spent each take says how long until the
    next one, and a refused take costs nothing."""
    buckets = TokenBuckets(rate_per_s=2.0, burst=3)
    assert [buckets.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", now=0.0) == 0.5
    assert buckets.take("a", now=0.25) == 0.25  # half a token refilled
    assert buckets.take("a", now=0.5) == 0.0  # the refused takes took nothing
    assert buckets.take("a", now=0.5) == 0.5


def test_refill_stops_at_the_burst() -> None:
    """However long a key is idle, it saves at most ``burst`` tokens."""
    buckets = TokenBuckets(rate_per_s=10.0, burst=2)
    assert buckets.take("a", now=0.0) == 0.0
    assert [buckets.take("a", now=1000.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


def test_keys_have_their_own_buckets() -> None:
    buckets = TokenBuckets(rate_per_s=1.0, burst=1)
    assert buckets.take("a", now=0.0) == 0.0
    assert buckets.take("a", now=0.0) == 1.0
    assert buckets.take("b", now=0.0) == 0.0


def test_wait_takes_nothing() -> None:
    """``wait`` answers like ``take`` would, and a key it asks about keeps its tokens."""
    buckets = TokenBuckets(rate_per_s=4.0, burst=1)
    assert buckets.wait("a", now=0.0) == 0.0
    assert buckets.take("a", now=0.0) == 0.0  # the wait above did not spend the only token
    assert buckets.wait("a", now=0.0) == 0.25
    assert buckets.wait("a", now=0.125) == 0.125
    assert buckets.wait("a", now=0.25) == 0.0
    assert buckets.take("a", now=0.25) == 0.0


def test_give_back_returns_a_token_up_to_the_burst() -> None:
    """A token given back can be taken again; giving back to a full bucket, or to a key never
    seen, saves nothing more."""
    buckets = TokenBuckets(rate_per_s=1.0, burst=2)
    assert buckets.take("a", now=0.0) == 0.0
    assert buckets.take("a", now=0.0) == 0.0
    buckets.give_back("a")
    assert buckets.take("a", now=0.0) == 0.0
    assert buckets.take("a", now=0.0) == 1.0
    buckets.give_back("a")
    buckets.give_back("a")
    buckets.give_back("a")  # over the burst: kept at 2
    assert [buckets.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    buckets.give_back("never-seen")
    assert buckets.wait("never-seen", now=0.0) == 0.0


def test_the_least_recently_seen_key_is_forgotten_first() -> None:
    """The table holds ``max_keys`` keys; a new one pushes out the key seen longest ago,
    which then starts again with a full bucket, while a key seen since keeps its state."""
    buckets = TokenBuckets(rate_per_s=1.0, burst=1, max_keys=2)
    assert buckets.take("a", now=0.0) == 0.0
    assert buckets.take("b", now=0.0) == 0.0
    assert buckets.take("a", now=0.0) == 1.0  # refused, but "a" is now the most recently seen
    assert buckets.take("c", now=0.0) == 0.0  # pushes out "b"
    assert buckets.take("a", now=0.0) == 1.0  # still remembered, still empty
    assert buckets.take("b", now=0.0) == 0.0  # forgotten: a full bucket again


@pytest.mark.parametrize(("rate_per_s", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_a_limiter_that_would_never_let_anything_through_is_refused(rate_per_s: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBuckets(rate_per_s=rate_per_s, burst=burst)
