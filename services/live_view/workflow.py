"""Live view's pure decisions: given what happened and what the records say, the effects.

No I/O here. Each function takes an event (a camera's reply or event, a sweep's findings, a
viewer joining or leaving, an idle timeout, a change announced by another process) and the
rows the transaction found, and returns the effects as plain data, in the order they must
happen: :class:`SendCommand` (to a camera), :class:`Announce` (to every API process and the
control room), :class:`CloseStream` (end this process's WHIP session, and so its viewers),
:class:`ArmIdle` / :class:`CancelIdle` (the no-viewer timer), and :class:`Audit` rows, which
the caller writes in the same transaction as the records they describe.
:class:`services.live_view.LiveView` performs them. Who may watch, what a request does and
when a camera's event ends a consent are in :mod:`services.consent`.

The rule every function keeps: a consent that ends closes its stream (:class:`CloseStream`),
and a stream that ends ends its consent, so no stream runs without a consent in force.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from core.commands import CommandType, ReplyStatus
from services.consent import Basis, stop_reason_for_event
from services.live_view.effects import Announce, ArmIdle, Audit, CloseStream, Effect, Row, SendCommand

__all__ = [
    "EndConsent",
    "GrantConsent",
    "IgnoreEvent",
    "ReplyAnswer",
    "after_change",
    "after_consent_ended",
    "after_consent_started",
    "after_publisher_gone",
    "after_reconcile",
    "after_request_answered",
    "after_stream_started",
    "after_sweep",
    "audit_consent_ended",
    "audit_covered",
    "audit_publisher_ended",
    "audit_request_answered",
    "audit_sweep",
    "change_for_event",
    "covered_detail",
    "reply_answer",
]


# the camera answers a request


@dataclass(frozen=True)
class ReplyAnswer:
    """A camera's answer to a live-view request, in the record's words."""

    accepted: bool
    detail: str | None

    @property
    def status(self) -> Literal["accepted", "declined"]:
        return "accepted" if self.accepted else "declined"


def reply_answer(status: ReplyStatus, detail: str | None) -> ReplyAnswer | None:
    """What a command reply says of a request; None when it answers none ("done" answers a
    status or stop command). Anything but acceptance declines, and says why."""
    if status not in (ReplyStatus.ACCEPTED, ReplyStatus.DECLINED, ReplyStatus.FAILED, ReplyStatus.EXPIRED):
        return None
    # The camera's words are shown to people and stored: printable characters only.
    clean = "".join(c for c in detail if c.isprintable()) if detail else None
    accepted = status is ReplyStatus.ACCEPTED
    return ReplyAnswer(accepted, clean or (None if accepted else status.value))


def audit_request_answered(device_id: str, request_id: str, row: Row, accepted: bool) -> Audit:
    """The camera (its officer) answered: accepted (under the consent in ``row``) or declined."""
    return Audit(f"device:{device_id}", "live_view_accepted" if accepted else "live_view_declined", device_id,
                 {"request_id": request_id, "requested_by": row["requested_by"], "detail": row["detail"],
                  "basis": Basis.ACCEPTED_REQUEST.value if accepted else None,
                  "consent_id": row.get("consent_id"), "accepted_by": "officer" if accepted else None})


def covered_detail(consent: Row, rule: str) -> str:
    """The record's words for a request the camera was not asked about."""
    of = f" of request {consent['request_id']}" if consent.get("request_id") else f" ({consent['basis']})"
    return f"covered by consent {consent['consent_id']}{of} (rule: {rule.replace('_', ' ')})"


def audit_covered(device_id: str, row: Row, consent: Row, rule: str) -> Audit:
    """A request accepted by the force's rule under the consent in force, not by the officer."""
    return Audit("policy", "live_view_accepted", device_id,
                 {"request_id": row["request_id"], "requested_by": row["requested_by"], "basis": consent["basis"],
                  "consent_id": consent["consent_id"], "covered_by_request": consent.get("request_id"),
                  "covered_rule": rule, "incident_id": row.get("incident_id")})


def after_request_answered(device_id: str, row: Row | None, consent: Row | None) -> list[Effect]:
    """``row`` is the request as answered (None: not pending, or another process was first)."""
    if row is None:
        return []
    return [Announce(row["status"], device_id, {"request": row, "consent": consent})]


# the camera's events: watch_me grants, recording_stopped and docked may end


@dataclass(frozen=True)
class GrantConsent:
    basis: Basis


@dataclass(frozen=True)
class EndConsent:
    reason: str


@dataclass(frozen=True)
class IgnoreEvent:
    """An event that would grant consent but may not: ``reason`` is counted and logged."""

    reason: str


def change_for_event(kind: str, consent_basis: Basis | None, *, age_s: float,
                     max_age_s: float) -> GrantConsent | EndConsent | IgnoreEvent | None:
    """What a camera's event does to its consent (``consent_basis``: the one in force, if any;
    ``age_s``: how old the event is, by its ``ts``).

    ``watch_me`` asks for a consent, if it is fresh: one sent late from the camera's buffer
    (older than ``max_age_s``) is the officer's wish of then, not of now. (The records grant
    none when one is in force already, or when the event is not newer than one that granted
    consent before: a QoS 1 duplicate.) An event that ends the consent in force
    (:func:`services.consent.stop_reason_for_event`) ends it, however old: ending is safe.
    """
    if kind == "watch_me":
        if age_s > max_age_s:
            return IgnoreEvent("stale")
        return GrantConsent(Basis.OFFICER_REQUEST)
    if consent_basis is None:
        return None
    reason = stop_reason_for_event(kind, consent_basis)
    return EndConsent(reason) if reason is not None else None


def after_consent_started(device_id: str, consent: Row) -> list[Effect]:
    """The officer's ``watch_me`` is on record: only now is the camera told to dial in (a
    ``live_view_request`` with basis ``officer_request``), so its WHIP finds the consent in
    force. (A camera that dialled in as it sent the event raced the event to the database.)"""
    return [SendCommand(device_id, CommandType.LIVE_VIEW_REQUEST,
                        {"requested_by": "officer", "reason": "the officer asked to be watched",
                         "basis": Basis.OFFICER_REQUEST.value},
                        command_id=f"wm-{consent['consent_id']}"),
            Announce("consent_started", device_id, {"consent": consent})]


def audit_consent_ended(actor: str, device_id: str, ended: Row, reason: str) -> Audit:
    return Audit(actor, "live_view_ended", device_id,
                 {"consent_id": ended["consent_id"], "basis": ended["basis"], "reason": reason})


def after_consent_ended(device_id: str, ended: Row, reason: str) -> list[Effect]:
    """A consent ended here (an event, the control room, the sweeper): the camera is told to
    stop, everyone is told, and the stream closes."""
    return [SendCommand(device_id, CommandType.LIVE_VIEW_STOP, {"reason": reason}),
            Announce("consent_ended", device_id, {"consent": ended, "reason": reason}),
            CloseStream(device_id, reason)]


def after_change(change: Mapping[str, Any], *, publishing_here: bool) -> list[Effect]:
    """A live-view change from any API process: a consent ended elsewhere closes the stream here."""
    if change.get("event") == "consent_ended" and publishing_here:
        return [CloseStream(str(change.get("device_id")), str(change.get("reason") or "consent_ended"))]
    return []


# the sweeper


def audit_sweep(expired: Sequence[Row], stale: Sequence[Row], orphaned: Sequence[Row]) -> list[Audit]:
    """The audit rows of a sweep: requests that expired unanswered, consents that ended (never
    streamed within the idle time, or a policy consent whose recording stopped), viewings whose
    process died."""
    audits = [Audit("system", "live_view_declined", row["device_id"],
                    {"request_id": row["request_id"], "detail": row["detail"], "expired": True}) for row in expired]
    audits += [audit_consent_ended("system", row["device_id"], row, row["end_reason"]) for row in stale]
    audits += [Audit(row["viewer"], "viewing_ended", row["device_id"],
                     {"session_id": row["session_id"], "reason": "consent_ended"}) for row in orphaned]
    return audits


def after_sweep(expired: Sequence[Row], stale: Sequence[Row]) -> list[Effect]:
    effects: list[Effect] = [Announce("expired", row["device_id"], {"request": row}) for row in expired]
    for row in stale:
        effects += after_consent_ended(row["device_id"], row, row["end_reason"])
    return effects


# the stream


def after_reconcile(ended: Sequence[Row]) -> list[Effect]:
    """Consents that ended while this process streamed under them, found by the sweeper in
    the database (``ended``: each with its ``device_id`` and ``end_reason``): the one that ended
    it may have announced it while this process was away from the broker (announcements are
    not kept), or the registry ended it (a device retired or given a new secret, from the
    API or the command line). The camera is told to stop, and the stream closes here with the
    consent's own reason, so its viewings record why."""
    effects: list[Effect] = []
    for row in ended:
        reason = str(row["end_reason"] or "consent_ended")
        effects += [SendCommand(row["device_id"], CommandType.LIVE_VIEW_STOP, {"reason": reason}),
                    CloseStream(row["device_id"], reason)]
    return effects


def audit_publisher_ended(device_id: str, ended: Row, reason: str) -> Audit:
    """The camera ended it (its officer, or by vanishing), or the system did."""
    actor = f"device:{device_id}" if reason in ("officer_stopped", "camera_lost") else "system"
    return audit_consent_ended(actor, device_id, ended, reason)


def after_publisher_gone(device_id: str, reason: str, *, ended: Row | None, current: bool) -> list[Effect]:
    """The camera's stream here ended: ``ended`` is the consent this ended (None when it had
    ended already, or the camera streams elsewhere now); ``current``: the stream was the
    unit's (not one taken over by another process). A camera that stopped by itself is not
    told to stop. (Its idle timer was cancelled when it ended: by now the camera may be
    streaming again, under a timer of its own.)"""
    effects: list[Effect] = []
    if ended is not None:
        if reason != "officer_stopped":
            effects.append(SendCommand(device_id, CommandType.LIVE_VIEW_STOP, {"reason": reason}))
        effects.append(Announce("consent_ended", device_id, {"consent": ended, "reason": reason}))
    if current:
        effects.append(Announce("stream_ended", device_id, {"reason": reason, "viewers": 0}))
    return effects


def after_stream_started(device_id: str, consent: Row) -> list[Effect]:
    """No viewer yet: the idle timer runs from now."""
    return [Announce("stream_started", device_id, {"consent": consent, "viewers": 0}), ArmIdle(device_id)]


