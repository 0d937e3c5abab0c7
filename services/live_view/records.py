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
from services.consent import Basis, Denied, UnitFacts, may_watch, plan_request
from services.live_view.workflow import (
    Audit,
    EndConsent,
    GrantConsent,
    ReplyAnswer,
    ViewCheck,
    audit_consent_ended,
    audit_publisher_ended,
    audit_request_answered,
    audit_sweep,
    change_for_event,
    check_viewing,
)

__all__ = [
    "Requested",
    "answer_request",
    "camera_event",
    "check_viewer",
    "end_publisher_consent",
    "end_viewing",
    "facts",
    "refuse_viewing",
    "request",
    "start_viewing",
    "stop",
    "sweep",
    "take_over_stream",
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
    and the basis when policy granted it at once."""

    denied: Denied | None
    row: Row | None = None
    consent: Row | None = None
    policy: Basis | None = None


def request(conn: psycopg.Connection, *, who: Principal, device_id: str, request_id: str, reason: str,
            expires: datetime, policy_firearms_recording: bool) -> Requested:
    unit = facts(conn, device_id)
    denied = may_watch(who, unit)
    if denied is not None or unit is None:
        return Requested(denied)
    row = viewings.create_request(conn, request_id=request_id, device_id=device_id, requested_by=who.username,
                                  reason=reason, expires_at=expires)
    audit.record(conn, actor=who.username, action="live_view_requested", device_id=device_id,
                 details={"request_id": request_id, "reason": reason})
    consent = viewings.active_consent(conn, device_id)
    if consent is not None:
        row = viewings.answer_request(conn, request_id=request_id, device_id=device_id, status="accepted",
                                      detail=f"consent already in force ({consent['basis']})") or row
        return Requested(None, row, consent)
    plan = plan_request(unit, policy_firearms_recording=policy_firearms_recording)
    if plan.ask:
        return Requested(None, row)
    assert plan.basis is not None
    consent = viewings.grant_consent(conn, device_id=device_id, basis=plan.basis.value, request_id=request_id)
    row = viewings.answer_request(conn, request_id=request_id, device_id=device_id, status="accepted",
                                  detail="by policy: a firearms unit that is recording") or row
    audit.record(conn, actor="policy", action="live_view_accepted", device_id=device_id,
                 details={"request_id": request_id, "basis": plan.basis.value})
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
    write_audits(conn, [audit_request_answered(device_id, request_id, row, answer.accepted)])
    return row, consent


def camera_event(conn: psycopg.Connection, *, device_id: str, kind: str) -> tuple[str, Row] | None:
    """("consent_started" or "consent_ended", the consent), or None when nothing changed."""
    consent = viewings.active_consent(conn, device_id)
    change = change_for_event(kind, Basis(consent["basis"]) if consent is not None else None)
    if isinstance(change, GrantConsent):
        unit = viewings.unit_for_live_view(conn, device_id)
        if unit is None or unit["retired"]:
            return None  # not a device in service: nothing it sends grants consent
        granted = viewings.grant_consent(conn, device_id=device_id, basis=change.basis.value, request_id=None)
        if granted is None:
            return None  # consent in force already, or another process granted it
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
    check = check_viewing(who, device_id, facts(conn, device_id), reason, consent, final=final,
                          publishing_here=publishing_here)
    if check.denied is not None:
        refuse_viewing(conn, who=who, device_id=device_id, reason=reason, refused=check.denied.message)
    return check, consent


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
