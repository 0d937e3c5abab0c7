"""Retention of the tables that are not partitioned by day: rejected messages, resolved
alerts, and the live-view records (viewings, and consents and requests none refers to).

Partitioned history (telemetry, events) goes by whole days in :func:`telemetry.schema.
run_maintenance`; these tables are deleted from by age, each with its own period, by the
same callers (``watchfloor db maintain``, ingest hourly). Open things are never deleted: an
unresolved alert, a viewing still running, a consent in force, a pending request. The audit
log is not here: it is a hash chain with retention rules of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

from core.settings import Settings

__all__ = ["RecordRetention", "delete_expired", "record_retention"]


@dataclass(frozen=True)
class RecordRetention:
    rejected: timedelta
    alerts: timedelta
    viewings: timedelta


def record_retention(settings: Settings) -> RecordRetention:
    return RecordRetention(rejected=timedelta(days=settings.rejected_retention_days),
                           alerts=timedelta(days=settings.alerts_retention_days),
                           viewings=timedelta(days=settings.viewings_retention_days))


# In this order: a viewing refers to a consent, a consent to a request.
_DELETES = (
    ("rejected_messages", "rejected", "DELETE FROM rejected_messages WHERE received_at < %s"),
    ("alerts", "alerts", "DELETE FROM alerts WHERE status = 'resolved' AND resolved_at < %s"),
    ("viewing_sessions", "viewings", "DELETE FROM viewing_sessions WHERE ended_at < %s"),
    ("live_view_consents", "viewings",
     "DELETE FROM live_view_consents c WHERE c.ended_at < %s"
     " AND NOT EXISTS (SELECT 1 FROM viewing_sessions v WHERE v.consent_id = c.id)"),
    ("live_view_requests", "viewings",
     "DELETE FROM live_view_requests r WHERE r.status <> 'pending' AND r.created_at < %s"
     " AND NOT EXISTS (SELECT 1 FROM live_view_consents c WHERE c.request_id = r.id)"),
)


def delete_expired(conn: psycopg.Connection, *, retention: RecordRetention, now: datetime) -> dict[str, int]:
    """Delete what is older than its period, in one transaction; rows deleted per table."""
    deleted: dict[str, int] = {}
    with conn.transaction():
        for table, period, sql in _DELETES:
            deleted[table] = conn.execute(sql, (now - getattr(retention, period),)).rowcount
    return deleted
