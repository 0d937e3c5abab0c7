"""A latency histogram with fixed bucket edges, shaped like a Prometheus histogram."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

__all__ = ["DELAY_EDGES_S", "DelayHistogram", "HistogramSnapshot"]

# Upper bucket edges in seconds: fine below 10 ms, where the relay should be.
DELAY_EDGES_S = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class HistogramSnapshot:
    """``cumulative[i]`` samples were at or below ``edges_s[i]``; ``count`` includes the
    ones above the last edge (Prometheus' ``+Inf`` bucket)."""

    edges_s: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    sum_s: float

    def minus(self, earlier: HistogramSnapshot) -> HistogramSnapshot:
        """The samples recorded between ``earlier`` and this snapshot."""
        return HistogramSnapshot(self.edges_s, tuple(a - b for a, b in zip(self.cumulative, earlier.cumulative)),
                                 self.count - earlier.count, self.sum_s - earlier.sum_s)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile in seconds, interpolated inside its bucket; None if empty,
        the last edge if it lies above it."""
        if self.count == 0:
            return None
        rank = q * self.count
        lower_edge, lower_count = 0.0, 0
        for edge, cumulative in zip(self.edges_s, self.cumulative):
            if cumulative >= rank:
                inside = cumulative - lower_count
                fraction = (rank - lower_count) / inside if inside else 1.0
                return lower_edge + (edge - lower_edge) * fraction
            lower_edge, lower_count = edge, cumulative
        return self.edges_s[-1]


class DelayHistogram:
    def __init__(self, edges_s: tuple[float, ...] = DELAY_EDGES_S) -> None:
        self._edges = edges_s
        self._counts = [0] * (len(edges_s) + 1)
        self._sum = 0.0

    def record(self, seconds: float) -> None:
        self._counts[bisect.bisect_left(self._edges, seconds)] += 1
        self._sum += seconds

    def snapshot(self) -> HistogramSnapshot:
        cumulative, total = [], 0
        for n in self._counts[:-1]:
            total += n
            cumulative.append(total)
        return HistogramSnapshot(self._edges, tuple(cumulative), total + self._counts[-1], self._sum)
