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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from core.commands import CommandType, ReplyStatus
from services.accounts import Principal
from services.consent import Basis, Denied, UnitFacts, may_watch, stop_reason_for_event

__all__ = [
    "Announce",
    "ArmIdle",
    "Audit",
    "CancelIdle",
    "CloseStream",
    "Effect",
    "EndConsent",
    "GrantConsent",
    "IgnoreEvent",
    "ReplyAnswer",
    "ViewCheck",
    "WearerView",
    "Watcher",
    "after_change",
    "after_consent_ended",
    "after_consent_started",
    "after_publisher_gone",
    "after_reconcile",
    "after_request_answered",
    "after_stream_started",
    "after_sweep",
    "after_viewer_joined",
    "after_viewer_left",
    "announcement",
    "audit_consent_ended",
    "audit_covered",
    "audit_publisher_ended",
    "audit_request_answered",
    "audit_sweep",
    "change_for_event",
    "covered_detail",
    "check_viewing",
    "on_idle_timeout",
    "reply_answer",
    "status_params",
    "viewer_end_reason",
    "viewing_over",
    "viewing_end_for_stream",
    "wearer_label",
]

Row = Mapping[str, Any]


@dataclass(frozen=True)
class SendCommand:
    device_id: str
    kind: CommandType
    params: Mapping[str, Any]
    command_id: str | None = None  # a fresh one when None


@dataclass(frozen=True)
class Announce:
    event: str
    device_id: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CloseStream:
    """Close this process's stream of ``device_id`` (nothing when there is none)."""

    device_id: str
    reason: str


@dataclass(frozen=True)
class ArmIdle:
    """(Re)start the no-viewer timer of ``device_id``'s stream."""

    device_id: str


@dataclass(frozen=True)
class CancelIdle:
    device_id: str


@dataclass(frozen=True)
class Audit:
    actor: str
    action: str
    device_id: str
    details: Mapping[str, Any]


Effect = SendCommand | Announce | CloseStream | ArmIdle | CancelIdle


def announcement(effect: Announce) -> dict[str, Any]:
    """The message published on the live-view topic for ``effect``."""
    body = {"type": "live_view", "event": effect.event, "device_id": effect.device_id, **effect.fields}
    request = effect.fields.get("request")
    if request is not None:  # a request's answer, flat as well: what a client matches on
        body.update(request_id=request["request_id"], status=request["status"], detail=request["detail"])
    return body


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
                  "covered_rule": rule})


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


# the stream and its viewers

# How a viewing ends, in the record's words (viewing_sessions.end_reason, the viewing_ended
# audit entry): viewer_stopped (the viewer closed it: WHEP DELETE), officer_stopped (the
# camera's WHIP DELETE), consent_ended (the control room, the recording or the dock ended the
# consent; the audit entry says which), idle (the stream stopped with no viewer connected),
# camera_gone (the camera's connection vanished), connection_lost (the viewer's own
# connection failed or closed without a DELETE), never_connected, server_stopping,
# stream_moved (the camera dialled in to another API process), stream_ended (the relay ended
# the stream for a reason this process was not told), device_retired and device_reprovisioned
# (the registry retired the camera or gave it a new secret: services.registry ends its consent),
# authorisation_ended (the viewer's token expired or was revoked, or their role or areas no
# longer cover the unit), max_length (the viewing reached live_view_max_viewing_s).
# The relay's words for a viewer's session that ended on its own:
_VIEWER_END = {"publisher_ended": "stream_ended", "connection_failed": "connection_lost",
               "connection_closed": "connection_lost", "setup_timeout": "never_connected",
               "relay_closed": "server_stopping"}
# Why the camera's stream ended (the consent's end_reason) -> why its viewings ended.
_STREAM_END = {"officer_stopped": "officer_stopped", "camera_lost": "camera_gone", "no_viewers": "idle",
               "server_stopping": "server_stopping", "device_retired": "device_retired",
               "device_reprovisioned": "device_reprovisioned"}


@dataclass(frozen=True)
class ViewCheck:
    """May the caller watch now: refused (``denied``), or wait for the camera to dial in."""

    denied: Denied | None
    waiting: bool = False


def check_viewing(who: Principal, device_id: str, unit: UnitFacts | None, reason: str | None,
                  consent: Row | None, *, covered: bool, final: bool, publishing_here: bool) -> ViewCheck:
    """Whether ``who`` may watch the unit now (``reason``: theirs, cleaned; ``consent``: the one
    in force; ``covered``: it covers ``who``, :func:`services.consent.viewer_covered`). A
    consent whose camera has not started streaming yet means wait, unless this is the
    ``final`` check. The stream must run in this process (WHEP is routed like WHIP)."""
    denied = may_watch(who, unit)
    if denied is None and reason is None:
        denied = Denied("forbidden", "a reason is required to watch (header X-Viewing-Reason, 3 to 200 characters)")
    if denied is not None:
        return ViewCheck(denied)
    if consent is None:
        return ViewCheck(Denied("conflict", f"{device_id} is not live (no consent in force)"))
    if not covered:
        return ViewCheck(Denied("forbidden", f"the officer of {device_id} consented to another requester: ask"
                                             f" the camera (POST /api/v1/devices/{device_id}/live-view) first"))
    if consent["publisher_session"] is None:
        if not final:
            return ViewCheck(None, waiting=True)
        return ViewCheck(Denied("conflict", f"{device_id} has consent but its camera has not started streaming"))
    if not publishing_here:
        return ViewCheck(Denied("conflict", f"{device_id} streams through another API process"))
    return ViewCheck(None)


def viewer_end_reason(relay_reason: str | None) -> str:
    return _VIEWER_END.get(relay_reason or "", relay_reason or "closed")


def viewing_end_for_stream(stream_reason: str) -> str:
    """Why a viewing ended when its stream did (``stream_reason``: the consent's end reason):
    anything but the officer, the camera vanishing, idleness or shutdown ended the consent."""
    return _STREAM_END.get(stream_reason, "consent_ended")


def viewing_over(who: Principal, unit: UnitFacts | None, *, token_ended: str | None, watched_s: float,
                 max_s: float) -> str | None:
    """Why an open viewing must end now (None: it goes on). Authorisation holds for the whole
    viewing, not only its start: ``token_ended`` (why the viewer's token is over, expired or
    revoked: :meth:`services.sessions.TokenVersions.ended`) or a role or areas that no longer
    cover the unit (``unit``: as the registry holds it now) end it (``authorisation_ended``);
    so does reaching the force's maximum length (``max_length``), after which the viewer
    asks again, with a reason."""
    if token_ended is not None or may_watch(who, unit) is not None:
        return "authorisation_ended"
    if watched_s >= max_s:
        return "max_length"
    return None


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


@dataclass(frozen=True)
class Watcher:
    """A viewer whose peer connection is connected (one who counts), as the wearer is told."""

    username: str
    display_name: str | None
    role: str
    since: datetime  # when it connected
    reason: str


@dataclass(frozen=True)
class WearerView:
    """What the camera shows its officer: who watches (in the order they joined) and why the
    stream is allowed (the consent's basis, and the reason the request gave, if any)."""

    watchers: Sequence[Watcher]
    basis: str | None
    reason: str | None


def wearer_label(watcher: Watcher, sees: str) -> str:
    """How a viewer is named to the wearer, by the force's choice (``WATCHFLOOR_LIVE_VIEW_WEARER_SEES``):
    ``name`` (display name, else username), ``callsign`` (the username), or ``role`` only."""
    if sees == "role":
        return watcher.role
    if sees == "callsign":
        return watcher.username
    return watcher.display_name or watcher.username


def _rfc3339(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def status_params(view: WearerView, *, sees: str) -> dict[str, Any]:
    """The ``live_view_status`` command's params (docs/mqtt-contract.md, contract 1.1): the
    count (all a 1.0 camera reads), the list, and the consent's basis and reason."""
    watching = [{"name": wearer_label(w, sees), "role": w.role, "since": _rfc3339(w.since), "reason": w.reason}
                for w in view.watchers]
    return {"viewers": len(watching), "watching": watching, "basis": view.basis, "reason": view.reason}


def after_viewer_joined(device_id: str, username: str, view: WearerView, *, sees: str) -> list[Effect]:
    """A viewer's peer connection is connected: now it watches, and the camera is told who."""
    return [CancelIdle(device_id),
            SendCommand(device_id, CommandType.LIVE_VIEW_STATUS, status_params(view, sees=sees)),
            Announce("viewer_joined", device_id, {"viewer": username, "viewers": len(view.watchers)})]


def after_viewer_left(device_id: str, username: str, reason: str, *, view: WearerView | None,
                      sees: str) -> list[Effect]:
    """A viewer's session ended (``view``: who is left, when the stream runs here; None when it
    does not). The camera is told who is left; the last one gone starts the idle timer."""
    effects: list[Effect] = []
    if view is not None:
        effects.append(SendCommand(device_id, CommandType.LIVE_VIEW_STATUS, status_params(view, sees=sees)))
    count = len(view.watchers) if view is not None else 0
    effects.append(Announce("viewer_left", device_id, {"viewer": username, "viewers": count, "reason": reason}))
    if view is not None and count == 0:
        effects.append(ArmIdle(device_id))
    return effects


def on_idle_timeout(device_id: str, *, publishing: bool, viewers: int, basis: Basis | None,
                    watch_me_open: bool) -> list[Effect]:
    """The idle timer fired: a stream still without a viewer stops, unless the officer asked
    to be watched (``basis`` officer_request) and their ``watch_me`` alert is not resolved yet
    (``watch_me_open``): the control room has not dealt with it, so the stream waits for a
    viewer, and the timer runs again (the stream stops one idle time after the alert is
    resolved, if nobody watches by then)."""
    if not publishing or viewers > 0:
        return []
    if basis is Basis.OFFICER_REQUEST and watch_me_open:
        return [ArmIdle(device_id)]
    return [CloseStream(device_id, "no_viewers")]
