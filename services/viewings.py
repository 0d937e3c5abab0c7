"""Live-view records: requests to cameras, consent in force, and every viewing session.

Functions over a connection in the caller's transaction (they never commit), so that a
change and its audit entry are one transaction. Every state change is a conditional
``UPDATE … RETURNING``: when several API processes react to the same broker message, one
of them gets the row back and acts (audits, notifies); the others get ``None``.
Tables: migration 5 in :mod:`telemetry.schema`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

__all__ = [
    "accepted_requesters",
    "active_consent",
    "answer_request",
    "cover_request",
    "create_request",
    "end_consent",
    "end_orphaned_viewings",
    "end_policy_consents_not_recording",
    "end_viewings_elsewhere",
    "end_viewing",
    "expire_requests",
    "get_request",
    "grant_consent",
    "grant_event_consent",
    "incident_for_live_view",
    "link_request",
    "list_requests",
    "open_viewings",
    "pending_request",
    "refuse_viewing",
    "set_publisher",
    "stale_consents",
    "start_viewing",
    "unit_for_live_view",
    "ViewingFilter",
    "viewings",
]

Row = dict[str, Any]

_REQUEST = ("r.id AS request_id, r.device_id, d.borough, r.requested_by, r.reason, r.status, r.detail,"
            " r.created_at, r.expires_at, r.answered_at, r.consent_id, r.covered_rule, r.incident_id")
_CONSENT = ("id AS consent_id, device_id, basis, request_id, granted_at, publisher_session, publishing_since,"
            " ended_at, end_reason")
_VIEWING = ("id, session_id, device_id, officer, viewer, role, reason, consent_id, started_at, ended_at, end_reason,"
            " refused")
# The officer carrying the unit now (its custody window, telemetry/custody.py), kept with a
# viewing as it starts (who was watched): NULL while it is docked or nobody is on record.
_OFFICER_NOW = ("(SELECT officer FROM device_assignments WHERE device_id = %(device)s AND valid_from <= now()"
                " AND (valid_to IS NULL OR now() < valid_to))")


def _one(conn: psycopg.Connection, sql: str, params: dict[str, Any] | tuple[Any, ...]) -> Row | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def _all(conn: psycopg.Connection, sql: str, params: dict[str, Any] | tuple[Any, ...]) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def unit_for_live_view(conn: psycopg.Connection, device_id: str) -> Row | None:
    """What the consent decisions need of a unit: registry, latest recording state, and the
    creators and boroughs of the open incidents it is assigned to."""
    return _one(conn,
                "SELECT d.device_id, d.borough, d.role, d.retired_at IS NOT NULL AS retired,"
                " coalesce(l.recording, 'off') AS recording, coalesce(l.online, false) AS online,"
                " extract(epoch FROM now() - l.ts)::float8 AS reading_age_s,"
                " coalesce(array_agg(DISTINCT i.created_by) FILTER (WHERE i.id IS NOT NULL), '{}') AS incident_owners,"
                " coalesce(array_agg(DISTINCT i.borough) FILTER (WHERE i.borough IS NOT NULL), '{}')"
                "   AS incident_boroughs"
                " FROM devices d LEFT JOIN device_latest l USING (device_id)"
                " LEFT JOIN incident_units u ON u.device_id = d.device_id"
                " LEFT JOIN incidents i ON i.id = u.incident_id AND i.status = 'open'"
                " WHERE d.device_id = %s GROUP BY d.device_id, l.recording, l.online, l.ts", (device_id,))


def incident_for_live_view(conn: psycopg.Connection, incident_id: int, device_id: str) -> Row | None:
    """What the consent decisions need of an incident a request names: its borough, whether it
    is open, and whether ``device_id`` is assigned to it."""
    return _one(conn,
                "SELECT i.id AS incident_id, i.borough, i.status = 'open' AS open,"
                " EXISTS (SELECT 1 FROM incident_units u WHERE u.incident_id = i.id AND u.device_id = %s)"
                "   AS unit_assigned"
                " FROM incidents i WHERE i.id = %s", (device_id, incident_id))


# requests

def create_request(conn: psycopg.Connection, *, request_id: str, device_id: str, requested_by: str, reason: str,
                   expires_at: datetime, incident_id: int | None = None) -> Row:
    conn.execute("INSERT INTO live_view_requests (id, device_id, requested_by, reason, expires_at, incident_id)"
                 " VALUES (%s, %s, %s, %s, %s, %s)",
                 (request_id, device_id, requested_by, reason, expires_at, incident_id))
    row = get_request(conn, request_id)
    assert row is not None
    return row


def pending_request(conn: psycopg.Connection, device_id: str) -> bool:
    """Is a request to the camera waiting for its answer (pending, not yet expired)?"""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM live_view_requests WHERE device_id = %s"
                       " AND status = 'pending' AND expires_at > now())", (device_id,)).fetchone()
    return bool(row and row[0])


def get_request(conn: psycopg.Connection, request_id: str) -> Row | None:
    return _one(conn, f"SELECT {_REQUEST} FROM live_view_requests r JOIN devices d USING (device_id)"
                      " WHERE r.id = %s", (request_id,))


def list_requests(conn: psycopg.Connection, *, boroughs: frozenset[str] | None, device_id: str | None,
                  status: str | None, limit: int) -> list[Row]:
    """Newest first, within ``boroughs`` (None: all)."""
    return _all(conn,
                f"SELECT {_REQUEST} FROM live_view_requests r JOIN devices d USING (device_id)"
                " WHERE (%(areas)s::text[] IS NULL OR d.borough = ANY(%(areas)s))"
                " AND (%(device)s::text IS NULL OR r.device_id = %(device)s)"
                " AND (%(status)s::text IS NULL OR r.status = %(status)s)"
                " ORDER BY r.created_at DESC LIMIT %(limit)s",
                {"areas": None if boroughs is None else sorted(boroughs), "device": device_id, "status": status,
                 "limit": limit})


def answer_request(conn: psycopg.Connection, *, request_id: str, device_id: str, status: str,
                   detail: str | None) -> Row | None:
    """pending -> ``status``; None if it is not a pending request to ``device_id`` (answered
    already, expired, or another camera quoting an id that is not its own)."""
    changed = _one(conn, "UPDATE live_view_requests SET status = %s, detail = %s, answered_at = now()"
                         " WHERE id = %s AND device_id = %s AND status = 'pending' RETURNING id",
                   (status, detail, request_id, device_id))
    return get_request(conn, request_id) if changed else None


def cover_request(conn: psycopg.Connection, *, request_id: str, device_id: str, consent_id: int, rule: str,
                  detail: str) -> Row | None:
    """pending -> accepted under the consent in force by the force's ``rule`` (the camera was
    not asked); None if it was not pending."""
    changed = _one(conn, "UPDATE live_view_requests SET status = 'accepted', detail = %s, answered_at = now(),"
                         " consent_id = %s, covered_rule = %s"
                         " WHERE id = %s AND device_id = %s AND status = 'pending' RETURNING id",
                   (detail, consent_id, rule, request_id, device_id))
    return get_request(conn, request_id) if changed else None


def link_request(conn: psycopg.Connection, *, request_id: str, consent_id: int) -> Row | None:
    """Record that the (accepted) request was accepted under ``consent_id``."""
    conn.execute("UPDATE live_view_requests SET consent_id = %s WHERE id = %s", (consent_id, request_id))
    return get_request(conn, request_id)


def accepted_requesters(conn: psycopg.Connection, consent_id: int) -> frozenset[str]:
    """Whose requests were accepted under the consent (by its camera, or by a rule)."""
    rows = _all(conn, "SELECT DISTINCT requested_by FROM live_view_requests"
                      " WHERE consent_id = %s AND status = 'accepted'", (consent_id,))
    return frozenset(r["requested_by"] for r in rows)


def expire_requests(conn: psycopg.Connection, *, now: datetime) -> list[Row]:
    """Pending requests past their expiry become ``expired``; returns them."""
    ids = _all(conn, "UPDATE live_view_requests SET status = 'expired', answered_at = %s,"
                     " detail = 'the camera did not answer in time'"
                     " WHERE status = 'pending' AND expires_at <= %s RETURNING id", (now, now))
    return [r for r in (get_request(conn, row["id"]) for row in ids) if r is not None]


# consent

def grant_consent(conn: psycopg.Connection, *, device_id: str, basis: str, request_id: str | None) -> Row | None:
    """Consent with ``basis`` from now; None if consent is already in force for the device."""
    return _one(conn, f"INSERT INTO live_view_consents (device_id, basis, request_id) VALUES (%s, %s, %s)"
                      f" ON CONFLICT (device_id) WHERE ended_at IS NULL DO NOTHING RETURNING {_CONSENT}",
                (device_id, basis, request_id))


def grant_event_consent(conn: psycopg.Connection, *, device_id: str, basis: str, event_ts: datetime,
                        event_seq: int) -> Row | None:
    """Consent granted by the camera's event (``event_ts``, ``event_seq``); None if consent is
    in force already, or the event is not newer than one that granted consent before (a QoS 1
    duplicate, or an older event the camera sent late)."""
    return _one(conn, f"INSERT INTO live_view_consents (device_id, basis, event_ts, event_seq)"
                      f" SELECT %(device)s, %(basis)s, %(ts)s, %(seq)s WHERE NOT EXISTS ("
                      f"   SELECT 1 FROM live_view_consents WHERE device_id = %(device)s AND event_ts IS NOT NULL"
                      f"   AND (event_ts, event_seq) >= (%(ts)s, %(seq)s))"
                      f" ON CONFLICT (device_id) WHERE ended_at IS NULL DO NOTHING RETURNING {_CONSENT}",
                {"device": device_id, "basis": basis, "ts": event_ts, "seq": event_seq})


def active_consent(conn: psycopg.Connection, device_id: str) -> Row | None:
    return _one(conn, f"SELECT {_CONSENT} FROM live_view_consents WHERE device_id = %s AND ended_at IS NULL",
                (device_id,))


def ended_consents(conn: psycopg.Connection, consent_ids: list[int]) -> list[Row]:
    """Those of ``consent_ids`` that have ended (one query, whatever the number)."""
    return _all(conn, f"SELECT {_CONSENT} FROM live_view_consents WHERE id = ANY(%s) AND ended_at IS NOT NULL",
                (consent_ids,))


def set_publisher(conn: psycopg.Connection, *, consent_id: int, session_id: str | None) -> Row | None:
    """Record (or clear, with None) the camera's WHIP session under a consent in force."""
    return _one(conn, f"UPDATE live_view_consents SET publisher_session = %s,"
                      f" publishing_since = CASE WHEN %s::text IS NULL THEN NULL ELSE now() END"
                      f" WHERE id = %s AND ended_at IS NULL RETURNING {_CONSENT}",
                (session_id, session_id, consent_id))


def end_consent(conn: psycopg.Connection, *, device_id: str, reason: str, basis: str | None = None,
                consent_id: int | None = None) -> Row | None:
    """End the consent in force (only one of ``basis``, or that very consent, if given)."""
    return _one(conn, f"UPDATE live_view_consents SET ended_at = now(), end_reason = %(reason)s"
                      f" WHERE device_id = %(device)s AND ended_at IS NULL"
                      f" AND (%(basis)s::text IS NULL OR basis = %(basis)s)"
                      f" AND (%(id)s::bigint IS NULL OR id = %(id)s) RETURNING {_CONSENT}",
                {"reason": reason, "device": device_id, "basis": basis, "id": consent_id})


def stale_consents(conn: psycopg.Connection, *, granted_before: datetime) -> list[Row]:
    """End consents in force whose camera never started streaming in time; returns them."""
    return _all(conn, f"UPDATE live_view_consents SET ended_at = now(), end_reason = 'no_stream'"
                      f" WHERE ended_at IS NULL AND publisher_session IS NULL AND granted_at < %s"
                      f" RETURNING {_CONSENT}", (granted_before,))


def end_policy_consents_not_recording(conn: psycopg.Connection) -> list[Row]:
    """End ``policy_recording`` consents whose unit's latest state is no longer recording
    (the safety net if the ``recording_stopped`` event was missed); returns them."""
    return _all(conn, "UPDATE live_view_consents c SET ended_at = now(), end_reason = 'recording_stopped'"
                      " FROM device_latest l WHERE l.device_id = c.device_id AND c.ended_at IS NULL"
                      " AND c.basis = 'policy_recording' AND coalesce(l.recording, 'off') <> 'recording'"
                      " RETURNING c.id AS consent_id, c.device_id, c.basis, c.request_id, c.granted_at,"
                      " c.publisher_session, c.publishing_since, c.ended_at, c.end_reason", ())


# viewing sessions

def start_viewing(conn: psycopg.Connection, *, session_id: str, device_id: str, viewer: str, role: str,
                  reason: str, consent_id: int | None) -> Row:
    row = _one(conn, f"INSERT INTO viewing_sessions (session_id, device_id, officer, viewer, role, reason, consent_id)"
                     f" VALUES (%(session)s, %(device)s, {_OFFICER_NOW}, %(viewer)s, %(role)s, %(reason)s,"
                     f" %(consent)s) RETURNING {_VIEWING}",
               {"session": session_id, "device": device_id, "viewer": viewer, "role": role, "reason": reason,
                "consent": consent_id})
    assert row is not None
    return row


def refuse_viewing(conn: psycopg.Connection, *, device_id: str, viewer: str, role: str, reason: str | None,
                   refused: str) -> Row:
    """Record an attempt to view that was refused, and why."""
    row = _one(conn, f"INSERT INTO viewing_sessions (device_id, officer, viewer, role, reason, ended_at, end_reason,"
                     f" refused) VALUES (%(device)s, {_OFFICER_NOW}, %(viewer)s, %(role)s, %(reason)s, now(),"
                     f" 'refused', %(refused)s) RETURNING {_VIEWING}",
               {"device": device_id, "viewer": viewer, "role": role, "reason": reason, "refused": refused})
    assert row is not None
    return row


def end_viewing(conn: psycopg.Connection, *, session_id: str, reason: str) -> Row | None:
    """End an open viewing session; None if it had ended already."""
    return _one(conn, f"UPDATE viewing_sessions SET ended_at = now(), end_reason = %s"
                      f" WHERE session_id = %s AND ended_at IS NULL RETURNING {_VIEWING}", (reason, session_id))


def end_viewings_elsewhere(conn: psycopg.Connection, *, consent_id: int, keep: list[str], reason: str) -> list[Row]:
    """End the open viewings under a consent except the sessions in ``keep`` (when the stream
    moved to another API process, the others' viewers are gone or about to go)."""
    return _all(conn, f"UPDATE viewing_sessions SET ended_at = now(), end_reason = %s"
                      f" WHERE consent_id = %s AND ended_at IS NULL AND NOT (session_id = ANY(%s))"
                      f" RETURNING {_VIEWING}", (reason, consent_id, keep))


def end_orphaned_viewings(conn: psycopg.Connection, *, consent_ended_before: datetime) -> list[Row]:
    """End open viewings whose consent ended before then: the process that served them is
    gone (a live one ends its viewers as the stream closes). Returns them."""
    return _all(conn, f"UPDATE viewing_sessions v SET ended_at = now(), end_reason = 'consent_ended'"
                      f" FROM live_view_consents c WHERE c.id = v.consent_id AND v.ended_at IS NULL"
                      f" AND c.ended_at < %s RETURNING {', '.join('v.' + c for c in _VIEWING.split(', '))}",
                (consent_ended_before,))


def open_viewings(conn: psycopg.Connection, device_id: str) -> list[Row]:
    """Who is watching the unit now (across every API process)."""
    return _all(conn, f"SELECT {_VIEWING} FROM viewing_sessions WHERE device_id = %s AND ended_at IS NULL"
                      " ORDER BY started_at", (device_id,))


@dataclass(frozen=True)
class ViewingFilter:
    """Which viewing sessions to list (None: any). ``since``/``until``: sessions that overlap
    that window (started before ``until``, not ended before ``since``), so "who watched unit X
    between 14:00 and 16:00" includes a viewing that began at 13:50. ``basis``: of the consent
    the viewing was under (a refusal has none, so a basis leaves refusals out)."""

    device_id: str | None = None
    officer: str | None = None  # who carried the unit then (the registry's officer at the viewing's start)
    viewer: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    basis: str | None = None


def viewings(conn: psycopg.Connection, *, boroughs: frozenset[str] | None, where: ViewingFilter,
             limit: int) -> list[Row]:
    """Viewing sessions and refusals of devices within ``boroughs`` (None: all), newest first,
    with the unit's callsign and borough and the consent's basis. Who watched a unit and why
    is about that unit: its borough decides who may read it."""
    columns = ", ".join("v." + c for c in _VIEWING.split(", "))
    return _all(conn, f"SELECT {columns}, d.callsign, d.borough, c.basis"
                      " FROM viewing_sessions v LEFT JOIN devices d ON d.device_id = v.device_id"
                      " LEFT JOIN live_view_consents c ON c.id = v.consent_id"
                      " WHERE (%(areas)s::text[] IS NULL OR d.borough = ANY(%(areas)s))"
                      " AND (%(device)s::text IS NULL OR v.device_id = %(device)s)"
                      " AND (%(officer)s::text IS NULL OR v.officer = %(officer)s)"
                      " AND (%(viewer)s::text IS NULL OR v.viewer = %(viewer)s)"
                      " AND (%(since)s::timestamptz IS NULL OR v.ended_at IS NULL OR v.ended_at >= %(since)s)"
                      " AND (%(until)s::timestamptz IS NULL OR v.started_at < %(until)s)"
                      " AND (%(basis)s::text IS NULL OR c.basis = %(basis)s)"
                      " ORDER BY v.started_at DESC, v.id DESC LIMIT %(limit)s",
                {"areas": None if boroughs is None else sorted(boroughs), "device": where.device_id,
                 "officer": where.officer, "viewer": where.viewer, "since": where.since, "until": where.until,
                 "basis": where.basis,
                 "limit": limit})
