"""A latency histogram with 1 ms buckets up to 60 s: cheap to record from a hot loop,
exact enough for p50/p99, and bounded in memory whatever the traffic."""

from __future__ import annotations

__all__ = ["LatencyHistogram"]


class LatencyHistogram:
    def __init__(self, max_ms: int = 60_000) -> None:
        self._max_ms = max_ms
        self._counts = [0] * (max_ms + 1)
        self.count = 0

    def record(self, seconds: float) -> None:
        ms = int(seconds * 1000.0)
        self._counts[0 if ms < 0 else min(ms, self._max_ms)] += 1
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile in milliseconds (upper bucket edge), None when empty."""
        if self.count == 0:
            return None
        rank = q * self.count
        seen = 0
        for ms, n in enumerate(self._counts):
            seen += n
            if seen >= rank and n:
                return float(ms + 1)
        return float(self._max_ms)

    def merge(self, other: "LatencyHistogram") -> None:
        """Add ``other``'s samples (same bucket width) to this one."""
        for ms, n in enumerate(other._counts[: self._max_ms + 1]):
            self._counts[ms] += n
        self.count += other.count

    def reset(self) -> None:
        self._counts = [0] * (self._max_ms + 1)
        self.count = 0
