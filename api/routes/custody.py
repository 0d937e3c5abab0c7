"""Who carried which camera: a unit's custody windows, an admin's assignments, and an
officer's track across the cameras they carried (telemetry/custody.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from api.deps import Db
from api.errors import ErrorBody
from api.models import Assignment, AssignmentEnd, AssignmentIn, OfficerTrackPoint
from api.routes.devices import Admin, DeviceId, PositionViewer, _audit_read, _locked, _span, _utc, _visible
from core.contract import REGISTRY_TOPIC
from services import assignments, audit
from services.errors import Conflict, NotFound
from services.registry import change_announcement
from telemetry import custody

router = APIRouter(prefix="/api/v1", tags=["custody"],
                   responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 422: {"model": ErrorBody}})

Officer = Annotated[str, Path(min_length=1, max_length=100)]


@router.get("/devices/{device_id}/assignments", response_model=list[Assignment], responses={404: {"model": ErrorBody}},
            summary="Who carried the unit between two times (custody windows, oldest first)")
def device_assignments(device_id: DeviceId, db: Db, who: PositionViewer, start: datetime | None = None,
                       end: datetime | None = None) -> list[Assignment]:
    _visible(db, device_id, who)
    start, end = _span(start, end, timedelta(days=7))
    windows = [Assignment.model_validate(r) for r in custody.assignments(db, device_id, start=start, end=end)]
    _audit_read(db, who, "device_assignments_read", device_id, start, end, len(windows))
    return windows


def _current(db: Db, device_id: str, at: datetime) -> Assignment:
    rows = custody.assignments(db, device_id, start=at, end=at + timedelta(microseconds=1))
    if not rows:
        raise NotFound(f"no custody window of {device_id} at {_utc(at)}")
    return Assignment.model_validate(rows[0])


def _announce(db: Db, request: Request, device_id: str) -> None:
    """The registry's officer follows custody: commit, then let every live feed show it."""
    db.commit()
    request.app.state.hub.publish(REGISTRY_TOPIC, change_announcement(device_id, "updated"))


@router.post("/devices/{device_id}/assignments", response_model=Assignment, status_code=201,
             responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
             summary="Give the unit to an officer from a time (default now), ending its current custody")
def assign(device_id: DeviceId, body: AssignmentIn, db: Db, who: Admin, request: Request) -> Assignment:
    entry = _locked(db, device_id, who)
    if entry.retired:
        raise Conflict(f"device {device_id} is retired")
    start = assignments.assign(db, device_id=device_id, officer=body.officer, callsign=body.callsign, at=body.at,
                               actor=who.username)
    window = _current(db, device_id, start)
    _announce(db, request, device_id)
    return window


@router.post("/devices/{device_id}/assignments/end", response_model=Assignment,
             responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
             summary="End the unit's custody at a time (default now): nobody carries it from then")
def unassign(device_id: DeviceId, body: AssignmentEnd, db: Db, who: Admin, request: Request) -> Assignment:
    _locked(db, device_id, who)
    end = assignments.end_assignment(db, device_id=device_id, at=body.at, actor=who.username)
    rows = custody.assignments(db, device_id, start=end - timedelta(microseconds=1), end=end)
    window = Assignment.model_validate(rows[-1])
    _announce(db, request, device_id)
    return window


@router.get("/officers/{officer}/track", response_model=list[OfficerTrackPoint], responses={404: {"model": ErrorBody}},
            summary="An officer's GPS track across the cameras they carried, simplified to at most max_points")
def officer_track(officer: Officer, db: Db, who: PositionViewer, start: datetime | None = None,
                  end: datetime | None = None,
                  max_points: Annotated[int, Query(ge=2, le=5000)] = 1000) -> list[OfficerTrackPoint]:
    start, end = _span(start, end, timedelta(hours=12))
    points, devices = custody.officer_track(db, officer, start=start, end=end, max_points=max_points,
                                            boroughs=who.areas)
    if not devices:  # an officer seen only on units outside the caller's area is as unknown as none
        raise NotFound(f"no officer {officer} on a unit in your area between {_utc(start)} and {_utc(end)}")
    # One entry per unit read, so that an auditor sees the reads of their own area's units only.
    for device_id in devices:
        audit.record(db, actor=who.username, action="officer_track_read", device_id=device_id,
                     details={"officer": officer, "start": _utc(start), "end": _utc(end),
                              "rows": sum(p["device_id"] == device_id for p in points)})
    return [OfficerTrackPoint.model_validate(p) for p in points]
