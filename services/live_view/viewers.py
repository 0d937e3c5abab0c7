"""Live view's pure decisions about viewers: who may start watching, when a viewing is over,
how it ended in the record's words, what the wearer is told of who watches, and what a
stream with no viewer does. No I/O; see :mod:`services.live_view.workflow` for the rest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from core.commands import CommandType
from services.accounts import Principal
from services.consent import Basis, Denied, UnitFacts, may_watch
from services.live_view.effects import Announce, ArmIdle, CancelIdle, CloseStream, Effect, Row, SendCommand

__all__ = ["ViewCheck", "Watcher", "WearerView", "after_viewer_joined", "after_viewer_left", "check_viewing",
           "on_idle_timeout", "status_params", "viewer_end_reason", "viewing_end_for_stream", "viewing_over",
           "wearer_label"]


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
