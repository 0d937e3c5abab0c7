"""Live-view consent: the pure decisions (who may watch, what a request does, when a stream
must stop). No I/O here; :mod:`services.live_view.workflow` builds on them.

A camera streams only under a consent in force, which always has a basis:

* ``officer_request``: the officer asked to be watched (the camera's ``watch_me`` event);
* ``accepted_request``: the control room asked and the camera (its officer) accepted;
* ``policy_recording``: the force's policy lets a firearms unit that is already recording be
  watched without asking (``WATCHFLOOR_LIVE_VIEW_POLICY_FIREARMS_RECORDING``); the camera is
  told, and the consent ends when the recording does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from services.accounts import Principal, Role
from services.errors import ServiceError, refusal

__all__ = [
    "VIEWING_ROLES",
    "Basis",
    "Denied",
    "RequestPlan",
    "UnitFacts",
    "clean_reason",
    "may_watch",
    "plan_request",
    "stop_reason_for_event",
]

#: Roles that may watch live video (in their areas). A fleet manager or an auditor never does.
VIEWING_ROLES = frozenset({Role.OPERATOR, Role.FIREARMS_COMMANDER})
_REASON_MIN, _REASON_MAX = 3, 200


class Basis(StrEnum):
    OFFICER_REQUEST = "officer_request"
    ACCEPTED_REQUEST = "accepted_request"
    POLICY_RECORDING = "policy_recording"


@dataclass(frozen=True)
class UnitFacts:
    """What the decisions need to know of a unit (:func:`services.viewings.unit_for_live_view`)."""

    device_id: str
    borough: str | None
    role: str
    recording: str
    online: bool
    retired: bool
    incident_owners: frozenset[str]  # who created the open incidents the unit is assigned to
    incident_boroughs: frozenset[str]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "UnitFacts":
        return cls(device_id=row["device_id"], borough=row["borough"], role=row["role"],
                   recording=row["recording"], online=bool(row["online"]), retired=bool(row["retired"]),
                   incident_owners=frozenset(row["incident_owners"]),
                   incident_boroughs=frozenset(row["incident_boroughs"]))


@dataclass(frozen=True)
class Denied:
    """Why not; ``kind`` is the code of the refusal in :mod:`services.errors` (403, 404, 409)."""

    kind: Literal["forbidden", "not_found", "conflict"]
    message: str

    def error(self) -> ServiceError:
        """The exception to raise for this refusal."""
        return refusal(self.kind, self.message)


def may_watch(who: Principal, unit: UnitFacts | None) -> Denied | None:
    """May ``who`` ask for, or watch, this unit's live video? None means yes.

    An operator: units in their areas. A firearms commander: units in their areas, and the
    units assigned to an open incident that they created or whose borough they cover. A unit
    outside what the caller may see answers 404, as everywhere in the API.
    """
    if who.role not in VIEWING_ROLES:
        return Denied("forbidden", f"role {who.role.value} may not watch live video")
    if unit is None or unit.retired:
        return Denied("not_found", "no such device in your area")
    if who.covers(unit.borough):
        return None
    if who.role is Role.FIREARMS_COMMANDER and (
            who.username in unit.incident_owners or any(who.covers(b) for b in unit.incident_boroughs)):
        return None
    return Denied("not_found", f"no device {unit.device_id} in your area")


@dataclass(frozen=True)
class RequestPlan:
    """What a control-room request does: ask the camera, or grant at once by policy."""

    ask: bool
    basis: Basis | None  # the consent granted now, when ``ask`` is False


def plan_request(unit: UnitFacts, *, policy_firearms_recording: bool) -> RequestPlan:
    if policy_firearms_recording and unit.role == "firearms" and unit.recording == "recording":
        return RequestPlan(ask=False, basis=Basis.POLICY_RECORDING)
    return RequestPlan(ask=True, basis=None)


def stop_reason_for_event(event_type: str, basis: Basis) -> str | None:
    """The reason to end a consent of ``basis`` when the camera reports ``event_type``, or None.

    A policy consent rests on the recording, so it ends with it; any stream stops when the
    camera goes into its dock (it is off duty).
    """
    if event_type == "recording_stopped" and basis is Basis.POLICY_RECORDING:
        return "recording_stopped"
    if event_type == "docked":
        return "docked"
    return None


def clean_reason(raw: str | None) -> str | None:
    """A viewing or request reason, trimmed; None when absent, too short, too long, or
    holding control characters (a NUL cannot even be stored in PostgreSQL text)."""
    if raw is None:
        return None
    reason = " ".join(raw.split())
    if not reason.isprintable():
        return None
    return reason if _REASON_MIN <= len(reason) <= _REASON_MAX else None
