"""System alerts: alerts about Watchfloor itself, with no unit (``device_id`` NULL, a
``subject`` instead: migration 18). The first kind is ``storage_job_failing``, one alert per
TimescaleDB policy job that storage is not looked after by (:attr:`StorageHealth.failing`,
what ``watchfloor_storage_job_failing`` exports too).

One alert per failure spell: raised when a check first finds the job failing, left alone while
it stays open (whatever later checks say), resolved by the system (outcome ``cleared``) at the
first check that finds the job looked after again; a later failure is a new alert. The
database holds one open alert per kind and subject, so two processes checking at once raise
it once.

Who sees them (fleet managers and admins, whatever their areas: the storage is the whole
force's) is :meth:`services.accounts.Principal.sees_alert`'s decision; nobody acknowledges or
resolves one by hand (the job succeeding again is what resolves it).

:func:`storage_job_changes` is pure; :func:`apply_storage_job_alerts` is the thin adapter.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from telemetry.storage_jobs import JobVerdict, StorageHealth

__all__ = [
    "STORAGE_JOB_FAILING",
    "SYSTEM_ALERT_KINDS",
    "SystemAlert",
    "SystemAlertChanges",
    "apply_storage_job_alerts",
    "storage_job_changes",
    "storage_job_subject",
]

STORAGE_JOB_FAILING = "storage_job_failing"
#: Every kind of system alert (none of them is a unit's).
SYSTEM_ALERT_KINDS = frozenset({STORAGE_JOB_FAILING})

_DETAIL_MAX = 1000
_COLUMNS = (
    "id, device_id, subject, kind, severity, status, detail, raised_at, acknowledged_at, acknowledged_by,"
    " resolved_at, resolved_by, outcome, note, escalated_at, escalation_level"
)


@dataclass(frozen=True, slots=True)
class SystemAlert:
    kind: str
    subject: str
    severity: str
    detail: str


@dataclass(frozen=True, slots=True)
class SystemAlertChanges:
    raise_: tuple[SystemAlert, ...] = ()
    #: Subjects whose open alert of the kind is to be resolved (the job is looked after again).
    resolve: tuple[str, ...] = ()


def storage_job_subject(job_id: int) -> str:
    return f"storage_job:{job_id}"


def _detail(verdict: JobVerdict) -> str:
    job = verdict.job
    parts = [f"storage job {job.job_id} ({job.proc_name} on {job.target}) is not looked after: {verdict.reason}"]
    if verdict.run_error:
        parts.append(f"Watchfloor's run of it failed: {verdict.run_error}")
    if job.last_error and job.last_error not in verdict.reason:
        parts.append(f"last error: {job.last_error}")
    return "; ".join(parts)[:_DETAIL_MAX]


def storage_job_changes(health: StorageHealth, open_subjects: Set[str]) -> SystemAlertChanges:
    """What one check of the storage jobs changes: an alert for each failing job without an
    open one, and the open ones of jobs no longer failing resolved (a job gone from the
    server, its policy removed, is no longer failing either). A check that could not read
    the jobs (``health.error``) or never ran changes nothing: it knows nothing new."""
    if health.checked_at is None or health.error is not None:
        return SystemAlertChanges()
    failing = {storage_job_subject(v.job.job_id): v for v in health.failing}
    raise_ = tuple(
        SystemAlert(STORAGE_JOB_FAILING, subject, "warning", _detail(verdict))
        for subject, verdict in sorted(failing.items())
        if subject not in open_subjects
    )
    resolve = tuple(sorted(s for s in open_subjects if s not in failing))
    return SystemAlertChanges(raise_=raise_, resolve=resolve)


def apply_storage_job_alerts(conn: psycopg.Connection, health: StorageHealth) -> list[dict[str, Any]]:
    """Raise and resolve the storage jobs' alerts after a check, in the caller's transaction.
    Returns the alerts changed (to publish to the live feed)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT subject FROM alerts WHERE device_id IS NULL AND kind = %s AND status <> 'resolved'",
            (STORAGE_JOB_FAILING,),
        )
        changes = storage_job_changes(health, {r["subject"] for r in cur.fetchall()})
        changed: list[dict[str, Any]] = []
        if changes.resolve:
            cur.execute(
                "UPDATE alerts SET status = 'resolved', outcome = 'cleared', resolved_at = now(),"
                " resolved_by = 'system' WHERE device_id IS NULL AND kind = %s AND status <> 'resolved'"
                f" AND subject = ANY(%s) RETURNING {_COLUMNS}",
                (STORAGE_JOB_FAILING, list(changes.resolve)),
            )
            changed += cur.fetchall()
        for alert in changes.raise_:
            # Another process's check may have raised it since the read: the index keeps one.
            cur.execute(
                "INSERT INTO alerts (device_id, subject, kind, severity, detail) VALUES (NULL, %s, %s, %s, %s)"
                " ON CONFLICT (kind, subject) WHERE device_id IS NULL AND status <> 'resolved' DO NOTHING"
                f" RETURNING {_COLUMNS}",
                (alert.subject, alert.kind, alert.severity, alert.detail),
            )
            changed += cur.fetchall()
    return changed
