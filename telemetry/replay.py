"""Replay reads: every unit in an area over a time window, as time slices, and the timeline
beside it (alerts, events, viewing sessions), each attributed to the officer who carried the
camera then (:func:`telemetry.custody.attribution_join`).

An area is a bounding box of positions (a unit is in it while its fixes are), a set of
boroughs (the units registered there), or both. A replay's frames are read one page of slices
per query for all units together, never a query per unit: on plain PostgreSQL a ``DISTINCT
ON`` over the window's fixes (the ``(device_id, ts, seq)`` key gives each unit's fixes in
order), on TimescaleDB ``time_bucket`` with ``last()`` (a hash aggregate over the chunk, no
sort). The continuous aggregate ``device_health_hourly`` holds battery and storage by hour,
not positions, so a replay has no use for it. Nothing here commits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from telemetry.custody import attribution_join
from telemetry.geometry import METRES_PER_DEGREE

__all__ = ["TIMELINE_EVENTS", "Area", "alerts", "bbox_around", "fixes", "frames", "timeline", "units_in", "windows"]

Row = dict[str, Any]
#: The device events a replay's timeline shows (docking too: it changes who carries the camera).
TIMELINE_EVENTS = ("recording_started", "recording_stopped", "emergency", "emergency_cleared", "docked", "undocked")


@dataclass(frozen=True)
class Area:
    """Where a replay looks. ``bbox``: (south, west, north, east) in degrees, or None for
    anywhere; ``boroughs``: the units registered there (None: any). The caller narrows
    ``boroughs`` to the reader's own areas before asking."""

    bbox: tuple[float, float, float, float] | None
    boroughs: frozenset[str] | None

    def params(self) -> dict[str, Any]:
        south, west, north, east = self.bbox if self.bbox is not None else (None, None, None, None)
        return {"south": south, "west": west, "north": north, "east": east,
                "areas": None if self.boroughs is None else sorted(self.boroughs)}


# The fixes in the area and window; ``t`` is telemetry, ``d`` the unit's registry row.
_IN_AREA = (" FROM telemetry t JOIN devices d ON d.device_id = t.device_id"
            " WHERE t.ts >= %(start)s AND t.ts < %(end)s AND t.lat IS NOT NULL"
            " AND (%(south)s::float8 IS NULL OR (t.lat BETWEEN %(south)s AND %(north)s"
            "      AND t.lon BETWEEN %(west)s AND %(east)s))"
            " AND (%(areas)s::text[] IS NULL OR d.borough = ANY(%(areas)s))")


def bbox_around(lat: float, lon: float, radius_m: float) -> tuple[float, float, float, float]:
    """The (south, west, north, east) box around a circle (an incident's bounding circle)."""
    dlat = radius_m / METRES_PER_DEGREE
    dlon = radius_m / (METRES_PER_DEGREE * max(0.01, math.cos(math.radians(lat))))
    return lat - dlat, lon - dlon, lat + dlat, lon + dlon


def frames(conn: psycopg.Connection, area: Area, *, start: datetime, end: datetime, step_s: float,
           timescaledb: bool) -> list[Row]:
    """Each unit's latest fix in each ``step_s`` slice of ``[start, end)`` while in ``area``,
    in one query: rows of ``k`` (the slice, from 0), ``device_id``, ``ts``, ``lat``, ``lon``,
    ``heading_deg``, ``recording``, the unit's ``role``, ``borough`` and registry ``callsign``,
    and the ``officer`` and ``officer_callsign`` carrying it then; by slice, then unit."""
    params = {**area.params(), "start": start, "end": end, "step": step_s}
    if timescaledb:
        # time_bucket from the window's start (its origin), and last() per bucket: TimescaleDB
        # aggregates each chunk by hash instead of sorting the window's fixes.
        latest = ("SELECT t.device_id, (extract(epoch FROM time_bucket(make_interval(secs => %(step)s), t.ts,"
                  " origin => %(start)s::timestamptz) - %(start)s::timestamptz) / %(step)s)::int AS k, max(t.ts) AS ts,"
                  " last(t.lat, t.ts) AS lat, last(t.lon, t.ts) AS lon, last(t.heading_deg, t.ts) AS heading_deg,"
                  " last(t.recording, t.ts) AS recording, min(d.role) AS role, min(d.borough) AS borough,"
                  f" min(d.callsign) AS callsign{_IN_AREA} GROUP BY t.device_id, 2")
    else:
        latest = ("SELECT DISTINCT ON (t.device_id, 2) t.device_id,"
                  " floor(extract(epoch FROM t.ts - %(start)s::timestamptz) / %(step)s)::int AS k, t.ts,"
                  " t.lat, t.lon, t.heading_deg, t.recording, d.role, d.borough, d.callsign"
                  f"{_IN_AREA} ORDER BY t.device_id, 2, t.ts DESC")
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT f.*, a.officer, a.callsign AS officer_callsign FROM ({latest}) f"
                    f"{attribution_join(device='f.device_id', at='f.ts')} ORDER BY f.k, f.device_id", params)
        return cur.fetchall()


def units_in(conn: psycopg.Connection, area: Area, *, start: datetime, end: datetime,
             also: list[str] | None = None) -> list[Row]:
    """The units with a fix in ``area`` during ``[start, end)``, and ``also`` (an incident's
    assigned units, wherever they were) if registered in ``area.boroughs``: device, callsign,
    borough, role; by device."""
    params = {**area.params(), "start": start, "end": end, "also": also or []}
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT d.device_id, d.callsign, d.borough, d.role FROM devices d"
                    f" WHERE d.device_id IN (SELECT DISTINCT t.device_id{_IN_AREA})"
                    " OR (d.device_id = ANY(%(also)s)"
                    "     AND (%(areas)s::text[] IS NULL OR d.borough = ANY(%(areas)s)))"
                    " ORDER BY d.device_id", params)
        return cur.fetchall()


def timeline(conn: psycopg.Connection, device_ids: list[str], *, start: datetime, end: datetime,
             limit: int) -> list[Row]:
    """What happened to these units in ``[start, end)``, oldest first, at most ``limit``:
    alerts raised (with their state now), the events of :data:`TIMELINE_EVENTS`, and viewing
    sessions started (or refused). Rows: ``at``, ``kind`` (alert | event | viewing),
    ``device_id``, ``what`` (the alert's kind, the event's type, the viewer), ``detail``,
    ``ref`` (the alert's or the viewing's id), ``officer``, ``callsign``."""
    alert = attribution_join(device="x.device_id", at="x.raised_at", alias="aa")
    event = attribution_join(device="e.device_id", at="e.ts", alias="ae", closing="e.type = 'docked'")
    viewing = attribution_join(device="v.device_id", at="v.started_at", alias="av")
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM ("
            " SELECT x.raised_at AS at, 'alert' AS kind, x.device_id, x.kind AS what,"
            "  x.severity || ' ' || x.status || ': ' || x.detail AS detail, x.id AS ref, aa.officer, aa.callsign"
            f" FROM alerts x{alert} WHERE x.device_id = ANY(%(ids)s) AND x.raised_at >= %(start)s"
            "  AND x.raised_at < %(end)s"
            " UNION ALL SELECT e.ts, 'event', e.device_id, e.type, e.details::text, NULL, ae.officer, ae.callsign"
            f" FROM device_events e{event} WHERE e.device_id = ANY(%(ids)s) AND e.ts >= %(start)s"
            "  AND e.ts < %(end)s AND e.type = ANY(%(types)s)"
            " UNION ALL SELECT v.started_at, 'viewing', v.device_id, v.viewer,"
            "  coalesce('refused: ' || v.refused, v.reason), v.id, av.officer, av.callsign"
            f" FROM viewing_sessions v{viewing} WHERE v.device_id = ANY(%(ids)s) AND v.started_at >= %(start)s"
            "  AND v.started_at < %(end)s"
            ") x ORDER BY at, kind, device_id LIMIT %(limit)s",
            {"ids": device_ids, "start": start, "end": end, "types": list(TIMELINE_EVENTS), "limit": limit})
        return cur.fetchall()


def fixes(conn: psycopg.Connection, device_ids: list[str], *, start: datetime, end: datetime,
          limit: int) -> list[Row]:
    """Every fix of these units in ``[start, end)`` (not simplified: a disclosure carries the
    record as stored), each with the officer carrying the camera then; by unit, then time."""
    join = attribution_join(device="t.device_id", at="t.ts")
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT t.device_id, t.ts, t.lat, t.lon, t.accuracy_m, t.speed_mps, t.heading_deg, t.recording,"
                    f" a.officer, a.callsign FROM telemetry t{join} WHERE t.device_id = ANY(%s) AND t.ts >= %s"
                    " AND t.ts < %s AND t.lat IS NOT NULL ORDER BY t.device_id, t.ts LIMIT %s",
                    (device_ids, start, end, limit))
        return cur.fetchall()


def windows(conn: psycopg.Connection, device_ids: list[str], *, start: datetime, end: datetime) -> list[Row]:
    """The custody windows of these units that overlap ``[start, end)``: by unit, then time."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT device_id, officer, callsign, valid_from, valid_to, opened_by, closed_by"
                    " FROM device_assignments WHERE device_id = ANY(%s) AND valid_from < %s"
                    " AND (valid_to IS NULL OR valid_to > %s) ORDER BY device_id, valid_from",
                    (device_ids, end, start))
        return cur.fetchall()


def alerts(conn: psycopg.Connection, device_ids: list[str], *, start: datetime, end: datetime) -> list[Row]:
    """The alerts raised on these units in ``[start, end)`` with their handling (the row and
    its ``alert_history`` rows, as ``history``), each with the officer carrying the camera
    when it was raised; oldest first."""
    join = attribution_join(device="x.device_id", at="x.raised_at")
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT x.id, x.device_id, x.kind, x.severity, x.status, x.detail, x.raised_at,"
                    " x.acknowledged_at, x.acknowledged_by, x.resolved_at, x.resolved_by, x.outcome, x.note,"
                    " a.officer, a.callsign, coalesce((SELECT json_agg(json_build_object('at', h.at,"
                    "  'action', h.action, 'actor', h.actor, 'detail', h.detail) ORDER BY h.at, h.id)"
                    "  FROM alert_history h WHERE h.alert_id = x.id), '[]') AS history"
                    f" FROM alerts x{join} WHERE x.device_id = ANY(%s) AND x.raised_at >= %s AND x.raised_at < %s"
                    " ORDER BY x.raised_at, x.id", (device_ids, start, end))
        return cur.fetchall()
