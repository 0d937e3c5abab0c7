"""The ingest worker's counters, shared by its threads (:mod:`telemetry.ingest`) and its
database writer (:mod:`telemetry.writer`); :mod:`telemetry.metrics` reads them when scraped."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from telemetry.latency import LatencyHistogram

__all__ = ["IngestStats"]


@dataclass
class IngestStats:
    """Counters for logs and metrics (telemetry/metrics.py reads them when scraped). Written by
    the writer thread only, but for `delivered`."""

    received: int = 0
    stored_telemetry: int = 0
    stored_events: int = 0
    statuses: int = 0
    duplicates: int = 0
    alert_changes: int = 0
    live_frames: int = 0  # frames of stored unit state published for the API processes
    rejected: Counter[str] = field(default_factory=Counter)
    # Dock events by what they did to custody windows (telemetry/custody.py): a stale or
    # duplicate one is stored like any event but changes no window.
    custody: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    database_errors: int = 0
    last_batch_s: float = 0.0
    last_commit_lag_s: float = 0.0  # from the oldest message's arrival to its commit
    last_commit_at: float = 0.0  # time.time() of the last commit; 0 before the first
    delivered: int = 0  # handed over by paho (redeliveries included); written by paho's thread only
    # How long a batch took from the start of its transaction to its acknowledgement.
    batch_time: LatencyHistogram = field(default_factory=LatencyHistogram)
    # From the device's timestamp to the commit: publish-to-commit when clocks agree.
    commit_lag: LatencyHistogram = field(default_factory=LatencyHistogram)
