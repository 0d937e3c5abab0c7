"""Incidents: a place and an area (a circle, or a polygon checked by telemetry/geometry.py),
its grade, reference and commander, the units assigned to it and their state, and once
closed its outcome and the search over closed ones.

Functions over a connection in the caller's transaction; the caller re-evaluates the
incident alerts (:func:`telemetry.alerts.evaluate_incidents`) after a change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from telemetry.geometry import METRES_PER_DEGREE

__all__ = ["ClosedSearch", "NewIncident", "assign", "assign_armed_within", "close", "create",
           "get", "list_closed", "list_open", "unassign", "units"]

Row = dict[str, Any]
_COLUMNS = ("id, title, lat, lon, radius_m, borough, status, created_by, created_at, closed_at, grade, reference,"
            " commander, polygon, outcome, closed_by")


@dataclass(frozen=True)
class NewIncident:
    title: str
    lat: float
    lon: float
    radius_m: float  # a polygon's bounding circle
    borough: str | None
    grade: str = "standard"
    reference: str | None = None
    commander: str | None = None
    polygon: list[list[float]] | None = None  # a closed [lon, lat] ring, checked (telemetry/geometry.py)


def create(conn: psycopg.Connection, incident: NewIncident, *, by: str) -> Row:
    i = incident
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"INSERT INTO incidents (title, lat, lon, radius_m, borough, grade, reference, commander, polygon,"
                    f" created_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                    (i.title, i.lat, i.lon, i.radius_m, i.borough, i.grade, i.reference, i.commander,
                     None if i.polygon is None else Jsonb(i.polygon), by))
        row = cur.fetchone()
    assert row is not None
    return row


def _area(boroughs: frozenset[str] | None) -> tuple[str, dict[str, Any]]:
    if boroughs is None:
        return "true", {}
    return "borough = ANY(%(areas)s)", {"areas": sorted(boroughs)}


def list_open(conn: psycopg.Connection, *, boroughs: frozenset[str] | None, limit: int) -> list[Row]:
    where, params = _area(boroughs)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM incidents WHERE status = 'open' AND {where}"
                    " ORDER BY created_at DESC LIMIT %(limit)s", {**params, "limit": limit})
        return cur.fetchall()


@dataclass(frozen=True)
class ClosedSearch:
    """The closed incidents' search: closed within [start, end), of one borough, whose
    reference contains the text (any case); a page of ``limit`` from ``offset``, newest first."""

    start: datetime | None = None
    end: datetime | None = None
    borough: str | None = None
    reference: str | None = None
    limit: int = 50
    offset: int = 0


def list_closed(conn: psycopg.Connection, search: ClosedSearch, *, boroughs: frozenset[str] | None) -> list[Row]:
    where, params = _area(boroughs)
    clauses = ["status = 'closed'", where]
    if search.start is not None:
        clauses.append("closed_at >= %(start)s")
    if search.end is not None:
        clauses.append("closed_at < %(end)s")
    if search.borough is not None:
        clauses.append("borough = %(borough)s")
    if search.reference:
        clauses.append("lower(reference) LIKE %(reference)s")
    reference = search.reference or ""
    like = "%" + reference.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM incidents WHERE {' AND '.join(clauses)}"
                    " ORDER BY closed_at DESC, id DESC LIMIT %(limit)s OFFSET %(offset)s",
                    {**params, "start": search.start, "end": search.end, "borough": search.borough,
                     "reference": like, "limit": search.limit, "offset": search.offset})
        return cur.fetchall()


def get(conn: psycopg.Connection, incident_id: int, *, boroughs: frozenset[str] | None) -> Row | None:
    where, params = _area(boroughs)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM incidents WHERE id = %(id)s AND {where}", {**params, "id": incident_id})
        return cur.fetchone()


def units(conn: psycopg.Connection, incident_id: int) -> list[Row]:
    """Assigned units with position, battery and recording state; ``not_recording`` marks an
    assigned firearms unit whose report says it is not recording, ``no_report`` one that has
    reported no recording state at all (as the alert, which waits for that report, docs/api.md)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT d.device_id, d.callsign, d.officer, d.borough, d.role, l.ts, l.lat, l.lon, l.accuracy_m,"
            " l.last_fix_at, l.gps_fix, l.battery_pct, l.charging, l.recording, coalesce(l.online, false) AS online,"
            " u.assigned_at, u.assigned_by,"
            " (d.role = 'firearms' AND l.recording IS NOT NULL AND l.recording <> 'recording') AS not_recording,"
            " (d.role = 'firearms' AND l.recording IS NULL) AS no_report,"
            " EXISTS (SELECT 1 FROM incident_presence p WHERE p.incident_id = u.incident_id"
            "         AND p.device_id = u.device_id) AS inside_area"
            " FROM incident_units u JOIN devices d USING (device_id) LEFT JOIN device_latest l USING (device_id)"
            " WHERE u.incident_id = %s ORDER BY d.device_id", (incident_id,))
        return cur.fetchall()


def assign(conn: psycopg.Connection, incident_id: int, device_ids: list[str], *, by: str) -> list[str]:
    """Assign units; returns those newly assigned (one already assigned keeps its assignment)."""
    rows = conn.execute("INSERT INTO incident_units (incident_id, device_id, assigned_by)"
                        " SELECT %s, d, %s FROM unnest(%s::text[]) AS d ON CONFLICT DO NOTHING RETURNING device_id",
                        (incident_id, by, sorted(set(device_ids)))).fetchall()
    return sorted(str(r[0]) for r in rows)


def assign_armed_within(conn: psycopg.Connection, incident_id: int, within_m: float, *,
                        boroughs: frozenset[str] | None, by: str) -> list[str]:
    """Assign, in one statement, every unretired firearms unit of the caller's area whose latest
    fix is within ``within_m`` of the incident's centre (the same equirectangular distance as
    the geofence); returns those newly assigned."""
    area = "true" if boroughs is None else "d.borough = ANY(%(areas)s)"
    k = METRES_PER_DEGREE
    rows = conn.execute(
        "INSERT INTO incident_units (incident_id, device_id, assigned_by)"
        " SELECT i.id, d.device_id, %(by)s FROM incidents i JOIN device_latest l ON l.lat IS NOT NULL"
        " JOIN devices d USING (device_id)"
        f" WHERE i.id = %(id)s AND d.role = 'firearms' AND d.retired_at IS NULL AND {area}"
        f" AND sqrt(power((l.lat - i.lat) * {k}, 2) + power((l.lon - i.lon) * {k} * cos(radians(i.lat)), 2))"
        " <= %(within)s ORDER BY d.device_id ON CONFLICT DO NOTHING RETURNING device_id",
        {"id": incident_id, "by": by, "within": within_m, "areas": sorted(boroughs or ())}).fetchall()
    return sorted(str(r[0]) for r in rows)


def unassign(conn: psycopg.Connection, incident_id: int, device_id: str) -> bool:
    return conn.execute("DELETE FROM incident_units WHERE incident_id = %s AND device_id = %s",
                        (incident_id, device_id)).rowcount > 0


def close(conn: psycopg.Connection, incident_id: int, *, outcome: str, by: str) -> bool:
    """Close an open incident with its outcome; False if it was closed already."""
    return conn.execute("UPDATE incidents SET status = 'closed', closed_at = now(), outcome = %s, closed_by = %s"
                        " WHERE id = %s AND status = 'open'", (outcome, by, incident_id)).rowcount > 0
