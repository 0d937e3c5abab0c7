"""Live-view consent: the pure decisions (who may watch, what a request does, when a stream
must stop). No I/O here; :mod:`services.live_view.workflow` builds on them.

A camera streams only under a consent in force, which always has a basis:

* ``officer_request``: the officer asked to be watched (the camera's ``watch_me`` event);
* ``accepted_request``: the control room asked and the camera (its officer) accepted;
* ``policy_recording``: the force's policy lets a firearms unit that is already recording be
  watched without asking (``WATCHFLOOR_LIVE_VIEW_POLICY_FIREARMS_RECORDING``); the camera is
  told, and the consent ends when the recording does. The policy looks at the unit as it is
  now: online, with a reading no older than ``WATCHFLOOR_LIVE_VIEW_POLICY_MAX_READING_AGE_S``.

A consent covers a viewer only by a rule the force has set (:func:`covering_rule`: the same
requester, the same incident; docs/live-view.md "Who a consent covers"); anyone else's
request is put to the camera, which names them to its officer.
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
    "CoverRule",
    "Denied",
    "RequestPlan",
    "IncidentFacts",
    "UnitFacts",
    "clean_reason",
    "covering_rule",
    "incident_denied",
    "may_watch",
    "plan_request",
    "stop_reason_for_event",
    "viewer_covered",
]

#: Roles that may watch live video (in their areas). A fleet manager or an auditor never does.
VIEWING_ROLES = frozenset({Role.OPERATOR, Role.FIREARMS_COMMANDER})
_REASON_MIN, _REASON_MAX = 3, 200


class Basis(StrEnum):
    OFFICER_REQUEST = "officer_request"
    ACCEPTED_REQUEST = "accepted_request"
    POLICY_RECORDING = "policy_recording"


class CoverRule(StrEnum):
    """Why a consent in force covers someone the camera was not asked about."""

    SAME_REQUESTER = "same_requester"  # they made the request the officer accepted
    SAME_INCIDENT = "same_incident"  # their request names the incident the accepted request named
    OFFICER_ASKED = "officer_asked"  # the officer asked the control room to watch (watch_me)
    POLICY_RECORDING = "policy_recording"  # the force's policy for a recording firearms unit


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
    reading_age_s: float | None = None  # how old its latest reading is (None: never reported)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "UnitFacts":
        return cls(device_id=row["device_id"], borough=row["borough"], role=row["role"],
                   recording=row["recording"], online=bool(row["online"]), retired=bool(row["retired"]),
                   incident_owners=frozenset(row["incident_owners"]),
                   incident_boroughs=frozenset(row["incident_boroughs"]),
                   reading_age_s=row.get("reading_age_s"))


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


def plan_request(unit: UnitFacts, *, policy_firearms_recording: bool, max_reading_age_s: float) -> RequestPlan:
    """Policy grants only on the unit's current state: a firearms unit that went offline while
    recording (its last reading still says so) is asked like any other."""
    current = unit.online and unit.reading_age_s is not None and unit.reading_age_s <= max_reading_age_s
    if policy_firearms_recording and current and unit.role == "firearms" and unit.recording == "recording":
        return RequestPlan(ask=False, basis=Basis.POLICY_RECORDING)
    return RequestPlan(ask=True, basis=None)


@dataclass(frozen=True)
class IncidentFacts:
    """What the decisions need to know of an incident a request names
    (:func:`services.viewings.incident_for_live_view`)."""

    incident_id: int
    borough: str | None
    open: bool
    unit_assigned: bool  # the unit asked for is assigned to it

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "IncidentFacts":
        return cls(incident_id=int(row["incident_id"]), borough=row["borough"], open=bool(row["open"]),
                   unit_assigned=bool(row["unit_assigned"]))


def incident_denied(who: Principal, incident_id: int, incident: IncidentFacts | None) -> Denied | None:
    """May a request by ``who`` name this incident? None means yes: they see it (it is in their
    areas, as ``GET /api/v1/incidents/{id}`` says), it is open, and the unit is assigned to it.
    An incident they may not see answers 404, as everywhere in the API."""
    if incident is None or not who.covers(incident.borough):
        return Denied("not_found", f"no incident {incident_id} in your area")
    if not incident.open:
        return Denied("conflict", f"incident {incident_id} is closed")
    if not incident.unit_assigned:
        return Denied("conflict", f"the unit is not assigned to incident {incident_id}")
    return None


def covering_rule(basis: Basis, consent_requester: str | None, username: str, *, same_requester: bool,
                  consent_incident: int | None = None, incident: int | None = None,
                  same_incident: bool = False) -> CoverRule | None:
    """The rule by which the consent in force (of ``basis``, granted on ``consent_requester``'s
    request, which named ``consent_incident``) covers a later request by ``username`` naming
    ``incident``; None: put it to the camera.

    An officer who asked to be watched asked the control room, not one person; a policy
    consent rests on the force's policy, not on a person. A consent the officer gave to one
    requester covers that requester again, and anyone whose request names the incident that
    request named (each when the force says so); nobody else.
    """
    if basis is Basis.OFFICER_REQUEST:
        return CoverRule.OFFICER_ASKED
    if basis is Basis.POLICY_RECORDING:
        return CoverRule.POLICY_RECORDING
    if same_requester and consent_requester is not None and consent_requester == username:
        return CoverRule.SAME_REQUESTER
    if same_incident and consent_incident is not None and consent_incident == incident:
        return CoverRule.SAME_INCIDENT
    return None


def viewer_covered(basis: Basis, accepted_requesters: frozenset[str], username: str) -> bool:
    """May ``username`` join the stream under the consent in force? ``accepted_requesters``:
    whose requests were accepted under it (by the officer, or covered by a rule)."""
    if basis is Basis.ACCEPTED_REQUEST:
        return username in accepted_requesters
    return covering_rule(basis, None, username, same_requester=False) is not None


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
