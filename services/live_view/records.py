"""Live view's transactions: each function is one unit of work on one connection (the caller,
:class:`services.live_view.LiveView`, runs it in a transaction off the event loop). They read
and write through :mod:`services.viewings`, decide with :mod:`services.consent` and
:mod:`services.live_view.workflow`, and write the audit rows in the same transaction as the
records they describe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from services import audit, viewings
from services.accounts import Principal
from services.consent import (
    Basis,
    CoverRule,
    Denied,
    IncidentFacts,
    UnitFacts,
    covering_rule,
    incident_denied,
    may_watch,
    plan_request,
    viewer_covered,
)
from services.live_view.effects import Audit
from services.live_view.viewers import ViewCheck, check_viewing
from services.live_view.workflow import (
    EndConsent,
    GrantConsent,
    IgnoreEvent,
    ReplyAnswer,
    audit_consent_ended,
    audit_covered,
    audit_publisher_ended,
    audit_request_answered,
    audit_sweep,
    change_for_event,
    covered_detail,
)

__all__ = [
    "Requested",
    "answer_request",
    "camera_event",
    "check_viewer",
    "consent_summary",
    "end_publisher_consent",
    "end_viewing",
    "ended_consents",
    "facts",
    "refuse_viewing",
    "request",
    "start_viewing",
    "stop",
    "sweep",
    "take_over_stream",
    "units",
    "write_audits",
]

Row = dict[str, Any]
# A viewing still open this long after its consent ended was served by a process that died.
_ORPHAN_AFTER = timedelta(seconds=30)


def write_audits(conn: psycopg.Connection, audits: Sequence[Audit]) -> None:
    for a in audits:
        audit.record(conn, actor=a.actor, action=a.action, device_id=a.device_id, details=dict(a.details))


def facts(conn: psycopg.Connection, device_id: str) -> UnitFacts | None:
    row = viewings.unit_for_live_view(conn, device_id)
    return UnitFacts.from_row(row) if row is not None else None


@dataclass(frozen=True)
class Requested:
    """A control-room request as recorded: refused, or the row, the consent in force after it,
    the basis when policy granted it at once, and the rule when the consent in force covers it."""

    denied: Denied | None
    row: Row | None = None
    consent: Row | None = None
    policy: Basis | None = None
    covered: CoverRule | None = None


def request(conn: psycopg.Connection, *, who: Principal, device_id: str, request_id: str, reason: str,
            expires: datetime, policy_firearms_recording: bool, policy_max_reading_age_s: float,
            covers_same_requester: bool, covers_same_incident: bool, incident_id: int | None = None) -> Requested:
    """Record the request, then: covered by the consent in force (by a rule of the force's),
    granted by policy, or left pending for the camera to answer (also while a consent the
    officer gave someone else is in force: the stream runs on for those it covers).
    ``incident_id``: the incident the request names (the caller must see it, and the unit be
    assigned to it)."""
    unit = facts(conn, device_id)
    denied = may_watch(who, unit)
    if denied is None and incident_id is not None:
        found = viewings.incident_for_live_view(conn, incident_id, device_id)
        denied = incident_denied(who, incident_id, IncidentFacts.from_row(found) if found is not None else None)
    if denied is not None or unit is None:
        return Requested(denied)
    row = viewings.create_request(conn, request_id=request_id, device_id=device_id, requested_by=who.username,
                                  reason=reason, expires_at=expires, incident_id=incident_id)
    audit.record(conn, actor=who.username, action="live_view_requested", device_id=device_id,
                 details={"request_id": request_id, "reason": reason, "incident_id": incident_id})
    consent = viewings.active_consent(conn, device_id)
    if consent is not None:
        origin = viewings.get_request(conn, consent["request_id"]) if consent["request_id"] else None
        rule = covering_rule(Basis(consent["basis"]), origin["requested_by"] if origin else None, who.username,
                             same_requester=covers_same_requester,
                             consent_incident=origin["incident_id"] if origin else None, incident=incident_id,
                             same_incident=covers_same_incident)
        if rule is None:
            return Requested(None, row, consent)  # put to the camera, which names the requester
        covered = viewings.cover_request(conn, request_id=request_id, device_id=device_id,
                                         consent_id=consent["consent_id"], rule=rule.value,
                                         detail=covered_detail(consent, rule.value))
        row = covered or row
        write_audits(conn, [audit_covered(device_id, row, consent, rule.value)])
        return Requested(None, row, consent, covered=rule)
    plan = plan_request(unit, policy_firearms_recording=policy_firearms_recording,
                        max_reading_age_s=policy_max_reading_age_s)
    if plan.ask:
        return Requested(None, row)
    assert plan.basis is not None
    consent = viewings.grant_consent(conn, device_id=device_id, basis=plan.basis.value, request_id=request_id)
    row = viewings.answer_request(conn, request_id=request_id, device_id=device_id, status="accepted",
                                  detail="by policy: a firearms unit that is recording") or row
    if consent is not None:
        row = viewings.link_request(conn, request_id=request_id, consent_id=consent["consent_id"]) or row
    audit.record(conn, actor="policy", action="live_view_accepted", device_id=device_id,
                 details={"request_id": request_id, "basis": plan.basis.value,
                          "consent_id": consent["consent_id"] if consent is not None else None})
    return Requested(None, row, consent, plan.basis)


def stop(conn: psycopg.Connection, *, who: Principal, device_id: str) -> tuple[Denied | None, Row | None]:
    """The control room ends the consent in force: (refusal, the consent ended)."""
    denied = may_watch(who, facts(conn, device_id))
    if denied is not None:
        return denied, None
    ended = viewings.end_consent(conn, device_id=device_id, reason="stopped_by_control_room")
    if ended is None:
        return Denied("conflict", f"{device_id} is not live"), None
    audit.record(conn, actor=who.username, action="live_view_ended", device_id=device_id,
                 details={"consent_id": ended["consent_id"], "reason": "stopped_by_control_room"})
    return None, ended


def answer_request(conn: psycopg.Connection, *, device_id: str, request_id: str,
                   answer: ReplyAnswer) -> tuple[Row | None, Row | None]:
    """(the request as answered, the consent it granted); (None, None) when it was not a
    pending request of this camera, or another process was first."""
    row = viewings.answer_request(conn, request_id=request_id, device_id=device_id, status=answer.status,
                                  detail=answer.detail)
    if row is None:
        return None, None
    consent = None
    if answer.accepted:
        consent = viewings.grant_consent(conn, device_id=device_id, basis=Basis.ACCEPTED_REQUEST.value,
                                         request_id=request_id)
        # Accepted while a consent is in force (asked for by someone it does not cover): the
        # officer has now agreed to this requester too, under that consent.
        under = consent or viewings.active_consent(conn, device_id)
        if under is not None:
            row = viewings.link_request(conn, request_id=request_id, consent_id=under["consent_id"]) or row
    write_audits(conn, [audit_request_answered(device_id, request_id, row, answer.accepted)])
    return row, consent


def camera_event(conn: psycopg.Connection, *, device_id: str, kind: str, ts: datetime, seq: int,
                 now: datetime, max_age_s: float) -> tuple[str, Row] | IgnoreEvent | None:
    """("consent_started" or "consent_ended", the consent); an :class:`IgnoreEvent` for a
    watch_me that may not grant (stale, a duplicate or older than one that did); None when
    nothing changed."""
    consent = viewings.active_consent(conn, device_id)
    change = change_for_event(kind, Basis(consent["basis"]) if consent is not None else None,
                              age_s=(now - ts).total_seconds(), max_age_s=max_age_s)
    if isinstance(change, IgnoreEvent):
        return change
    if isinstance(change, GrantConsent):
        unit = viewings.unit_for_live_view(conn, device_id)
        if unit is None or unit["retired"]:
            return None  # not a device in service: nothing it sends grants consent
        if consent is not None:
            return None  # consent in force already: the officer is watched as asked
        granted = viewings.grant_event_consent(conn, device_id=device_id, basis=change.basis.value,
                                               event_ts=ts, event_seq=seq)
        if granted is None:
            return IgnoreEvent("replayed")  # a duplicate, or not newer than one that granted before
        audit.record(conn, actor=f"device:{device_id}", action="live_view_accepted", device_id=device_id,
                     details={"basis": change.basis.value, "consent_id": granted["consent_id"]})
        return "consent_started", granted
    if isinstance(change, EndConsent) and consent is not None:
        ended = viewings.end_consent(conn, device_id=device_id, reason=change.reason,
                                     consent_id=consent["consent_id"])
        if ended is None:
            return None
        write_audits(conn, [audit_consent_ended(f"device:{device_id}", device_id, ended, change.reason)])
        return "consent_ended", ended
    return None


def sweep(conn: psycopg.Connection, *, now: datetime, idle: timedelta) -> tuple[list[Row], list[Row]]:
    """(requests expired unanswered, consents ended): see :func:`workflow.audit_sweep`."""
    expired = viewings.expire_requests(conn, now=now)
    stale = viewings.stale_consents(conn, granted_before=now - idle)
    stale += viewings.end_policy_consents_not_recording(conn)
    orphaned = viewings.end_orphaned_viewings(conn, consent_ended_before=now - _ORPHAN_AFTER)
    write_audits(conn, audit_sweep(expired, stale, orphaned))
    return expired, stale


def ended_consents(conn: psycopg.Connection, consent_ids: list[int]) -> list[Row]:
    """Which of the consents this process streams under have ended (the sweeper reconciles)."""
    return viewings.ended_consents(conn, consent_ids) if consent_ids else []


def units(conn: psycopg.Connection, device_ids: set[str]) -> dict[str, UnitFacts | None]:
    """The units watched in this process as the registry holds them now: one read per unit
    watched, not per viewer (the sweeper checks every viewer's authorisation against them)."""
    return {device_id: facts(conn, device_id) for device_id in device_ids}


def take_over_stream(conn: psycopg.Connection, *, consent: Row, device_id: str, session_id: str, moved: bool,
                     keep: list[str]) -> Row | None:
    """Record ``session_id`` as the consent's stream; None when the consent ended meanwhile.
    ``moved``: another process had recorded it, so its viewings end (except ``keep``)."""
    updated = viewings.set_publisher(conn, consent_id=consent["consent_id"], session_id=session_id)
    if updated is not None and moved:
        for row in viewings.end_viewings_elsewhere(conn, consent_id=consent["consent_id"], keep=keep,
                                                   reason="stream_moved"):
            audit.record(conn, actor=row["viewer"], action="viewing_ended", device_id=device_id,
                         details={"session_id": row["session_id"], "reason": "stream_moved"})
    return updated


def end_publisher_consent(conn: psycopg.Connection, *, device_id: str, session_id: str,
                          reason: str) -> tuple[Row | None, bool]:
    """The stream ``session_id`` ended: (the consent this ended, whether it was the unit's)."""
    consent = viewings.active_consent(conn, device_id)
    if consent is None:
        return None, True  # ended already (and announced by whoever ended it)
    if consent["publisher_session"] != session_id:
        return None, False  # the camera publishes elsewhere now (taken over)
    ended = viewings.end_consent(conn, device_id=device_id, reason=reason, consent_id=consent["consent_id"])
    if ended is not None:
        write_audits(conn, [audit_publisher_ended(device_id, ended, reason)])
    return ended, True


def check_viewer(conn: psycopg.Connection, *, who: Principal, device_id: str, reason: str | None, final: bool,
                 publishing_here: bool) -> tuple[ViewCheck, Row | None]:
    """(may ``who`` watch now, the consent in force); a refusal is recorded and audited."""
    consent = viewings.active_consent(conn, device_id)
    covered = consent is not None and viewer_covered(
        Basis(consent["basis"]), viewings.accepted_requesters(conn, consent["consent_id"]), who.username)
    check = check_viewing(who, device_id, facts(conn, device_id), reason, consent, covered=covered, final=final,
                          publishing_here=publishing_here)
    if check.denied is not None:
        refuse_viewing(conn, who=who, device_id=device_id, reason=reason, refused=check.denied.message)
    return check, consent


def consent_summary(conn: psycopg.Connection, device_id: str) -> tuple[str | None, str | None]:
    """Why the unit's stream is allowed, as its wearer is told: (the consent's basis, the
    reason its request gave); (None, None) with no consent in force."""
    consent = viewings.active_consent(conn, device_id)
    if consent is None:
        return None, None
    origin = viewings.get_request(conn, consent["request_id"]) if consent["request_id"] else None
    return consent["basis"], origin["reason"] if origin is not None else None


def refuse_viewing(conn: psycopg.Connection, *, who: Principal, device_id: str, reason: str | None,
                   refused: str, audited: bool = True) -> None:
    viewings.refuse_viewing(conn, device_id=device_id, viewer=who.username, role=who.role.value, reason=reason,
                            refused=refused)
    if audited:
        audit.record(conn, actor=who.username, action="viewing_refused", device_id=device_id,
                     details={"reason": reason, "refused": refused})


def start_viewing(conn: psycopg.Connection, *, who: Principal, device_id: str, session_id: str, reason: str,
                  consent_id: Any) -> Row:
    row = viewings.start_viewing(conn, session_id=session_id, device_id=device_id, viewer=who.username,
                                 role=who.role.value, reason=reason, consent_id=consent_id)
    audit.record(conn, actor=who.username, action="viewing_started", device_id=device_id,
                 details={"session_id": session_id, "reason": reason, "consent_id": consent_id})
    return row


def end_viewing(conn: psycopg.Connection, *, session_id: str, username: str, device_id: str, reason: str,
                cause: str | None = None) -> None:
    """End the viewing with ``reason`` (``cause``: what ended its stream, when that ended it)."""
    row = viewings.end_viewing(conn, session_id=session_id, reason=reason)
    if row is not None:
        seconds = (row["ended_at"] - row["started_at"]).total_seconds()
        details: dict[str, Any] = {"session_id": session_id, "reason": reason, "duration_s": round(seconds, 1)}
        if cause is not None and cause != reason:
            details["stream_end_reason"] = cause
        audit.record(conn, actor=username, action="viewing_ended", device_id=device_id, details=details)


def idle_facts(conn: psycopg.Connection, device_id: str) -> tuple[Basis | None, bool]:
    """What the idle timeout needs (:func:`viewers.on_idle_timeout`): the basis of the consent
    in force, and whether the unit has a ``watch_me`` alert not yet resolved (open or
    acknowledged)."""
    consent = viewings.active_consent(conn, device_id)
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM alerts WHERE device_id = %s AND kind = 'watch_me'"
                       " AND status <> 'resolved')", (device_id,)).fetchone()
    return (Basis(consent["basis"]) if consent is not None else None), bool(row and row[0])
