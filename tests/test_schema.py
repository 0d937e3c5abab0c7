"""Migrations and storage mechanics on each path: plain PostgreSQL partitions and
retention, TimescaleDB hypertables, compression, policies and the continuous aggregate."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from telemetry.schema import MAINTENANCE_LOCK_KEY, ensure_partitions, features, migrate, run_maintenance
from telemetry.storage_jobs import GRACE, check_and_run
from tests.helpers.db import Database, runtime_role


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


def _insert_reports(conn: psycopg.Connection, device: str, stamps: list[datetime]) -> None:
    conn.execute("INSERT INTO devices (device_id) VALUES (%s) ON CONFLICT DO NOTHING", (device,))
    for seq, ts in enumerate(stamps):
        conn.execute(
            "INSERT INTO telemetry (device_id, ts, seq, received_at, battery_pct, charging,"
            " recording, live, viewers) VALUES (%s, %s, %s, now(), 50, false, 'off', false, 0)", (device, ts, seq))


def test_timescale_policies_run_by_watchfloor_take_effect(timescale_db: Database) -> None:
    """Every policy job, judged overdue (the clock ten days on) is run by Watchfloor with
    run_job, and it takes effect: the 40-day-old chunk is dropped, the 5-day-old one is
    compressed, and the aggregate is materialized for the recent hours."""
    now = datetime.now(timezone.utc)
    with timescale_db.connect() as conn:
        _insert_reports(conn, "ts-1", [now - timedelta(days=40), now - timedelta(days=5), now - timedelta(hours=2)])
        health = check_and_run(conn, lock_key=MAINTENANCE_LOCK_KEY, clock=lambda: now + timedelta(days=10),
                               grace=GRACE)
        assert health is not None
        ran = {(v.job.proc_name, v.job.target): (v.status, v.ran_ok, v.run_error) for v in health.verdicts}
        assert set(ran) == {("policy_compression", "telemetry"), ("policy_compression", "device_events"),
                            ("policy_retention", "telemetry"), ("policy_retention", "device_events"),
                            ("policy_refresh_continuous_aggregate", "device_health_hourly")}, ran
        assert all(ok is True for _, ok, _ in ran.values()), ran
        assert health.failing == ()
        # run_job leaves TimescaleDB's statistics as they were: the outcome is ours to keep,
        # and the next check reads it back and finds nothing due.
        recorded = conn.execute("SELECT count(*) FROM storage_job_runs WHERE last_success_at IS NOT NULL"
                                " AND last_error IS NULL").fetchone()
        again = check_and_run(conn, lock_key=MAINTENANCE_LOCK_KEY, clock=lambda: datetime.now(timezone.utc),
                              grace=GRACE)
        chunks = conn.execute(
            "SELECT range_start, range_end, is_compressed FROM timescaledb_information.chunks"
            " WHERE hypertable_name = 'telemetry' ORDER BY range_start").fetchall()
        mat = conn.execute(
            "SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name)"
            " FROM timescaledb_information.continuous_aggregates WHERE view_name = 'device_health_hourly'"
        ).fetchone()
        assert mat is not None
        materialized = conn.execute(f"SELECT count(*), sum(samples) FROM {mat[0]}").fetchone()
    assert all(end > now - timedelta(days=30) for _, end, _ in chunks), chunks  # the 40-day-old chunk dropped
    assert [compressed for start, _, compressed in chunks if start < now - timedelta(days=3)] == [True], chunks
    assert [compressed for start, _, compressed in chunks if start > now - timedelta(days=2)] == [False], chunks
    assert materialized == (1, 1)  # the hour two hours ago; the 5-day-old report is outside the window
    assert recorded == (5,)
    assert again is not None and not any(v.run for v in again.verdicts) and again.failing == ()


def test_timescale_jobs_are_left_alone_while_another_process_holds_the_maintenance_lock(
        timescale_db: Database) -> None:
    """Run_job happens only under the maintenance lock: while another session holds it, the
    check runs nothing and says so (None)."""
    with timescale_db.connect() as holder, timescale_db.connect() as conn:
        holder.execute("SELECT pg_advisory_lock(%s)", (MAINTENANCE_LOCK_KEY,))
        assert check_and_run(conn, lock_key=MAINTENANCE_LOCK_KEY, clock=lambda: datetime.now(timezone.utc)
                             + timedelta(days=10), grace=GRACE) is None
        holder.execute("SELECT pg_advisory_unlock(%s)", (MAINTENANCE_LOCK_KEY,))
        # Released: the next check reads and judges every job.
        health = check_and_run(conn, lock_key=MAINTENANCE_LOCK_KEY, clock=lambda: datetime.now(timezone.utc),
                               grace=GRACE)
    assert health is not None and len(health.verdicts) == 5


def test_db_maintain_reports_each_storage_job_on_timescale(timescale_db: Database) -> None:
    """`watchfloor db maintain` prints a line per policy job with its verdict, and exits 0
    when none is left failing."""
    env = {**os.environ, "WATCHFLOOR_DATABASE_URL": timescale_db.url}
    done = subprocess.run([sys.executable, "-m", "watchfloor", "db", "maintain"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("storage job ")]
    assert len(lines) == 5, done.stdout
    assert any("policy_refresh_continuous_aggregate on device_health_hourly" in line for line in lines)


def test_timescale_jobs_are_run_by_the_owner_and_only_judged_by_the_runtime_role(timescale_db: Database) -> None:
    """The runtime role (which ingest uses) can read the jobs but run_job needs their owner:
    it leaves them alone and says so; an overdue job is then reported failing. Once
    `db maintain`'s owner has run them, the runtime role reads that success and finds
    storage looked after, though the scheduler's own statistics still say failed."""
    later = datetime.now(timezone.utc) + timedelta(days=10)
    with runtime_role(timescale_db) as url, psycopg.connect(url, autocommit=True) as conn:
        barred = check_and_run(conn, lock_key=MAINTENANCE_LOCK_KEY, clock=lambda: later, grace=GRACE)
        with timescale_db.connect() as owner:
            run = check_and_run(owner, lock_key=MAINTENANCE_LOCK_KEY, clock=lambda: later, grace=GRACE)
        after = check_and_run(conn, lock_key=MAINTENANCE_LOCK_KEY, clock=lambda: later, grace=GRACE)
    assert barred is not None and len(barred.verdicts) == 5 and len(barred.failing) == 5
    assert all(v.ran_ok is None and "owner" in v.reason for v in barred.verdicts)
    assert run is not None and all(v.ran_ok is True for v in run.verdicts)
    assert after is not None and after.failing == () and not any(v.run for v in after.verdicts)
