"""Retention of the tables that are not partitioned by day, on the real database: old
rejected messages, resolved alerts and ended live-view records go (the live-view records
only after they are exported to the archive directory); what is recent or still open stays
(telemetry/retention.py, run by `watchfloor db maintain` and ingest hourly)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from tests.helpers.db import Database

OLD, RECENT = "now() - interval '40 days'", "now() - interval '1 day'"


def _seed(db: Database) -> None:
    with db.connect() as conn:
        conn.execute("INSERT INTO devices (device_id) VALUES ('we-1')")
        for at in (OLD, RECENT):
            conn.execute("INSERT INTO rejected_messages (received_at, topic, device_id, reason, detail, payload_bytes,"
                         f" payload) VALUES ({at}, 't', 'we-1', 'rate_limited', 'x', 0, '')")
        for kind, status, at in (("battery_low", "resolved", OLD), ("offline", "resolved", RECENT),
                                 ("storage_full", "open", OLD)):
            conn.execute("INSERT INTO alerts (device_id, kind, severity, status, detail, raised_at, resolved_at)"
                         f" VALUES ('we-1', %s, 'warning', %s, 'x', {at}, CASE WHEN %s = 'resolved' THEN {at} END)",
                         (kind, status, status))
        conn.execute("INSERT INTO live_view_requests (id, device_id, requested_by, reason, status, created_at,"
                     f" expires_at) VALUES ('old', 'we-1', 'op', 'why', 'accepted', {OLD}, {OLD})")
        consent = conn.execute("INSERT INTO live_view_consents (device_id, basis, request_id, granted_at, ended_at)"
                               f" VALUES ('we-1', 'accepted_request', 'old', {OLD}, {OLD}) RETURNING id").fetchone()
        assert consent is not None
        conn.execute("INSERT INTO viewing_sessions (session_id, device_id, viewer, role, consent_id, started_at,"
                     f" ended_at) VALUES ('s-old', 'we-1', 'op', 'operator', %s, {OLD}, {OLD})", (consent[0],))
        conn.execute("INSERT INTO viewing_sessions (session_id, device_id, viewer, role, started_at)"
                     f" VALUES ('s-open', 'we-1', 'op', 'operator', {OLD})")  # still running: kept


def _maintain(db: Database, archive: Path | None) -> subprocess.CompletedProcess[str]:
    """`watchfloor db maintain` with 30-day periods (and ``archive`` for the viewing records)."""
    env = {"WATCHFLOOR_DATABASE_URL": db.url, "WATCHFLOOR_REJECTED_RETENTION_DAYS": "30",
           "WATCHFLOOR_ALERTS_RETENTION_DAYS": "30", "WATCHFLOOR_VIEWINGS_RETENTION_DAYS": "30", "PATH": ""}
    if archive is not None:
        env["WATCHFLOOR_VIEWINGS_ARCHIVE_DIR"] = str(archive)
    return subprocess.run([sys.executable, "-m", "watchfloor", "db", "maintain"], env=env, capture_output=True,
                          text=True, timeout=120)


def _archived(archive: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(archive.glob("*.jsonl")) for line in path.read_text().splitlines()]


def test_db_maintain_deletes_old_records_and_keeps_recent_and_open_ones(pg: Database, tmp_path: Path) -> None:
    """With 30-day periods, `watchfloor db maintain` deletes the 40-day-old rejected message,
    resolved alert, ended viewing and its consent and request, the last three exported to the
    archive first (every column); the recent ones, the open alert and the running viewing stay."""
    _seed(pg)
    archive = tmp_path / "archive"
    done = _maintain(pg, archive)
    assert done.returncode == 0, done.stderr
    assert "rejected_messages 1" in done.stdout and "viewing_sessions 1" in done.stdout
    assert "storage job" not in done.stdout  # plain PostgreSQL: its own retention, no jobs to check
    exported = {(r["table"], r["row"].get("session_id") or r["row"]["id"]) for r in _archived(archive)}
    consent_id = next(r["row"]["id"] for r in _archived(archive) if r["table"] == "live_view_consents")
    assert exported == {("viewing_sessions", "s-old"), ("live_view_consents", consent_id),
                        ("live_view_requests", "old")}
    (session,) = [r["row"] for r in _archived(archive) if r["table"] == "viewing_sessions"]
    assert session["viewer"] == "op" and session["consent_id"] == consent_id and session["ended_at"]
    assert not list(archive.glob("*.partial"))
    cutoff = datetime.now(timezone.utc) - timedelta(days=30)
    assert pg.scalar("SELECT count(*) FROM rejected_messages") == 1
    assert pg.scalar("SELECT count(*) FROM rejected_messages WHERE received_at < %s", (cutoff,)) == 0
    assert pg.scalar("SELECT array_agg(kind ORDER BY kind) FROM alerts") == ["offline", "storage_full"]
    assert pg.scalar("SELECT array_agg(session_id) FROM viewing_sessions") == ["s-open"]
    assert pg.scalar("SELECT count(*) FROM live_view_consents") == 0
    assert pg.scalar("SELECT count(*) FROM live_view_requests") == 0


def test_viewing_records_are_never_dropped_unexported(pg: Database, tmp_path: Path) -> None:
    """Without an archive directory the old viewing records are kept (the other tables' old
    rows go); with one that cannot be written, the run fails and drops none of them."""
    _seed(pg)
    done = _maintain(pg, None)
    assert done.returncode == 0, done.stderr
    assert "viewing_sessions 0" in done.stdout and "rejected_messages 1" in done.stdout
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    failed = _maintain(pg, blocked)
    assert failed.returncode != 0
    assert pg.scalar("SELECT array_agg(session_id ORDER BY session_id) FROM viewing_sessions") == ["s-old", "s-open"]
    assert pg.scalar("SELECT count(*) FROM live_view_consents") == 1
    assert pg.scalar("SELECT count(*) FROM live_view_requests") == 1
