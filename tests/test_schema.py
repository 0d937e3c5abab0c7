"""Migrations and storage mechanics on each path: plain PostgreSQL partitions and
retention, TimescaleDB hypertables, compression, policies and the continuous aggregate."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from telemetry.schema import ensure_partitions, features, migrate, run_maintenance
from tests.helpers.db import Database


def test_migrate_is_idempotent_and_records_its_features(any_db: Database) -> None:
    """A second migrate applies nothing; the chosen storage features are recorded."""
    with psycopg.connect(any_db.url) as conn:
        again = migrate(conn, retention=timedelta(days=30), compress_after=timedelta(days=2))
        feats = features(conn)
    assert again == []
    if any_db.kind == "timescale":
        assert {"timescaledb", "compression", "retention_policy", "continuous_aggregate"} <= feats
    else:
        assert feats == {"native_partitioning"}
    for table in ("devices", "telemetry", "device_events", "device_latest", "rejected_messages"):
        assert any_db.scalar("SELECT to_regclass(%s) IS NOT NULL", (table,)) is True
    assert any_db.scalar("SELECT count(*) FROM device_health_hourly") == 0


def test_plain_postgres_partitions_by_day_and_drops_old_days(pg: Database) -> None:
    """Daily partitions are kept ahead of time; retention drops whole days past the window."""
    now = datetime.now(timezone.utc)
    old_day = (now - timedelta(days=45)).date()
    with pg.connect() as conn:
        feats = features(conn)
        run_maintenance(conn, feats=feats, keep=timedelta(days=30), now=now)
        ensure_partitions(conn, [old_day])
        conn.execute("INSERT INTO devices (device_id) VALUES ('p-1')")
        for ts in (now, now - timedelta(days=45)):
            conn.execute(
                "INSERT INTO telemetry (device_id, ts, seq, received_at, battery_pct, charging,"
                " recording, live, viewers) VALUES ('p-1', %s, 1, now(), 50, false, 'off', false, 0)", (ts,))
        names = {r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'telemetry'::regclass").fetchall()}
        for ahead in range(3):
            assert f"telemetry_p{(now + timedelta(days=ahead)):%Y%m%d}" in names
        dropped = run_maintenance(conn, feats=feats, keep=timedelta(days=30), now=now)
    assert dropped == 2  # the old day of telemetry and of device_events
    assert pg.scalar("SELECT count(*) FROM telemetry") == 1


@pytest.fixture
def timescale_db(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    from tests.helpers.db import _database

    yield from _database(request, "timescale")


def test_timescale_hypertables_compression_retention_and_aggregate(timescale_db: Database) -> None:
    """With TimescaleDB: hypertables, compression segmented by device, a retention policy
    and a continuous aggregate whose refresh is scheduled."""
    db = timescale_db
    with db.connect() as conn:
        hypertables = {r[0] for r in conn.execute(
            "SELECT hypertable_name FROM timescaledb_information.hypertables").fetchall()}
        segment = conn.execute(
            "SELECT attname FROM timescaledb_information.compression_settings"
            " WHERE hypertable_name = 'telemetry' AND segmentby_column_index = 1").fetchone()
        jobs = {r[0] for r in conn.execute(
            "SELECT proc_name FROM timescaledb_information.jobs WHERE hypertable_name IN"
            " ('telemetry', 'device_events') OR proc_name = 'policy_refresh_continuous_aggregate'").fetchall()}
        caggs = {r[0] for r in conn.execute(
            "SELECT view_name FROM timescaledb_information.continuous_aggregates").fetchall()}
    assert {"telemetry", "device_events"} <= hypertables
    assert segment == ("device_id",)
    assert {"policy_compression", "policy_retention", "policy_refresh_continuous_aggregate"} <= jobs
    assert caggs == {"device_health_hourly"}
