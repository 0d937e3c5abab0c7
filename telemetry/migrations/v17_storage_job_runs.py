"""Migration 17: Watchfloor's own runs of TimescaleDB's storage jobs, one row per job.

``CALL run_job(id)`` updates neither ``job_stats`` nor ``job_history``, so where the
scheduler fails and Watchfloor runs the jobs itself (:mod:`telemetry.storage_jobs`), the
outcome is kept here: every process (``watchfloor db maintain`` as the owner, each ingest
worker) then judges a job on the later of the scheduler's success and Watchfloor's. One row
per job, overwritten, so it never grows. Created on plain PostgreSQL too (it stays empty).
"""

from __future__ import annotations

import psycopg

from telemetry.migrations.base import Retention

__all__ = ["apply"]

_STORAGE_JOB_RUNS = """
CREATE TABLE storage_job_runs (
    job_id          integer PRIMARY KEY,
    last_run_at     timestamptz NOT NULL,
    last_success_at timestamptz,
    last_error      text,
    last_error_at   timestamptz
);
"""


def apply(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_STORAGE_JOB_RUNS)
