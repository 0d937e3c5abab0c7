"""Alert rules: raised from the telemetry and event stream, inside ingest's transaction.

Every rule is set-based SQL over the devices of one batch, and the database enforces one
open alert per device and kind (a partial unique index), so several ingest workers can
evaluate the same device at once without a storm of duplicates. An alert whose condition
clears is resolved by the system (outcome ``cleared``), with the time recorded.

What each kind does for a unit (a severity, activity only, or nothing) is the force's alert
policy (:mod:`telemetry.alert_policy`), decided in Python per unit from its role and whether
it is assigned to an open incident; the SQL here only finds the units and writes the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.rows import dict_row

from core.contract import EventType
from core.reports import EventReport, TelemetryReport
from telemetry.alert_policy import SEVERITIES, AlertPolicy, Outcome
from telemetry.custody import officer_at
from telemetry.escalation import ESCALATED_TO, ESCALATING_SEVERITIES, EscalationRules, escalation_due
from telemetry.geometry import Polygon, circle_depth_m, parse_ring
from telemetry.offline import QuietUnit, offline_due
from telemetry.store import Batch

__all__ = ["STATE_RULES", "AlertRules", "Geofence", "evaluate_batch", "evaluate_incidents", "may_raise",
           "sweep_escalations", "sweep_offline"]

_COLUMNS = ("id", "device_id", "kind", "severity", "status", "detail", "raised_at", "acknowledged_at",
            "acknowledged_by", "resolved_at", "resolved_by", "outcome", "note", "escalated_at", "escalation_level")
# With the officer who carried the camera when the alert was raised, as the REST list has it.
_RETURNING = ("RETURNING " + ", ".join(_COLUMNS) + ", "
              + officer_at(device="alerts.device_id", at="alerts.raised_at") + " AS officer")
_RETURNING_A = ("RETURNING " + ", ".join(f"a.{c}" for c in _COLUMNS) + ", "
                + officer_at(device="a.device_id", at="a.raised_at") + " AS officer")


@dataclass(frozen=True)
class Geofence:
    """Against flapping on an incident's boundary: a unit enters when every accurate fix for
    ``dwell_s`` (by the fixes' own times) puts it more than ``margin_m`` inside the area (a
    circle or a polygon), and leaves when every one for as long puts it more than ``margin_m``
    outside; a fix less accurate than the margin says nothing either way. Leaving the incident's borough, or the
    incident closing, is a leave at once."""

    margin_m: float = 25.0
    dwell_s: float = 15.0


@dataclass(frozen=True)
class AlertRules:
    battery_warn_pct: float = 20.0
    battery_critical_pct: float = 10.0
    storage_warn_pct: float = 90.0
    gps_lost_after_s: int = 120
    # A unit's offline timeout when the policy's rule for its role gives none (telemetry/offline.py).
    offline_after_s: float = 120.0
    escalation: EscalationRules = field(default_factory=EscalationRules)
    geofence: Geofence = field(default_factory=Geofence)

    def params(self) -> dict[str, Any]:
        return {"battery_warn": self.battery_warn_pct, "battery_critical": self.battery_critical_pct,
                "storage_warn": self.storage_warn_pct, "gps_lost_s": self.gps_lost_after_s}


@dataclass(frozen=True)
class _StateRule:
    """Raised while ``raise_when`` holds for a device's latest state, cleared by ``clear_when``.
    ``raise_when`` is SQL over ``l`` (device_latest) and ``d`` (devices), ``clear_when`` over
    ``l`` alone (one statement clears every kind: ``_CLEAR_STATES``); a little hysteresis keeps a
    value on the threshold from flapping. ``candidate`` is the same test in Python on a
    report of the batch, so the raising statement only runs for devices that may need it
    (the clearing one only meets open alerts, through the partial index). The severity is
    the policy's (:mod:`telemetry.alert_policy`), decided per unit."""

    kind: str
    raise_when: str
    clear_when: str
    detail: str  # SQL expression
    candidate: Callable[[TelemetryReport, AlertRules], bool]


STATE_RULES: Sequence[_StateRule] = (
    _StateRule("battery_critical",
               "l.battery_pct < %(battery_critical)s AND NOT l.charging",
               "l.battery_pct >= %(battery_critical)s + 2 OR l.charging",
               "'battery at ' || round(l.battery_pct)::text || ' per cent'",
               lambda t, r: t.battery.pct < r.battery_critical_pct),
    _StateRule("battery_low",
               "l.battery_pct < %(battery_warn)s AND NOT l.charging",
               "l.battery_pct >= %(battery_warn)s + 2 OR l.charging",
               "'battery at ' || round(l.battery_pct)::text || ' per cent'",
               lambda t, r: t.battery.pct < r.battery_warn_pct),
    _StateRule("storage_full",
               "l.storage_pct >= %(storage_warn)s",
               "l.storage_pct < %(storage_warn)s - 2",
               "'storage ' || round(l.storage_pct)::text || ' per cent used'",
               lambda t, r: (t.storage_pct or 0) >= r.storage_warn_pct),
    _StateRule("gps_lost",
               "NOT l.gps_fix AND (l.last_fix_at IS NULL"
               " OR l.ts - l.last_fix_at > make_interval(secs => %(gps_lost_s)s))",
               "l.gps_fix",
               "'no GPS fix since ' || coalesce(to_char(l.last_fix_at AT TIME ZONE 'UTC', 'HH24:MI:SS') || ' UTC',"
               " 'start of shift')",
               lambda t, r: t.gps is None),
)
# Offline is raised by the sweep alone (telemetry/offline.py), and cleared by a report received
# after it was raised, or by the unit saying it is docked or its officer off duty.
_CLEAR_OFFLINE_WHEN = "(l.online AND l.received_at >= a.raised_at) OR l.docked OR l.on_duty IS FALSE"


def _id_text(device_ids: Sequence[str]) -> str:
    """``device_ids`` as one text for ``string_to_array(%(ids)s, ',')``: psycopg adapts a list
    of 200 ids item by item, at about 0.13 ms of CPU per statement (most of what the alert
    rules cost ingest, which runs several per batch); one string costs next to nothing.
    Exact for the contract's device ids (``[A-Za-z0-9_-]``, checked by decode and the API);
    refuses one with a comma, which would split in two."""
    text = ",".join(device_ids)
    if device_ids and text.count(",") != len(device_ids) - 1:
        raise ValueError("a device id holds a comma")
    return text


#: The devices of ``%(ids)s`` (see :func:`_id_text`), as an array.
_IDS = "string_to_array(%(ids)s, ',')"

# Every state kind's clearing in one statement, each kind by its own condition (they read only
# ``l``), and in the same round trip whether any incident is open, the incident rules' first
# question: a batch's devices rarely have an open alert, and a statement per kind plus one for
# the incidents cost the client most of what the alert engine cost per batch (a round trip and
# its parameters each). One row at least: the answer, beside each alert cleared (or none).
_CLEAR_STATES = (
    "WITH cleared AS (UPDATE alerts a SET status = 'resolved', outcome = 'cleared', resolved_at = now(),"
    " resolved_by = 'system' FROM device_latest l"
    f" WHERE a.device_id = l.device_id AND a.status <> 'resolved' AND a.device_id = ANY({_IDS}) AND CASE a.kind"
    f" WHEN 'offline' THEN ({_CLEAR_OFFLINE_WHEN})"
    + "".join(f" WHEN '{rule.kind}' THEN ({rule.clear_when})" for rule in STATE_RULES)
    + f" ELSE false END {_RETURNING_A})"
    " SELECT o.incidents_open, c.* FROM (SELECT EXISTS (SELECT 1 FROM incidents WHERE status = 'open')"
    " AS incidents_open) o LEFT JOIN cleared c ON true")

# What the policy needs to know of a unit (SQL over ``d``, devices): its role, and whether it
# is assigned to an open incident.
_PROFILE = ("d.role, EXISTS (SELECT 1 FROM incident_units u JOIN incidents i ON i.id = u.incident_id"
            " WHERE u.device_id = d.device_id AND i.status = 'open') AS assigned")


def _raise(cur: psycopg.Cursor[dict[str, Any]], kind: str, found: list[dict[str, Any]], policy: AlertPolicy,
           at: datetime | None = None) -> list[dict[str, Any]]:
    """Raise ``kind`` for the units ``found`` (rows of device_id, role, assigned, detail) as the
    policy decides for each: an open alert with its severity, a record of activity, or
    nothing. Returns the alerts raised (activity is not raised, so not returned)."""
    raised: dict[str, list[Any]] = {"ids": [], "severities": [], "details": []}
    activity: dict[str, list[Any]] = {"ids": [], "details": []}
    for row in found:
        outcome = policy.decide(kind, role=row["role"], assigned=row["assigned"])
        if outcome in SEVERITIES:
            raised["ids"].append(row["device_id"])
            raised["severities"].append(outcome.value)
            raised["details"].append(row["detail"])
        elif outcome is Outcome.ACTIVITY:
            activity["ids"].append(row["device_id"])
            activity["details"].append(row["detail"])
    if activity["ids"]:
        # Resolved as it is written; the same moment redelivered is not recorded twice. Its
        # severity means nothing (nothing is raised): info, the lowest the table knows.
        cur.execute(
            "INSERT INTO alerts (device_id, kind, severity, status, detail, raised_at, resolved_at, resolved_by,"
            " outcome) SELECT p.device_id, %(kind)s, 'info', 'resolved', p.detail, %(at)s::timestamptz,"
            " %(at)s::timestamptz, 'policy', 'activity'"
            " FROM unnest(%(ids)s::text[], %(details)s::text[]) AS p(device_id, detail)"
            " WHERE NOT EXISTS (SELECT 1 FROM alerts a WHERE a.device_id = p.device_id AND a.kind = %(kind)s"
            " AND a.raised_at = %(at)s::timestamptz AND a.outcome = 'activity')",
            {**activity, "kind": kind, "at": at or datetime.now(timezone.utc)})
    if not raised["ids"]:
        return []
    cur.execute(
        "INSERT INTO alerts (device_id, kind, severity, detail, raised_at)"
        " SELECT p.device_id, %(kind)s, p.severity, p.detail, coalesce(%(at)s::timestamptz, now())"
        " FROM unnest(%(ids)s::text[], %(severities)s::text[], %(details)s::text[]) AS p(device_id, severity, detail)"
        f" ORDER BY p.device_id ON CONFLICT (device_id, kind) WHERE status <> 'resolved' DO NOTHING {_RETURNING}",
        {**raised, "kind": kind, "at": at})
    return cur.fetchall()


def may_raise(reports: list[tuple[str, datetime, TelemetryReport]],
              rules: AlertRules) -> list[tuple[str, TelemetryReport]]:
    """The reports that some state rule's ``candidate`` accepts, or a few more (a superset:
    tests/test_alerts.py checks it), found in one pass without a call per report. Most
    reports call for no alert, and testing each against every rule in turn cost as much as
    the rest of the rules' work on a batch."""
    low_battery = max(rules.battery_warn_pct, rules.battery_critical_pct)
    return [(d, t) for d, _, t in reports
            if t.battery.pct < low_battery or t.gps is None or (t.storage_pct or 0) >= rules.storage_warn_pct]


def _apply_state_rules(conn: psycopg.Connection, device_ids: list[str],
                       reports: list[tuple[str, datetime, TelemetryReport]], rules: AlertRules,
                       policy: AlertPolicy) -> tuple[list[dict[str, Any]], bool]:
    """Clear the state alerts of ``device_ids`` whose condition has cleared, then raise those
    that ``reports`` may call for; returns the alerts changed, and whether any incident is
    open. A batch that changes nothing runs one statement."""
    base = rules.params()
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_CLEAR_STATES, {**base, "ids": _id_text(device_ids)})
        rows = cur.fetchall()
        incidents_open = bool(rows[0]["incidents_open"])
        cleared: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            if row["id"] is not None:  # None: the answer's row when nothing was cleared
                del row["incidents_open"]
                cleared.setdefault(row["kind"], []).append(row)
        # The order of one statement per kind: offline, then each rule's cleared and raised.
        changes = cleared.get("offline", [])
        screened = may_raise(reports, rules)
        for rule in STATE_RULES:
            changes += cleared.get(rule.kind, [])
            candidates = sorted({d for d, report in screened if rule.candidate(report, rules)})
            if not candidates:
                continue
            cur.execute(
                f"SELECT l.device_id, {_PROFILE}, {rule.detail} AS detail"
                f" FROM device_latest l JOIN devices d USING (device_id)"
                f" WHERE l.device_id = ANY({_IDS}) AND ({rule.raise_when}) AND NOT EXISTS (SELECT 1 FROM alerts a"
                f" WHERE a.device_id = l.device_id AND a.kind = '{rule.kind}' AND a.status <> 'resolved')",
                {**base, "ids": _id_text(candidates)})
            changes += _raise(cur, rule.kind, cur.fetchall(), policy)
    return changes, incidents_open


_EVENT_ALERTS: dict[EventType, tuple[str, str]] = {
    # event: (kind, detail)
    EventType.EMERGENCY: ("emergency", "emergency button pressed"),
    EventType.RECORDING_STARTED: ("recording", "recording started"),
    EventType.WATCH_ME: ("watch_me", "officer asks to be watched live"),
}
_EVENT_CLEARS: dict[EventType, str] = {
    EventType.EMERGENCY_CLEARED: "emergency",
    EventType.RECORDING_STOPPED: "recording",
}


def _apply_event(cur: psycopg.Cursor[dict[str, Any]], device_id: str, event: EventReport,
                 policy: AlertPolicy) -> list[dict[str, Any]]:
    if event.type in _EVENT_ALERTS:
        kind, detail = _EVENT_ALERTS[event.type]
        trigger = (event.details or {}).get("trigger")
        if trigger is not None:
            detail = f"{detail} ({trigger})"
        cur.execute(f"SELECT d.device_id, {_PROFILE}, %s::text AS detail FROM devices d WHERE d.device_id = %s",
                    (detail, device_id))
        return _raise(cur, kind, cur.fetchall(), policy, at=event.ts)
    if event.type in _EVENT_CLEARS:
        cur.execute(
            "UPDATE alerts SET status = 'resolved', outcome = 'cleared', resolved_at = %s, resolved_by = 'system'"
            f" WHERE device_id = %s AND kind = %s AND status <> 'resolved' {_RETURNING}",
            (event.ts, device_id, _EVENT_CLEARS[event.type]))
        return cur.fetchall()
    return []


def evaluate_batch(conn: psycopg.Connection, batch: Batch, rules: AlertRules,
                   policy: AlertPolicy) -> list[dict[str, Any]]:
    """Raise and clear alerts for what one batch changed, as ``policy`` says; returns the
    alerts changed (raised or cleared: activity is recorded, not returned)."""
    changes: list[dict[str, Any]] = []
    with conn.cursor(row_factory=dict_row) as cur:
        for device_id, _, event in sorted(batch.events, key=lambda e: (e[2].ts, e[2].seq)):
            changes += _apply_event(cur, device_id, event, policy)
    # In no order: the statements only ask whether a unit is among them, and sorting a batch's
    # ids cost more than the rest of the Python the rules spend on a batch that changes nothing.
    device_ids = list({device_id for device_id, _, _ in batch.telemetry}
                      | {device_id for device_id, _, _ in batch.statuses})
    if device_ids:
        state_changes, incidents_open = _apply_state_rules(conn, device_ids, batch.telemetry, rules, policy)
        changes += state_changes
        if incidents_open:
            changes += _apply_incident_rules(conn, device_ids, policy, rules.geofence)
    return changes


# Metres between a unit and an incident's centre: equirectangular, fine at a city's scale
# (the same approximation as telemetry/geometry.py, which measures polygons).
_DISTANCE_M = ("sqrt(power((l.lat - i.lat) * 111320.0, 2)"
               " + power((l.lon - i.lon) * 111320.0 * cos(radians(i.lat)), 2))")

# Whose units an incident's geofence alerts: those of its borough (the creator's area), or
# every borough's for an incident without one, which only an all-areas caller can create;
# and the units assigned to it from elsewhere (mutual aid), whose commander must see them arrive.
_IN_INCIDENT_AREA = ("(i.borough IS NULL OR d.borough = i.borough OR EXISTS (SELECT 1 FROM incident_units u"
                     " WHERE u.incident_id = i.id AND u.device_id = d.device_id))")


@lru_cache(maxsize=64)
def _parsed(ring: tuple[tuple[float, ...], ...]) -> Polygon:
    """An open incident's ring, parsed once: its checks (every pair of edges) cost more than
    the depths of a batch's units near it, and its ring does not change while it is open."""
    return parse_ring(ring)


def _polygon_depths(cur: psycopg.Cursor[dict[str, Any]], scope: str,
                    params: dict[str, Any]) -> dict[str, str]:
    """Each unit in scope's signed depth (metres, positive inside) in each open polygon
    incident, computed in Python (telemetry/geometry.py) and handed back to the SQL as arrays
    (exact within the margin of the polygon's bounding circle, an upper bound under minus
    the margin beyond it); a circle's depth stays in SQL. Nothing is read when no open
    incident is a polygon. The arrays go as comma-joined texts, as the device ids do
    (:func:`_id_text`): two statements read them, and a list is adapted item by item."""
    cur.execute("SELECT id, polygon FROM incidents WHERE status = 'open' AND polygon IS NOT NULL")
    polygons = [(r["id"], _parsed(tuple(map(tuple, r["polygon"])))) for r in cur.fetchall()]
    incident_ids: list[int] = []
    device_ids: list[str] = []
    depths: list[float] = []
    if not polygons:
        return {"p_incident": "", "p_device": "", "p_depth": ""}
    cur.execute(f"SELECT l.device_id, l.lat, l.lon FROM device_latest l WHERE {scope} AND l.lat IS NOT NULL"
                " AND l.lon IS NOT NULL", params)
    margin = params["margin"]
    for unit in cur.fetchall():
        for incident_id, polygon in polygons:
            # The SQL only compares a depth with the margin, either way. A unit further than
            # the margin beyond the polygon's bounding circle is clearly outside whatever its
            # exact depth, so the circle's depth (never below the polygon's) stands for it:
            # most of a fleet is far from any incident, and the exact depth of every unit of
            # every batch cost ingest more than the rest of its work while one was open.
            depth = circle_depth_m(polygon.centre_lat, polygon.centre_lon, polygon.bounding_radius_m,
                                   unit["lat"], unit["lon"])
            if depth >= -margin:
                depth = polygon.depth_m(unit["lat"], unit["lon"])
            incident_ids.append(incident_id)
            device_ids.append(unit["device_id"])
            depths.append(depth)
    # repr() is a float's exact text, which PostgreSQL reads back to the same float8.
    return {"p_incident": ",".join(map(str, incident_ids)), "p_device": _id_text(device_ids),
            "p_depth": ",".join(map(repr, depths))}


def evaluate_incidents(conn: psycopg.Connection, device_ids: list[str] | None,
                       policy: AlertPolicy, geofence: Geofence) -> list[dict[str, Any]]:
    """Geofence (a unit entering or leaving an open incident's area, a circle or a polygon,
    with ``geofence``'s margin and dwell) and assigned firearms units that are not recording.
    ``device_ids`` None: every unit (after an assignment or a closing)."""
    if device_ids is not None:  # nothing to do for some units without an open incident
        row = conn.execute("SELECT EXISTS (SELECT 1 FROM incidents WHERE status = 'open')").fetchone()
        if not row or not row[0]:
            return []
    return _apply_incident_rules(conn, device_ids, policy, geofence)


# The units an incident rule may change anything for: near an open incident's area (within its
# circle, a polygon's bounding one, and the margin: a unit further out is clearly outside, and
# only a unit already present or crossing acts on that), or present in or crossing into or out
# of one, or assigned to an open one, or with an open alert of an incident kind to clear.
# Everything it reads is the database's, in the batch's transaction, as the rules' own
# statements read it: a unit another worker's batch made due is found here just the same.
_CONCERNED = (
    "SELECT * FROM (SELECT l.device_id,"
    " EXISTS (SELECT 1 FROM incidents i WHERE i.status = 'open' AND l.lat IS NOT NULL AND l.lon IS NOT NULL"
    "  AND " + _DISTANCE_M + " <= i.radius_m + %(margin)s + 1) AS near,"  # +1 m: float rounding, against geometry.py
    " EXISTS (SELECT 1 FROM incident_presence p WHERE p.device_id = l.device_id) AS present,"
    " EXISTS (SELECT 1 FROM geofence_pending g WHERE g.device_id = l.device_id) AS crossing,"
    " EXISTS (SELECT 1 FROM incident_units u JOIN incidents i ON i.id = u.incident_id"
    "  WHERE u.device_id = l.device_id AND i.status = 'open') AS assigned,"
    " EXISTS (SELECT 1 FROM alerts a WHERE a.device_id = l.device_id AND a.status <> 'resolved'"
    "  AND a.kind IN ('geofence', 'assigned_not_recording')) AS alerted"
    " FROM device_latest l WHERE l.device_id = ANY(" + _IDS + ")) c"
    " WHERE near OR present OR crossing OR assigned OR alerted ORDER BY device_id")


@dataclass(frozen=True)
class _Concern:
    """The units in scope of the incident rules (None: every unit), and whether any of them
    is near an open incident, present in one, crossing, assigned to one, or has an open
    incident alert: a statement whose rows all need one of these is skipped without it."""

    device_ids: list[str] | None
    near: bool = True
    present: bool = True
    crossing: bool = True
    assigned: bool = True
    alerted: bool = True


def _concerned(cur: psycopg.Cursor[dict[str, Any]], device_ids: list[str], geofence: Geofence) -> _Concern:
    """Of ``device_ids``, the units :data:`_CONCERNED` finds: most of a batch is far from every
    open incident and in none of its state, and the rules' nine statements and the polygons'
    depths over the whole batch cost ingest more than the rest of the alert engine did (one
    statement finds the few, and what they need; for none, it is all)."""
    cur.execute(_CONCERNED, {"ids": _id_text(device_ids), "margin": geofence.margin_m})
    rows = cur.fetchall()
    return _Concern([r["device_id"] for r in rows], *(any(r[flag] for r in rows) for flag in
                                                       ("near", "present", "crossing", "assigned", "alerted")))


def _apply_incident_rules(conn: psycopg.Connection, device_ids: list[str] | None, policy: AlertPolicy,
                          geofence: Geofence) -> list[dict[str, Any]]:
    """:func:`evaluate_incidents`, once some incident is known to be open (or for every unit)."""
    with conn.cursor(row_factory=dict_row) as cur:
        concern = _Concern(None) if device_ids is None else _concerned(cur, device_ids, geofence)
        device_ids = concern.device_ids
        if device_ids == []:
            return []
        scope = "true" if device_ids is None else f"l.device_id = ANY({_IDS})"
        params: dict[str, Any] = {"ids": None if device_ids is None else _id_text(device_ids),
                                  "margin": geofence.margin_m, "dwell": geofence.dwell_s}
        # Where a unit stands (below) is read only for a unit crossing, or near or present (a
        # unit clearly outside, neither present nor crossing, changes nothing).
        sided = concern.crossing or concern.near or concern.present
        if sided:
            params |= _polygon_depths(cur, scope, params)
        changes: list[dict[str, Any]] = []
        # Where each unit in scope stands towards each open incident, by its latest fix: clearly
        # inside, clearly outside, or neither (in the margin's band, no fix, or a fix whose
        # accuracy is worse than the margin: such a fix changes nothing). No accuracy given
        # (never from a camera, whose contract requires it) counts as exact. ``depth`` is the
        # signed distance to the area's edge, positive inside.
        accurate = "l.gps_fix AND coalesce(l.accuracy_m, 0) <= %(margin)s"
        depth = f"CASE WHEN i.polygon IS NULL THEN i.radius_m - {_DISTANCE_M} ELSE pd.depth END"
        sides = (f"SELECT i.id AS incident_id, l.device_id, l.ts,"
                 f" ({accurate} AND {depth} >= %(margin)s AND {_IN_INCIDENT_AREA}) AS inside,"
                 f" ({accurate} AND {depth} < -%(margin)s) AS outside,"
                 f" {_IN_INCIDENT_AREA} AS in_area, ({accurate}) AS accurate"
                 f" FROM device_latest l JOIN devices d USING (device_id) JOIN incidents i ON i.status = 'open'"
                 " LEFT JOIN unnest(string_to_array(%(p_incident)s, ',')::bigint[], string_to_array(%(p_device)s, ','),"
                 "  string_to_array(%(p_depth)s, ',')::float8[])"
                 "  AS pd(incident_id, device_id, depth) ON pd.incident_id = i.id AND pd.device_id = l.device_id"
                 f" WHERE {scope}")
        left: set[str] = set()
        if concern.present:  # left at once: moved to another borough, or the incident closed
            cur.execute(
                "DELETE FROM incident_presence p USING device_latest l, devices d, incidents i"
                f" WHERE p.device_id = l.device_id AND d.device_id = l.device_id AND p.incident_id = i.id AND {scope}"
                f" AND (i.status <> 'open' OR NOT {_IN_INCIDENT_AREA}) RETURNING p.device_id", params)
            left = {r["device_id"] for r in cur.fetchall()}
        if concern.crossing:
            # Before the crossings below, which do not ask whether the incident is still open.
            cur.execute("DELETE FROM geofence_pending g USING incidents i WHERE g.incident_id = i.id"
                        " AND i.status <> 'open'")
            # A crossing under way is cancelled by any accurate fix not clearly across (back in
            # the margin's band is enough: a unit standing on the boundary, however its fixes
            # jitter, never stays clearly across for the dwell time).
            cur.execute(
                f"DELETE FROM geofence_pending g USING ({sides}) s WHERE g.incident_id = s.incident_id"
                " AND g.device_id = s.device_id AND ((g.toward = 'inside'"
                " AND (NOT s.in_area OR (s.accurate AND NOT s.inside)))"
                " OR (g.toward = 'outside' AND s.accurate AND NOT s.outside))", params)
        started = 0
        if concern.near or concern.present:  # one is started by a fix clearly across, since that fix's time
            cur.execute(
                "INSERT INTO geofence_pending (incident_id, device_id, toward, since)"
                " SELECT s.incident_id, s.device_id, CASE WHEN s.inside THEN 'inside' ELSE 'outside' END, s.ts"
                f" FROM ({sides}) s WHERE (s.inside AND NOT EXISTS (SELECT 1 FROM incident_presence p"
                " WHERE p.incident_id = s.incident_id AND p.device_id = s.device_id))"
                " OR (s.outside AND EXISTS (SELECT 1 FROM incident_presence p"
                " WHERE p.incident_id = s.incident_id AND p.device_id = s.device_id))"
                " ORDER BY s.incident_id, s.device_id ON CONFLICT DO NOTHING", params)
            started = cur.rowcount
        crossed: list[dict[str, Any]] = []
        if concern.crossing or started > 0:  # crossed: stayed across for the dwell time (by the fixes' times)
            cur.execute(
                "DELETE FROM geofence_pending g USING device_latest l"
                f" WHERE g.device_id = l.device_id AND {scope} AND g.since <= l.ts - make_interval(secs => %(dwell)s)"
                " RETURNING g.incident_id, g.device_id, g.toward, g.since", params)
            crossed = cur.fetchall()
        outward = [c for c in crossed if c["toward"] == "outside"]
        if outward:
            cur.execute("DELETE FROM incident_presence p USING unnest(%s::bigint[], %s::text[]) AS c(incident_id,"
                        " device_id) WHERE p.incident_id = c.incident_id AND p.device_id = c.device_id"
                        " RETURNING p.device_id",
                        ([c["incident_id"] for c in outward], [c["device_id"] for c in outward]))
            left |= {r["device_id"] for r in cur.fetchall()}
        if left:
            cur.execute("UPDATE alerts a SET status = 'resolved', outcome = 'cleared', resolved_at = now(),"
                        " resolved_by = 'system' WHERE a.kind = 'geofence' AND a.status <> 'resolved'"
                        " AND a.device_id = ANY(%s) AND NOT EXISTS (SELECT 1 FROM incident_presence p"
                        f" WHERE p.device_id = a.device_id) {_RETURNING_A}", (sorted(left),))
            changes += cur.fetchall()
        inward = [c for c in crossed if c["toward"] == "inside"]
        entered: list[dict[str, Any]] = []
        if inward:
            cur.execute(
                "INSERT INTO incident_presence (incident_id, device_id, entered_at)"
                " SELECT * FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[])"
                " ON CONFLICT DO NOTHING RETURNING incident_id, device_id",
                ([c["incident_id"] for c in inward], [c["device_id"] for c in inward],
                 [c["since"] for c in inward]))
            entered = sorted(cur.fetchall(), key=lambda e: (e["incident_id"], e["device_id"]))
        if entered:
            cur.execute(
                f"SELECT d.device_id, {_PROFILE}, 'entered the area of incident ' || i.id::text || ': ' || i.title"
                " AS detail FROM unnest(%s::text[], %s::bigint[]) AS e(device_id, incident_id)"
                " JOIN devices d ON d.device_id = e.device_id JOIN incidents i ON i.id = e.incident_id"
                " ORDER BY i.id, d.device_id",
                ([e["device_id"] for e in entered], [e["incident_id"] for e in entered]))
            changes += _raise(cur, "geofence", cur.fetchall(), policy)
        # Assigned firearms units must be recording. Raised on what a report says: a unit that
        # has not reported yet (none, or only a connection status) is left to its first report,
        # which on a camera just switched on comes within seconds, rather than paging the
        # firearms commanders with a state nobody knows (docs/api.md, "Alerts").
        assigned = ("SELECT 1 FROM incident_units u JOIN incidents i ON i.id = u.incident_id"
                    " WHERE u.device_id = l.device_id AND i.status = 'open'")
        if concern.alerted:
            cur.execute(
                "UPDATE alerts a SET status = 'resolved', outcome = 'cleared', resolved_at = now(),"
                " resolved_by = 'system' FROM device_latest l WHERE a.device_id = l.device_id"
                f" AND a.kind = 'assigned_not_recording' AND a.status <> 'resolved' AND {scope}"
                f" AND (l.recording = 'recording' OR NOT EXISTS ({assigned})) {_RETURNING_A}", params)
            changes += cur.fetchall()
        if not concern.assigned:
            return changes
        cur.execute(
            f"SELECT l.device_id, {_PROFILE},"
            " 'assigned firearms unit is ' || l.recording || ', not recording' AS detail"
            " FROM device_latest l JOIN devices d USING (device_id)"
            f" WHERE {scope} AND d.role = 'firearms' AND l.recording IS NOT NULL AND l.recording <> 'recording'"
            f" AND EXISTS ({assigned}) AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.device_id = l.device_id"
            " AND a.kind = 'assigned_not_recording' AND a.status <> 'resolved')", params)
        changes += _raise(cur, "assigned_not_recording", cur.fetchall(), policy)
        return changes


def sweep_offline(conn: psycopg.Connection, rules: AlertRules, policy: AlertPolicy) -> list[dict[str, Any]]:
    """Devices that went quiet raise no message of their own: look for them (periodically).
    The SQL finds the units quiet for at least the shortest timeout of any profile; whether
    each is offline is :func:`telemetry.offline.offline_due`'s decision, with its own."""
    shortest = policy.shortest_after_s("offline", default=rules.offline_after_s)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT l.device_id, {_PROFILE}, l.received_at, l.docked, l.on_duty, now() AS now"
            " FROM device_latest l JOIN devices d USING (device_id)"
            " WHERE d.retired_at IS NULL AND l.received_at < now() - make_interval(secs => %(shortest)s)"
            " AND NOT coalesce(l.docked, false) AND l.on_duty IS NOT FALSE"
            # One alert per silence: not again once an operator resolved it while the unit is still quiet.
            " AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.device_id = l.device_id AND a.kind = 'offline'"
            " AND (a.status <> 'resolved' OR a.raised_at >= l.received_at)) ORDER BY l.device_id",
            {"shortest": shortest})
        due = []
        for row in cur.fetchall():
            unit = QuietUnit(row["device_id"], row["role"], row["received_at"], row["docked"], row["on_duty"])
            if offline_due(unit, now=row["now"], policy=policy, default_after_s=rules.offline_after_s):
                quiet_s = int((row["now"] - row["received_at"]).total_seconds())
                due.append({**row, "detail": f"no report for {quiet_s} s"})
        return _raise(cur, "offline", due, policy)


def sweep_escalations(conn: psycopg.Connection, rules: AlertRules) -> list[dict[str, Any]]:
    """Escalate the high and critical alerts still open (not acknowledged) past their kind's
    deadline, to the level :func:`telemetry.escalation.escalation_due` says, and record it on
    each alert's history. The UPDATE re-checks the level it read under the row lock, so of
    several workers sweeping at once exactly one escalates an alert to each level (the
    others' UPDATE finds the level already raised and returns nothing). Returns the alerts
    escalated, each with ``escalated_to``."""
    esc = rules.escalation
    if not esc.first_after_s:
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, kind, severity, status, escalation_level, raised_at, escalated_at, now() AS now FROM alerts"
            " WHERE status = 'open' AND kind = ANY(%(kinds)s) AND severity = ANY(%(severities)s)"
            f" AND escalation_level < {max(ESCALATED_TO):d}",  # a literal: the partial index's (migration 13)
            {"kinds": esc.kinds, "severities": sorted(ESCALATING_SEVERITIES)})
        due: dict[int, int] = {}
        for a in cur.fetchall():
            level = escalation_due(kind=a["kind"], severity=a["severity"], status=a["status"],
                                   level=a["escalation_level"], raised_at=a["raised_at"],
                                   escalated_at=a["escalated_at"], now=a["now"], rules=esc)
            if level is not None:
                due[a["id"]] = level
        if not due:
            return []
        ids = sorted(due)
        cur.execute(
            "UPDATE alerts a SET escalated_at = now(), escalation_level = e.level"
            " FROM unnest(%(ids)s::bigint[], %(levels)s::smallint[]) AS e(id, level)"
            " WHERE a.id = e.id AND a.status = 'open' AND a.escalation_level = e.level - 1"
            f" {_RETURNING_A}", {"ids": ids, "levels": [due[i] for i in ids]})
        escalated = sorted(cur.fetchall(), key=lambda a: a["id"])
        if escalated:
            cur.execute(
                "INSERT INTO alert_history (alert_id, at, action, actor, detail)"
                " SELECT id, at, 'escalated', 'system', 'not acknowledged in time: escalated to level '"
                " || level::text || ', ' || target"
                " FROM unnest(%(ids)s::bigint[], %(ats)s::timestamptz[], %(levels)s::int[], %(targets)s::text[])"
                " AS e(id, at, level, target)",
                {"ids": [a["id"] for a in escalated], "ats": [a["escalated_at"] for a in escalated],
                 "levels": [a["escalation_level"] for a in escalated],
                 "targets": [ESCALATED_TO[a["escalation_level"]] for a in escalated]})
    return [{**a, "escalated_to": ESCALATED_TO[a["escalation_level"]]} for a in escalated]
