"""A latency histogram with 1 ms buckets up to 60 s: cheap to record from a hot loop,
exact enough for p50/p99, and bounded in memory whatever the traffic."""

from __future__ import annotations

__all__ = ["LatencyHistogram"]


class LatencyHistogram:
    def __init__(self, max_ms: int = 60_000) -> None:
        self._max_ms = max_ms
        self._counts = [0] * (max_ms + 1)
        self.count = 0
        self.sum_s = 0.0

    def record(self, seconds: float) -> None:
        ms = int(seconds * 1000.0)
        self._counts[0 if ms < 0 else min(ms, self._max_ms)] += 1
        self.count += 1
        self.sum_s += seconds

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

    def cumulative(self, edges_s: list[float]) -> tuple[list[int], int]:
        """Samples at or below each edge (seconds, ascending), and all samples: the shape of
        a Prometheus histogram. A sample counts in the bucket of its 1 ms upper edge. Read
        from another thread it is a consistent-enough snapshot: totals come from one copy."""
        counts = list(self._counts)
        below: list[int] = []
        seen, ms = 0, 0
        for edge in edges_s:
            limit = min(int(round(edge * 1000.0)), self._max_ms + 1)
            while ms < limit:
                seen += counts[ms]
                ms += 1
            below.append(seen)
        return below, sum(counts)

    def merge(self, other: "LatencyHistogram") -> None:
        """Add ``other``'s samples (same bucket width) to this one."""
        for ms, n in enumerate(other._counts[: self._max_ms + 1]):
            self._counts[ms] += n
        self.count += other.count
        self.sum_s += other.sum_s

    def reset(self) -> None:
        self._counts = [0] * (self._max_ms + 1)
        self.count = 0
        self.sum_s = 0.0
