"""An admin's custody acts: a camera given to an officer, or taken back, by hand (the API and
``watchfloor devices assign|unassign`` both act through here, so the act and its audit entry
cannot drift apart). The windows' rules are :mod:`telemetry.custody`'s; the caller commits."""

from __future__ import annotations

from datetime import datetime

import psycopg

from services import audit
from services.errors import Conflict, InvalidRequest
from telemetry import custody

__all__ = ["assign", "end_assignment"]

_REFUSED = {
    "stale": "a later custody window of this camera is on record: change history only forward in time",
    "duplicate": "the camera's custody is already so",
    "none": "nobody carries this camera now",
    "unknown_device": "no such device",
}


def _when(conn: psycopg.Connection, at: datetime | None) -> datetime:
    if at is None:
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]
    if at.tzinfo is None:
        raise InvalidRequest("at needs a UTC offset (RFC 3339)")
    return at


def assign(conn: psycopg.Connection, *, device_id: str, officer: str, callsign: str | None, at: datetime | None,
           actor: str) -> datetime:
    """``officer`` carries the camera from ``at`` (now if None), in the caller's transaction;
    audited as ``device_assigned``. Raises :class:`Conflict` if custody does not change (a
    later window is on record, or the officer already has it so). Returns the start."""
    start = _when(conn, at)
    officer = officer.strip()
    outcome = custody.open_assignment(conn, device_id=device_id, officer=officer, callsign=callsign, at=start,
                                      by=actor)
    if outcome != "opened":
        raise Conflict(f"{device_id} not assigned: {_REFUSED[outcome]}")
    audit.record(conn, actor=actor, action="device_assigned", device_id=device_id,
                 details={"officer": officer, "callsign": callsign, "from": start.isoformat()})
    return start


def end_assignment(conn: psycopg.Connection, *, device_id: str, at: datetime | None, actor: str) -> datetime:
    """Nobody carries the camera from ``at`` (now if None), in the caller's transaction;
    audited as ``device_unassigned`` with the officer whose window ended. Raises
    :class:`Conflict` if no window is open then. Returns the end."""
    end = _when(conn, at)
    current = conn.execute("SELECT officer FROM device_assignments WHERE device_id = %s AND valid_from < %s"
                           " AND (valid_to IS NULL OR valid_to > %s)", (device_id, end, end)).fetchone()
    outcome = custody.close_assignment(conn, device_id=device_id, at=end, by=actor)
    if outcome != "closed":
        raise Conflict(f"{device_id} not unassigned: {_REFUSED[outcome]}")
    audit.record(conn, actor=actor, action="device_unassigned", device_id=device_id,
                 details={"officer": current[0] if current else None, "to": end.isoformat()})
    return end
