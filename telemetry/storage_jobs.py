"""TimescaleDB's background jobs for Watchfloor's storage (compression, retention, the
continuous aggregate's refresh): is each one running, and if not, run it ourselves.

Why: TimescaleDB runs these policies from its own scheduler, and a server where the
scheduler fails leaves telemetry uncompressed and never dropped while the disk fills (on
PostgreSQL 15.20 with TimescaleDB 2.28.3 every such job fails in the scheduler with
"cannot drop portal", yet succeeds with ``CALL run_job(id)``). So ``watchfloor db
maintain`` and ingest's hourly maintenance read each job's state, decide here, run the
failing or overdue ones themselves under the maintenance lock where their role may (the
jobs' owner), and record the outcome in ``storage_job_runs`` (``run_job`` leaves
TimescaleDB's own statistics as they were).

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

#: How late a job may be beyond two of its intervals: one period of ingest's hourly check.
GRACE = timedelta(hours=1)

#: The policy procedures that Watchfloor's migrations schedule; other jobs on the server
#: (a DBA's own, TimescaleDB's telemetry job) are not ours to judge or run.
POLICY_PROCS = ("policy_compression", "policy_retention", "policy_refresh_continuous_aggregate")


class JobStatus(StrEnum):
    OK = "ok"
    #: The scheduler's last run of it failed (Watchfloor runs it once per schedule interval).
    FAILING = "failing"
    #: No success, the scheduler's or Watchfloor's, for two schedule intervals plus the
    #: grace: storage is not being looked after (a stopped scheduler fails no run but runs
    #: nothing either; a job never run counts from its first scheduled start).
    OVERDUE = "overdue"
    #: Switched off on purpose (``alter_job(scheduled => false)``): reported, never run.
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class JobState:
    """One job as TimescaleDB reports it (``timescaledb_information.jobs``, ``job_stats``,
    the last failure in ``job_history``), with Watchfloor's own last success of it."""

    job_id: int
    proc_name: str
    target: str  # the hypertable or continuous aggregate it works on
    scheduled: bool
    schedule_interval: timedelta
    created_at: datetime  # its first scheduled start: "never succeeded" is overdue only after it
    last_success: datetime | None  # the scheduler's or Watchfloor's run_job, whichever is later
    last_run_status: str | None  # the scheduler's: 'Success' | 'Failed' | None (never ran)
    total_failures: int
    last_error: str | None
    may_run: bool = True  # whether this connection's role may run_job it (the job's owner)


@dataclass(frozen=True, slots=True)
class JobVerdict:
    job: JobState
    status: JobStatus
    #: Whether to run it now with ``run_job``.
    run: bool
    reason: str
    #: Set once Watchfloor ran it: None if it did not, else whether it succeeded.
    ran_ok: bool | None = None
    run_error: str | None = None
    #: The last success after this check (our run included).
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
        """The jobs that storage is not looked after by: overdue, and not run successfully by
        this check. What the alert and ``watchfloor_storage_job_failing`` report."""
        return tuple(v for v in self.verdicts if v.status is JobStatus.OVERDUE and v.ran_ok is not True)


def judge(jobs: Iterable[JobState], *, now: datetime, grace: timedelta) -> list[JobVerdict]:
    """A verdict per job, and whether to run it: an overdue job now, a job the scheduler
    fails once its interval has passed since the last success (what the scheduler would have
    done), never a paused one, nor one this role may not run (it says so)."""
    verdicts = []
    for job in jobs:
        base = JobVerdict(job, JobStatus.OK, run=False, reason="last run succeeded", last_success=job.last_success)
        if not job.scheduled:
            verdicts.append(replace(base, status=JobStatus.PAUSED, reason="not scheduled (paused on purpose)"))
            continue
        age = now - (job.last_success or job.created_at)
        due = job.last_success is None or now - job.last_success >= job.schedule_interval
        when = job.last_success.isoformat() if job.last_success else "never"
        if age > 2 * job.schedule_interval + grace:
            verdict = replace(base, status=JobStatus.OVERDUE, run=True,
                              reason=f"no success since {when}, every {job.schedule_interval}")
        elif job.last_run_status == "Failed":
            error = f": {job.last_error}" if job.last_error else ""
            verdict = replace(base, status=JobStatus.FAILING, run=due,
                              reason=f"the scheduler's last run failed{error}; last success {when}")
        else:
            verdict = base
        if verdict.run and not job.may_run:
            verdict = replace(verdict, run=False, reason=verdict.reason + "; this role may not run it (run_job "
                              "needs the job's owner: run `watchfloor db maintain` as the owner)")
        verdicts.append(verdict)
    return verdicts


# ---- the adapter -------------------------------------------------------------------------

_JOBS = """
SELECT j.job_id, j.proc_name,
       coalesce(c.view_name, j.hypertable_name, ''),
       j.scheduled, j.schedule_interval,
       -- TimescaleDB says "never" with -infinity, which Python's datetime cannot hold.
       coalesce(CASE WHEN isfinite(j.initial_start) THEN j.initial_start END,
                CASE WHEN isfinite(s.next_start) THEN s.next_start END, now()),
       greatest(CASE WHEN isfinite(s.last_successful_finish) THEN s.last_successful_finish END,
                r.last_success_at),
       s.last_run_status, coalesce(s.total_failures, 0),
       -- Visible to the job's owner only; another role reads no error message.
       (SELECT h.err_message FROM timescaledb_information.job_history h
         WHERE h.job_id = j.job_id AND NOT h.succeeded ORDER BY h.id DESC LIMIT 1),
       pg_has_role(current_user, j.owner, 'MEMBER')
FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
LEFT JOIN storage_job_runs r ON r.job_id = j.job_id
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
        job_id, proc, target, scheduled, interval, created, success, status, failures, error, may_run = row
        states.append(JobState(job_id=job_id, proc_name=proc, target=target, scheduled=scheduled,
                               schedule_interval=interval, created_at=created, last_success=success,
                               last_run_status=status, total_failures=failures,
                               last_error=(error or None) and error[:300], may_run=may_run))
    return states


def run_job(conn: psycopg.Connection, job_id: int, *, now: datetime) -> str | None:
    """``CALL run_job(job_id)`` and its outcome recorded in ``storage_job_runs``; None on
    success, else the error. The policies commit as they go, so the call must not be inside
    a transaction: the connection is in autocommit here."""
    try:
        conn.execute("CALL run_job(%s)", (job_id,))
        error = None
    except psycopg.Error as failed:
        error = str(failed).strip()[:300]
    conn.execute(
        "INSERT INTO storage_job_runs AS r (job_id, last_run_at, last_success_at, last_error, last_error_at)"
        " VALUES (%(job)s, %(now)s, CASE WHEN %(error)s::text IS NULL THEN %(now)s END, %(error)s,"
        "         CASE WHEN %(error)s::text IS NOT NULL THEN %(now)s END)"
        " ON CONFLICT (job_id) DO UPDATE SET last_run_at = excluded.last_run_at,"
        " last_success_at = coalesce(excluded.last_success_at, r.last_success_at),"
        " last_error = coalesce(excluded.last_error, r.last_error),"
        " last_error_at = coalesce(excluded.last_error_at, r.last_error_at)",
        {"job": job_id, "now": now, "error": error})
    return error


def check_and_run(conn: psycopg.Connection, *, lock_key: int, clock: Callable[[], datetime],
                  grace: timedelta) -> StorageHealth | None:
    """Read the jobs, judge them, and run those to run, holding the maintenance lock
    ``lock_key`` (a session lock: ``run_job`` cannot run in a transaction, and a session lock
    and the transaction lock that retention takes exclude each other). Returns None if
    another process holds the lock (it is doing this)."""
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
            verdicts = []
            for verdict in judge(read_jobs(conn), now=now, grace=grace):
                if verdict.run:
                    error = run_job(conn, verdict.job.job_id, now=clock())
                    verdict = replace(verdict, ran_ok=error is None, run_error=error,
                                      last_success=clock() if error is None else verdict.last_success)
                verdicts.append(verdict)
            return StorageHealth(checked_at=now, verdicts=tuple(verdicts))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key,))
    finally:
        conn.autocommit = autocommit
