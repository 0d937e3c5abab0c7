"""Retention of the tables that are not partitioned by day: rejected messages, resolved
alerts, and the live-view records (viewings, and consents and requests none refers to).

Partitioned history (telemetry, events) goes by whole days in :func:`telemetry.schema.
run_maintenance`; these tables are deleted from by age, each with its own period, by the
same callers (``watchfloor db maintain``, ingest hourly). Open things are never deleted: an
unresolved alert, a viewing still running, a consent in force, a pending request. The audit
log is not here: it is an append-only hash chain that Watchfloor never deletes from.

The live-view records are evidence of who watched whom: they are exported before they are
dropped, and not dropped at all without somewhere to export them to
(``WATCHFLOOR_VIEWINGS_ARCHIVE_DIR``). The rows are deleted with ``RETURNING``, written to a
file in the archive directory (JSON Lines, fsynced, then renamed into place) and only then
is the deletion committed: a failed write rolls it back, so nothing is dropped unexported.
A crash between the rename and the commit leaves rows exported that are still in the
database; the next run exports them again (an archive holds every row at least once).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg

from core.settings import Settings

__all__ = ["RecordRetention", "delete_expired", "record_retention"]


@dataclass(frozen=True)
class RecordRetention:
    rejected: timedelta
    alerts: timedelta
    viewings: timedelta
    viewings_archive: Path | None = None  # None: the viewing records are kept


def record_retention(settings: Settings) -> RecordRetention:
    return RecordRetention(rejected=timedelta(days=settings.rejected_retention_days),
                           alerts=timedelta(days=settings.alerts_retention_days),
                           viewings=timedelta(days=settings.viewings_retention_days),
                           viewings_archive=settings.viewings_archive_dir)


# In this order: a viewing refers to a consent, a consent to a request.
_DELETES = (
    ("rejected_messages", "rejected", "DELETE FROM rejected_messages WHERE received_at < %s"),
    ("alerts", "alerts", "DELETE FROM alerts WHERE status = 'resolved' AND resolved_at < %s"),
    ("viewing_sessions", "viewings", "DELETE FROM viewing_sessions WHERE ended_at < %s RETURNING *"),
    ("live_view_consents", "viewings",
     "DELETE FROM live_view_consents c WHERE c.ended_at < %s"
     " AND NOT EXISTS (SELECT 1 FROM viewing_sessions v WHERE v.consent_id = c.id) RETURNING *"),
    ("live_view_requests", "viewings",
     "DELETE FROM live_view_requests r WHERE r.status <> 'pending' AND r.created_at < %s"
     " AND NOT EXISTS (SELECT 1 FROM live_view_consents c WHERE c.request_id = r.id) RETURNING *"),
)


def delete_expired(conn: psycopg.Connection, *, retention: RecordRetention, now: datetime) -> dict[str, int]:
    """Delete what is older than its period; rows deleted per table. The live-view records go
    only with an archive directory, exported there first, in a transaction of their own (an
    export that fails raises and drops none of them; the other tables' deletions stand)."""
    deleted: dict[str, int] = {}
    with conn.transaction():
        for table, period, sql in _DELETES:
            if period != "viewings":
                deleted[table] = conn.execute(sql, (now - getattr(retention, period),)).rowcount
    archive = retention.viewings_archive
    if archive is None:
        return deleted | {table: 0 for table, period, _ in _DELETES if period == "viewings"}
    archived: list[tuple[str, dict[str, Any]]] = []
    with conn.transaction():
        for table, period, sql in _DELETES:
            if period == "viewings":
                cur = conn.execute(sql, (now - retention.viewings,))
                deleted[table] = cur.rowcount
                names = [column.name for column in cur.description or ()]
                archived += [(table, dict(zip(names, row, strict=True))) for row in cur.fetchall()]
        if archived:
            _export(archive, now, archived)
    return deleted


def _export(directory: Path, now: datetime, rows: list[tuple[str, dict[str, Any]]]) -> Path:
    """One file per run, ``viewings-<UTC time>-<pid>.jsonl``: a line per row,
    ``{"table": …, "row": {…}}``; durable before it is visible under its name."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"viewings-{now.strftime('%Y%m%dT%H%M%S%fZ')}-{os.getpid()}.jsonl"
    partial = path.with_suffix(".partial")
    with partial.open("wb") as out:
        for table, row in rows:
            out.write(orjson.dumps({"table": table, "row": row}, option=orjson.OPT_NAIVE_UTC) + b"\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
    return path
