"""Versioned schema migrations, for TimescaleDB or plain PostgreSQL (>= 14).

The same tables and columns exist on both; only the storage mechanics differ:

============================  ===============================  ================================
feature                       TimescaleDB (timescale license)  plain PostgreSQL
============================  ===============================  ================================
time partitioning             hypertables, 1-day chunks        ``PARTITION BY RANGE (ts)``, daily
retention                     ``add_retention_policy``         :func:`run_maintenance` drops days
compression                   segmented by ``device_id``       none
``device_health_hourly``      continuous aggregate             a plain view over ``telemetry``
============================  ===============================  ================================

The migrations themselves (their SQL, one module each) are in :mod:`telemetry.migrations`;
this module runs them, and keeps the partitions and retention on plain PostgreSQL.
Migration 1 decides which path to take and records it; :func:`features` reads it back so
the rest of the code never guesses. Migrations take an advisory lock, so several processes
may run ``watchfloor db migrate`` at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta, timezone

import psycopg

from telemetry.migrations import MIGRATIONS, TIME_PARTITIONED, Retention

__all__ = [
    "MAINTENANCE_LOCK_KEY",
    "MIGRATIONS",
    "ensure_partitions",
    "features",
    "migrate",
    "pending",
    "run_maintenance",
]

_LOCK_KEY = 0x57415443  # "WATC": serialises migrations and maintenance across processes
#: Held by whoever runs maintenance (retention here, the storage jobs in telemetry.storage_jobs).
MAINTENANCE_LOCK_KEY = _LOCK_KEY + 1


def _detect(conn: psycopg.Connection, timescaledb: str) -> frozenset[str]:
    """Which storage features this server offers, as migration 1 will use them."""
    if timescaledb == "off":
        return frozenset({"native_partitioning"})
    row = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    preloaded = "timescaledb" in str(
        conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()[0]  # type: ignore[index]
    )
    if row is None or not preloaded:
        if timescaledb == "require":
            raise RuntimeError("TimescaleDB is required but not available (or not preloaded)")
        return frozenset({"native_partitioning"})
    conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    license_ = conn.execute("SELECT current_setting('timescaledb.license')").fetchone()[0]  # type: ignore[index]
    feats = {"timescaledb"}
    if license_ == "timescale":
        feats |= {"compression", "retention_policy", "continuous_aggregate"}
    return frozenset(feats)


def migrate(
    conn: psycopg.Connection,
    *,
    retention: timedelta,
    compress_after: timedelta,
    timescaledb: str = "auto",
) -> list[str]:
    """Apply every pending migration, each in its own transaction. Returns what was applied."""
    conn.commit()
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " features text[] NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations").fetchall()}
        recorded = features(conn) if done else None
        feats = recorded if recorded is not None else _detect(conn, timescaledb)
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            migration.apply(conn, feats, Retention(retention, compress_after))
            conn.execute(
                "INSERT INTO schema_migrations (version, name, features) VALUES (%s, %s, %s)",
                (migration.version, migration.name, sorted(feats)),
            )
            applied.append(f"{migration.version:04d} {migration.name}")
    return applied


def pending(conn: psycopg.Connection) -> list[int]:
    """The versions not yet applied, read without any privilege beyond SELECT (a runtime role
    checks this at start instead of migrating)."""
    if conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,):
        return [m.version for m in MIGRATIONS]
    done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations").fetchall()}
    return [m.version for m in MIGRATIONS if m.version not in done]


def features(conn: psycopg.Connection) -> frozenset[str]:
    """The storage features that migration 1 chose for this database."""
    row = conn.execute(
        "SELECT features FROM schema_migrations WHERE version = 1"
    ).fetchone()
    if row is None:
        raise RuntimeError("database not migrated: run `watchfloor db migrate`")
    return frozenset(row[0])


def _day(ts: datetime) -> date:
    return ts.astimezone(timezone.utc).date()


def ensure_partitions(conn: psycopg.Connection, days: Iterable[date]) -> None:
    """Create the daily partitions (plain PostgreSQL only) for ``days``, committed at once."""
    with conn.transaction():
        for day in sorted(set(days)):
            for table in TIME_PARTITIONED:
                conn.execute("SELECT watchfloor_ensure_partition(%s, %s)", (table, day))


def run_maintenance(
    conn: psycopg.Connection, *, feats: frozenset[str], keep: timedelta, now: datetime
) -> int:
    """Keep partitions ahead of time and apply retention. Returns partitions dropped.

    With TimescaleDB's policies the server's jobs do this (and :mod:`telemetry.storage_jobs`
    checks them and runs them where the scheduler fails); on plain PostgreSQL (or an
    Apache-only TimescaleDB) it is our job, and ingest calls this hourly.
    """
    today = _day(now)
    dropped = 0
    with conn.transaction():
        got = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (MAINTENANCE_LOCK_KEY,)).fetchone()
        if not got or not got[0]:
            return 0  # another process is doing it
        for table in TIME_PARTITIONED:
            if "native_partitioning" in feats:
                for ahead in range(3):
                    conn.execute(
                        "SELECT watchfloor_ensure_partition(%s, %s)",
                        (table, today + timedelta(days=ahead)),
                    )
                row = conn.execute(
                    "SELECT watchfloor_drop_partitions(%s, %s)", (table, today - keep)
                ).fetchone()
                dropped += int(row[0]) if row else 0
            elif "retention_policy" not in feats:
                rows = conn.execute(
                    "SELECT drop_chunks(%s::regclass, older_than => %s)", (table, now - keep)
                ).fetchall()
                dropped += len(rows)
    return dropped
