"""Incidents: a place and an area, the units assigned to it, and their state.

Functions over a connection in the caller's transaction; the caller re-evaluates the
incident alerts (:func:`telemetry.alerts.evaluate_incidents`) after a change.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

__all__ = ["assign", "close", "create", "get", "list_open", "unassign", "units"]

Row = dict[str, Any]
_COLUMNS = "id, title, lat, lon, radius_m, borough, status, created_by, created_at, closed_at"


def create(conn: psycopg.Connection, *, title: str, lat: float, lon: float, radius_m: float,
           borough: str | None, by: str) -> Row:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"INSERT INTO incidents (title, lat, lon, radius_m, borough, created_by)"
                    f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                    (title, lat, lon, radius_m, borough, by))
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


def get(conn: psycopg.Connection, incident_id: int, *, boroughs: frozenset[str] | None) -> Row | None:
    where, params = _area(boroughs)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM incidents WHERE id = %(id)s AND {where}", {**params, "id": incident_id})
        return cur.fetchone()


def units(conn: psycopg.Connection, incident_id: int) -> list[Row]:
    """Assigned units with position, battery and recording state; ``not_recording`` marks an
    assigned firearms unit that is not recording."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT d.device_id, d.callsign, d.officer, d.borough, d.role, l.ts, l.lat, l.lon, l.accuracy_m,"
            " l.gps_fix, l.battery_pct, l.charging, l.recording, coalesce(l.online, false) AS online,"
            " u.assigned_at, u.assigned_by,"
            " (d.role = 'firearms' AND coalesce(l.recording, 'off') <> 'recording') AS not_recording,"
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


def unassign(conn: psycopg.Connection, incident_id: int, device_id: str) -> bool:
    return conn.execute("DELETE FROM incident_units WHERE incident_id = %s AND device_id = %s",
                        (incident_id, device_id)).rowcount > 0


def close(conn: psycopg.Connection, incident_id: int) -> bool:
    """Close an open incident; False if it was closed already."""
    return conn.execute("UPDATE incidents SET status = 'closed', closed_at = now() WHERE id = %s AND status = 'open'",
                        (incident_id,)).rowcount > 0
