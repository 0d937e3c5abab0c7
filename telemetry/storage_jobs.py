"""TimescaleDB's background jobs for Watchfloor's storage (compression, retention, the
continuous aggregate's refresh): is each one running, and if not, run it ourselves.

Why: TimescaleDB runs these policies from its own scheduler, and a server where the
scheduler fails leaves telemetry uncompressed and never dropped while the disk fills (on
PostgreSQL 15.20 with TimescaleDB 2.28.3 every such job fails in the scheduler with
"cannot drop portal", yet succeeds with ``CALL run_job(id)``). So ``watchfloor db
maintain`` and ingest's hourly maintenance read each job's state, decide here, and run the
failing or overdue ones themselves under the maintenance lock.

:func:`judge` is pure: job states in, a verdict per job out. :func:`read_jobs`,
:func:`run_job` and :func:`check_and_run` are the thin adapter. On plain PostgreSQL (and on
an Apache-only TimescaleDB, which has no policies) there are no jobs and nothing is checked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

import psycopg

__all__ = [
    "GRACE",
    "JobState",
    "JobStatus",
    "JobVerdict",
    "StorageHealth",
    "check_and_run",
    "has_policies",
    "judge",
    "read_jobs",
    "run_job",
]

#: The policy procedures that Watchfloor's migrations schedule; other jobs on the server
#: (a DBA's own, TimescaleDB's telemetry job) are not ours to judge or run.
#: How late a job may be beyond two of its intervals: one period of ingest's hourly check.
GRACE = timedelta(hours=1)

POLICY_PROCS = ("policy_compression", "policy_retention", "policy_refresh_continuous_aggregate")


class JobStatus(StrEnum):
    OK = "ok"
    #: The scheduler's last run of it failed.
    FAILING = "failing"
    #: No success for longer than two schedule intervals plus the grace (a scheduler that
    #: is stopped, or never started it, fails no run but runs nothing either).
    OVERDUE = "overdue"
    #: Switched off on purpose (``alter_job(scheduled => false)``): reported, never run.
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class JobState:
    """One job as TimescaleDB reports it (``timescaledb_information.jobs``, ``job_stats``
    and the last failure in ``job_history``)."""

    job_id: int
    proc_name: str
    target: str  # the hypertable or continuous aggregate it works on
    scheduled: bool
    schedule_interval: timedelta
    created_at: datetime  # its first scheduled start: "never succeeded" is overdue only after it
    last_success: datetime | None
    last_run_status: str | None  # 'Success' | 'Failed' | None (never ran)
    total_failures: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class JobVerdict:
    job: JobState
    status: JobStatus
    #: Whether Watchfloor should run it now with ``run_job``.
    run: bool
    reason: str
    #: Set once Watchfloor ran it: None if it did not, else whether it succeeded.
    ran_ok: bool | None = None
    run_error: str | None = None
    #: The last success known to Watchfloor: the scheduler's or our own run's.
    last_success: datetime | None = None


@dataclass(frozen=True, slots=True)
class StorageHealth:
    """One check of every policy job; ``checked_at`` None means never checked (or no jobs)."""

    checked_at: datetime | None
    verdicts: tuple[JobVerdict, ...] = ()
    #: Why the last check could not read the jobs (the verdicts are then the check before).
    error: str | None = None

    @property
    def failing(self) -> tuple[JobVerdict, ...]:
        """The jobs still without a recent success after this check (the fallback included)."""
        return tuple(v for v in self.verdicts if v.status is not JobStatus.OK and v.ran_ok is not True
                     and v.status is not JobStatus.PAUSED)


def judge(jobs: Iterable[JobState], *, now: datetime, grace: timedelta) -> list[JobVerdict]:
    """A verdict per job: failing (its last scheduled run failed), overdue (no success for
    two intervals plus ``grace``), paused, or ok; run the failing and the overdue."""
    verdicts = []
    for job in jobs:
        base = JobVerdict(job, JobStatus.OK, run=False, reason="last run succeeded", last_success=job.last_success)
        if not job.scheduled:
            verdicts.append(replace(base, status=JobStatus.PAUSED, reason="not scheduled (paused on purpose)"))
            continue
        since = job.last_success or job.created_at
        late = now - since > 2 * job.schedule_interval + grace
        if job.last_run_status == "Failed":
            error = f": {job.last_error}" if job.last_error else ""
            verdicts.append(replace(base, status=JobStatus.FAILING, run=True,
                                    reason=f"the scheduler's last run failed{error}"))
        elif late:
            when = job.last_success.isoformat() if job.last_success else "never"
            verdicts.append(replace(base, status=JobStatus.OVERDUE, run=True,
                                    reason=f"no success since {when}, every {job.schedule_interval}"))
        else:
            verdicts.append(base)
    return verdicts


# ---- the adapter -------------------------------------------------------------------------

_JOBS = """
SELECT j.job_id, j.proc_name,
       coalesce(c.view_name, j.hypertable_name, ''),
       j.scheduled, j.schedule_interval,
       -- TimescaleDB says "never" with -infinity, which Python's datetime cannot hold.
       coalesce(CASE WHEN isfinite(j.initial_start) THEN j.initial_start END,
                CASE WHEN isfinite(s.next_start) THEN s.next_start END, now()),
       CASE WHEN isfinite(s.last_successful_finish) THEN s.last_successful_finish END,
       s.last_run_status, coalesce(s.total_failures, 0),
       (SELECT h.err_message FROM timescaledb_information.job_history h
         WHERE h.job_id = j.job_id AND NOT h.succeeded ORDER BY h.id DESC LIMIT 1)
FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
-- A refresh job names the aggregate's materialization hypertable; show the aggregate's name.
LEFT JOIN timescaledb_information.continuous_aggregates c
       ON c.materialization_hypertable_schema = j.hypertable_schema
      AND c.materialization_hypertable_name = j.hypertable_name
WHERE j.proc_schema IN ('_timescaledb_functions', '_timescaledb_internal') AND j.proc_name = ANY(%s)
ORDER BY j.job_id
"""

def has_policies(feats: frozenset[str]) -> bool:
    """Whether this database's storage is looked after by TimescaleDB jobs at all."""
    return bool({"compression", "retention_policy", "continuous_aggregate"} & feats)


def read_jobs(conn: psycopg.Connection) -> list[JobState]:
    """Every Watchfloor policy job in this database, with its last run and last error."""
    states = []
    for row in conn.execute(_JOBS, (list(POLICY_PROCS),)).fetchall():
        job_id, proc, target, scheduled, interval, created, success, status, failures, error = row
        states.append(JobState(job_id=job_id, proc_name=proc, target=target, scheduled=scheduled,
                               schedule_interval=interval, created_at=created, last_success=success,
                               last_run_status=status, total_failures=failures,
                               last_error=(error or None) and error[:300]))
    return states


def run_job(conn: psycopg.Connection, job_id: int) -> str | None:
    """``CALL run_job(job_id)``; None on success, else the error. The policies commit as they
    go, so the call must not be inside a transaction: the connection is in autocommit here."""
    try:
        conn.execute("CALL run_job(%s)", (job_id,))
    except psycopg.Error as error:
        return str(error).strip()[:300]
    return None


def check_and_run(conn: psycopg.Connection, *, lock_key: int, clock: Callable[[], datetime],
                  grace: timedelta, known: StorageHealth | None = None) -> StorageHealth | None:
    """Read the jobs, judge them, and run the failing and overdue ones, holding the
    maintenance lock ``lock_key`` (a session lock: ``run_job`` cannot run in a transaction,
    and a session lock and the transaction lock that retention takes exclude each other).
    Returns None if another process holds the lock (it is doing this). ``known``: the last
    check in this process, whose own successful runs count as last successes (``run_job``
    does not update TimescaleDB's job statistics)."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.commit()
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key,)).fetchone()
        if not got or not got[0]:
            return None
        try:
            now = clock()
            jobs = [_with_own_success(job, known) for job in read_jobs(conn)]
            verdicts = []
            for verdict in judge(jobs, now=now, grace=grace):
                if verdict.run:
                    error = run_job(conn, verdict.job.job_id)
                    verdict = replace(verdict, ran_ok=error is None, run_error=error,
                                      last_success=clock() if error is None else verdict.last_success)
                verdicts.append(verdict)
            return StorageHealth(checked_at=now, verdicts=tuple(verdicts))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key,))
    finally:
        conn.autocommit = autocommit


def _with_own_success(job: JobState, known: StorageHealth | None) -> JobState:
    """``job`` with our own last successful run of it as its last success, if later. A job
    whose scheduled runs still fail stays failing, and is run again at the next check."""
    for verdict in known.verdicts if known is not None else ():
        if verdict.job.job_id == job.job_id and verdict.last_success is not None:
            if job.last_success is None or verdict.last_success > job.last_success:
                return replace(job, last_success=verdict.last_success)
    return job
