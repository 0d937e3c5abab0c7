"""What a migration is, and what it is given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import psycopg

__all__ = ["TIME_PARTITIONED", "Migration", "Retention"]

#: The tables partitioned by day (hypertables on TimescaleDB).
TIME_PARTITIONED = ("telemetry", "device_events")


@dataclass(frozen=True)
class Retention:
    keep: timedelta
    compress_after: timedelta


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[psycopg.Connection, frozenset[str], Retention], None]
