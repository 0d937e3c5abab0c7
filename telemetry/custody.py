"""Who carried which camera, when: custody windows (``device_assignments``, migration 14),
how they open and close, and how history is attributed to them.

A window is (device, officer, callsign, ``valid_from`` inclusive, ``valid_to`` exclusive or
NULL while open). It opens when the camera leaves its dock with an officer (an ``undocked``
event naming them, release 1.2 of the contract), when an admin assigns the camera, or when
the registry's officer changes; it closes when the camera is docked, when an admin ends it,
or when the same officer checks out another camera (one officer carries one camera).

Events arrive more than once and out of order (QoS 1, shared subscriptions, a camera sending
its buffer after a dead zone), so each change is placed by its time, not by its arrival: an
``undocked`` at ``t`` ends the window covering ``t`` and opens one until the next thing on
record (a later dock, the next window); a ``docked`` at ``t`` ends the window covering ``t``.
The same event twice changes nothing the second time (``duplicate``), and a camera's windows
come out the same whatever order its dock events arrive in (tests/test_custody.py). A late
``undocked`` finds its ``docked`` in ``device_events`` (stored first, in the same
transaction). Each change locks the device's registry row first, so two ingest workers
decide one at a time per device. Nothing here commits.

:func:`attribution_join` is the building block for history: one range join that gives any
row with a device and a time the officer who carried the camera then.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from core.contract import EventType
from core.reports import EventReport

__all__ = [
    "ASSIGNMENT_COLUMNS",
    "Outcome",
    "RegistryOfficer",
    "apply_dock_events",
    "assignments",
    "attribution_join",
    "close_assignment",
    "officer_at",
    "officer_track",
    "open_assignment",
    "registry_officers",
    "sync_registry",
]

Row = dict[str, Any]
Outcome = Literal["opened", "closed", "duplicate", "stale", "none", "unknown_device"]

ASSIGNMENT_COLUMNS = "id, device_id, officer, callsign, valid_from, valid_to, opened_by, closed_by"
#: Who opened or closed a window from a camera's own dock events.
BY_DEVICE = "device"
#: Who opened or closed a window because the registry's officer changed.
BY_REGISTRY = "registry"


def attribution_join(*, device: str, at: str, alias: str = "a", closing: str | None = None) -> str:
    """``LEFT JOIN device_assignments <alias> ON ...``: the window of the device ``device``
    (an SQL expression) that covers the time ``at`` (an SQL expression), at most one since
    a device's windows never overlap. Select ``<alias>.officer`` and ``<alias>.callsign``;
    both are NULL for a time nobody carried the camera (docked, or before any record).

    ``closing``: an SQL condition true for rows that end a window (a ``docked`` event): such a
    row belongs to the window it ends, ``(valid_from, valid_to]``, not to the gap after it.

    One range join for a whole result, never a query per row: the planner probes
    ``device_assignments (device_id, valid_from)`` for each row."""
    covers = f"{alias}.valid_from <= {at} AND ({alias}.valid_to IS NULL OR {at} < {alias}.valid_to)"
    if closing is not None:
        ends = f"{alias}.valid_from < {at} AND ({alias}.valid_to IS NULL OR {at} <= {alias}.valid_to)"
        covers = f"CASE WHEN {closing} THEN {ends} ELSE {covers} END"
    return f" LEFT JOIN device_assignments {alias} ON {alias}.device_id = {device} AND {covers}"


def officer_at(*, device: str, at: str) -> str:
    """A scalar subquery: the officer who carried the device ``device`` at the time ``at``
    (both SQL expressions), NULL for nobody. For a RETURNING list or an UPDATE's result,
    where :func:`attribution_join` has no FROM to join to; one index probe per row."""
    return (f"(SELECT o.officer FROM device_assignments o WHERE o.device_id = {device} AND o.valid_from <= {at}"
            f" AND (o.valid_to IS NULL OR {at} < o.valid_to) LIMIT 1)")


def _lock(conn: psycopg.Connection, device_id: str) -> bool:
    # NO KEY UPDATE: ingest's foreign-key checks (KEY SHARE) on the same device do not wait.
    return conn.execute("SELECT 1 FROM devices WHERE device_id = %s FOR NO KEY UPDATE",
                        (device_id,)).fetchone() is not None


def _window(conn: psycopg.Connection, sql: str, params: tuple[object, ...]) -> Row | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {ASSIGNMENT_COLUMNS} FROM device_assignments WHERE {sql}", params)
        return cur.fetchone()


def _close(conn: psycopg.Connection, window_id: int, at: datetime, by: str) -> None:
    conn.execute("UPDATE device_assignments SET valid_to = %s, closed_by = %s WHERE id = %s", (at, by, window_id))


def open_assignment(conn: psycopg.Connection, *, device_id: str, officer: str, callsign: str | None,
                    at: datetime, by: str) -> Outcome:
    """``officer`` (as ``callsign``) carries the device from ``at``, in the caller's transaction.

    The window covering ``at`` (another officer's, or the same officer's under another
    callsign) ends at ``at``. The new one ends where the next thing on record begins: the
    device's first ``docked`` event after ``at`` (stored already), its next window, or the
    end of the window it splits; with none of those it stays open, and then the officer's
    open window on another camera ends at ``at`` (one officer, one camera). The registry's
    officer and callsign follow the device's latest window. ``duplicate`` if a window of this
    officer and callsign starts at ``at`` already; ``stale`` if another one does."""
    if not _lock(conn, device_id):
        return "unknown_device"
    prev = _window(conn, "device_id = %s AND valid_from <= %s ORDER BY valid_from DESC LIMIT 1", (device_id, at))
    following = _window(conn, "device_id = %s AND valid_from > %s ORDER BY valid_from LIMIT 1", (device_id, at))
    ends: list[datetime] = []
    splits = None  # the window covering ``at``, which ends there
    if prev is not None:
        same = (prev["officer"], prev["callsign"]) == (officer, callsign)
        if prev["valid_from"] == at:
            return "duplicate" if same else "stale"
        # The same officer again splits their window too: a dock between the two may arrive later.
        if prev["valid_to"] is None or prev["valid_to"] > at:
            splits = prev
            if prev["valid_to"] is not None:
                ends.append(prev["valid_to"])
    if following is not None:
        ends.append(following["valid_from"])
    docked = conn.execute("SELECT min(ts) FROM device_events WHERE device_id = %s AND type = %s AND ts > %s",
                          (device_id, EventType.DOCKED.value, at)).fetchone()
    if docked is not None and docked[0] is not None:
        ends.append(docked[0])
    handed_in = None  # the officer's open window on another camera, which ends at ``at``
    if not ends:
        elsewhere = _window(conn, "officer = %s AND valid_to IS NULL AND device_id <> %s FOR UPDATE",
                            (officer, device_id))
        if elsewhere is not None and elsewhere["valid_from"] == at:
            return "stale"  # the officer took another camera at that very moment
        if elsewhere is not None and elsewhere["valid_from"] > at:
            ends.append(elsewhere["valid_from"])  # and took that one later
        else:
            handed_in = elsewhere
    # Decided; only now is anything written, so a refusal above leaves everything as it was.
    if splits is not None:
        _close(conn, splits["id"], at, by)
    if handed_in is not None:  # named, since it was this camera (or act) that said so
        _close(conn, handed_in["id"], at, f"{by}:{device_id}")
    valid_to = min(ends) if ends else None
    conn.execute("INSERT INTO device_assignments (device_id, officer, callsign, valid_from, valid_to, opened_by,"
                 " closed_by) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                 (device_id, officer, callsign, at, valid_to, by, None if valid_to is None else by))
    if following is None:
        conn.execute("UPDATE devices SET officer = %s, callsign = %s WHERE device_id = %s",
                     (officer, callsign, device_id))
    return "opened"


def close_assignment(conn: psycopg.Connection, *, device_id: str, at: datetime, by: str) -> Outcome:
    """Nobody carries the device from ``at`` (docked, or an admin ended it), in the caller's
    transaction: the window covering ``at`` ends then, the latest or an earlier one (the
    first dock after a checkout ends it, whichever dock event arrived first). The registry
    keeps the last officer (who had the camera before the dock). ``duplicate`` if a window
    ends at ``at`` already; ``none`` if no window covers ``at``."""
    if not _lock(conn, device_id):
        return "unknown_device"
    covering = _window(conn, "device_id = %s AND valid_from < %s AND (valid_to IS NULL OR valid_to > %s)",
                       (device_id, at, at))
    if covering is None:
        ended = _window(conn, "device_id = %s AND valid_to = %s", (device_id, at))
        return "duplicate" if ended is not None else "none"
    _close(conn, covering["id"], at, by)
    return "closed"


def apply_dock_events(conn: psycopg.Connection, events: Iterable[tuple[str, EventReport]]) -> Counter[str]:
    """Open and close windows from a batch's ``undocked`` and ``docked`` events (stored
    already in ``device_events``, in this transaction). Devices are taken in id order, so
    two workers lock them in the same order. Returns the outcomes counted (``opened``,
    ``closed``, ``stale``, ``duplicate``, ``none``; ``no_officer`` for an ``undocked`` that
    names nobody, which opens nothing)."""
    outcomes: Counter[str] = Counter()
    docking = [(d, e) for d, e in events if e.type in (EventType.DOCKED, EventType.UNDOCKED)]
    for device_id, event in sorted(docking, key=lambda de: (de[0], de[1].ts, de[1].seq)):
        if event.type is EventType.DOCKED:
            outcomes[close_assignment(conn, device_id=device_id, at=event.ts, by=BY_DEVICE)] += 1
            continue
        checkout = event.checkout()
        if checkout is None:
            outcomes["no_officer"] += 1
            continue
        outcomes[open_assignment(conn, device_id=device_id, officer=checkout.officer, callsign=checkout.callsign,
                                 at=event.ts, by=BY_DEVICE)] += 1
    return outcomes


@dataclass(frozen=True)
class RegistryOfficer:
    """A device's officer and callsign as the registry holds them."""

    device_id: str
    officer: str | None
    callsign: str | None


def registry_officers(conn: psycopg.Connection, device_ids: Sequence[str]) -> dict[str, RegistryOfficer]:
    """The registry's officer and callsign of each device (before a registry write, to see what changes)."""
    rows = conn.execute("SELECT device_id, officer, callsign FROM devices WHERE device_id = ANY(%s)",
                        (list(device_ids),)).fetchall()
    return {r[0]: RegistryOfficer(r[0], r[1], r[2]) for r in rows}


def sync_registry(conn: psycopg.Connection, *, before: dict[str, RegistryOfficer],
                  after: Iterable[RegistryOfficer], at: datetime | None = None) -> int:
    """Keep the windows in step with a registry write that named a device's officer: where the
    officer or callsign changed (or the device is new), the device's open window ends at ``at``
    and the new officer's opens there. Returns the devices whose custody changed. An unchanged
    registry entry changes nothing, so re-registering a docked camera does not check it out.
    ``at``: the transaction's start unless given."""
    if at is None:
        now = conn.execute("SELECT now()").fetchone()
        assert now is not None
        at = now[0]
    entries = sorted(after, key=lambda e: e.device_id)
    changed = _open_fresh(conn, [e for e in entries if e.device_id not in before and e.officer], at)
    for entry in entries:
        old = before.get(entry.device_id)
        if entry.device_id in changed or (old is None and not entry.officer) or (
                old is not None and (old.officer, old.callsign) == (entry.officer, entry.callsign)):
            continue  # opened in bulk; new with nobody to carry it; or unchanged
        if entry.officer:
            outcome = open_assignment(conn, device_id=entry.device_id, officer=entry.officer,
                                      callsign=entry.callsign, at=at, by=BY_REGISTRY)
        else:
            outcome = close_assignment(conn, device_id=entry.device_id, at=at, by=BY_REGISTRY)
        if outcome in ("opened", "closed"):
            changed.add(entry.device_id)
    return len(changed)


def _open_fresh(conn: psycopg.Connection, fresh: list[RegistryOfficer], at: datetime) -> set[str]:
    """Windows for newly registered devices, in one statement (seeding a fleet of thousands
    must not cost a round trip per device): a new device has no window yet, so only an
    officer's open window on another camera can stand in the way, and those devices (and a
    second device of one officer in the same write) are left to :func:`open_assignment`."""
    first: dict[str, RegistryOfficer] = {}
    for entry in fresh:
        first.setdefault(str(entry.officer), entry)
    rows = conn.execute(
        "INSERT INTO device_assignments (device_id, officer, callsign, valid_from, opened_by)"
        " SELECT n.device_id, n.officer, n.callsign, %s, %s"
        " FROM unnest(%s::text[], %s::text[], %s::text[]) AS n(device_id, officer, callsign)"
        " WHERE NOT EXISTS (SELECT 1 FROM device_assignments a WHERE a.officer = n.officer AND a.valid_to IS NULL)"
        " ORDER BY n.device_id RETURNING device_id",
        (at, BY_REGISTRY, [e.device_id for e in first.values()], [e.officer for e in first.values()],
         [e.callsign for e in first.values()])).fetchall()
    return {r[0] for r in rows}


def assignments(conn: psycopg.Connection, device_id: str, *, start: datetime, end: datetime) -> list[Row]:
    """The device's windows that overlap ``[start, end)``, oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {ASSIGNMENT_COLUMNS} FROM device_assignments WHERE device_id = %s"
                    " AND valid_from < %s AND (valid_to IS NULL OR valid_to > %s) ORDER BY valid_from",
                    (device_id, end, start))
        return cur.fetchall()


def officer_track(conn: psycopg.Connection, officer: str, *, start: datetime, end: datetime, max_points: int,
                  boroughs: frozenset[str] | None) -> tuple[list[Row], list[str]]:
    """An officer's GPS track across the cameras they carried in ``[start, end)``, in one query:
    the officer's windows clipped to the span, then, like a single unit's track, the span cut
    into ``max_points`` slices each giving its latest fix from whichever camera the officer
    carried then. Only cameras registered in ``boroughs`` (None: all) count, as for a unit's
    track. Returns the points (with ``device_id``, ``officer`` and ``callsign``) and the
    cameras of the officer's windows in the span and area (none: nothing to show this caller)."""
    step = max((end - start).total_seconds() / max_points, 0.001)
    params: dict[str, Any] = {"officer": officer, "start": start, "end": end, "n": max_points, "step": step,
                              "areas": None if boroughs is None else sorted(boroughs)}
    windows = (
        "SELECT a.device_id, a.callsign, greatest(a.valid_from, %(start)s) AS f,"
        " least(coalesce(a.valid_to, 'infinity'), %(end)s) AS t"
        " FROM device_assignments a JOIN devices d ON d.device_id = a.device_id"
        " WHERE a.officer = %(officer)s AND a.valid_from < %(end)s"
        " AND (a.valid_to IS NULL OR a.valid_to > %(start)s)"
        " AND (%(areas)s::text[] IS NULL OR d.borough = ANY(%(areas)s))")
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"WITH w AS MATERIALIZED ({windows}),"
            " slices AS (SELECT %(start)s + make_interval(secs => i * %(step)s) AS s,"
            "  least(%(start)s + make_interval(secs => (i + 1) * %(step)s), %(end)s) AS e"
            "  FROM generate_series(0, %(n)s - 1) AS g(i))"
            " SELECT NULL AS device_id, NULL AS officer, NULL AS callsign, NULL::timestamptz AS ts,"
            "  NULL::float8 AS lat, NULL::float8 AS lon, NULL::real AS accuracy_m, NULL::real AS speed_mps,"
            "  NULL::real AS heading_deg, NULL AS recording, array_agg(DISTINCT w.device_id) AS devices FROM w"
            " UNION ALL (SELECT p.*, NULL FROM slices CROSS JOIN LATERAL ("
            "  SELECT t.device_id, %(officer)s::text AS officer, w.callsign, t.ts, t.lat, t.lon, t.accuracy_m,"
            "   t.speed_mps, t.heading_deg, t.recording FROM w JOIN telemetry t ON t.device_id = w.device_id"
            "   AND t.ts >= greatest(w.f, slices.s) AND t.ts < least(w.t, slices.e)"
            "  WHERE t.lat IS NOT NULL ORDER BY t.ts DESC LIMIT 1) p ORDER BY p.ts)", params)
        rows = cur.fetchall()
    # The one row without a time is the windows' cameras; UNION ALL promises no order, so sort.
    devices = next(r["devices"] for r in rows if r["ts"] is None) or []
    points = sorted((r for r in rows if r["ts"] is not None), key=lambda r: r["ts"])
    for point in points:
        del point["devices"]
    return points, sorted(devices)
