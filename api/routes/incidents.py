"""Incidents: firearms commanders and operators see each assigned unit's position, battery
and recording state, and an alert marks an assigned firearms unit that is not recording."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from api.areas import ForceAreas, check_known
from api.auth import require
from api.deps import Db
from api.errors import ErrorBody
from api.models import DEVICE_ID
from core.contract import ALERTS_TOPIC
from services import audit
from services.accounts import HANDLES_ALERTS, Principal, Role
from services.errors import InvalidRequest, NotFound
from telemetry import incidents, queries
from telemetry.alert_policy_store import load_policy
from telemetry.alerts import Geofence, evaluate_incidents

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"],
                   responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody},
                              422: {"model": ErrorBody}})

Commander = Annotated[Principal, Depends(require(*HANDLES_ALERTS))]
IncidentId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class IncidentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(min_length=1, max_length=200)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    radius_m: float = Field(gt=0, description="the incident area: a circle around (lat, lon), metres, at most"
                                              " WATCHFLOOR_INCIDENT_MAX_RADIUS_M (default 2,000)")
    borough: str | None = Field(default=None, max_length=64)


class Incident(BaseModel):
    id: int
    title: str
    lat: float
    lon: float
    radius_m: float
    borough: str | None
    status: str
    created_by: str
    created_at: datetime
    closed_at: datetime | None


class AssignedUnit(BaseModel):
    device_id: str
    callsign: str | None
    officer: str | None
    borough: str | None
    role: str
    ts: datetime | None
    lat: float | None
    lon: float | None
    accuracy_m: float | None
    gps_fix: bool | None
    battery_pct: float | None
    charging: bool | None
    recording: str | None
    online: bool
    inside_area: bool
    not_recording: bool = Field(description="an assigned firearms unit that is not recording")
    assigned_at: datetime
    assigned_by: str


class IncidentDetail(Incident):
    units: list[AssignedUnit] = Field(description="the assigned units the caller may see")
    units_outside_area: int = Field(description="assigned units from boroughs the caller does not cover, only counted")


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device_ids: list[Annotated[str, Field(pattern=DEVICE_ID)]] = Field(min_length=1, max_length=500)


def _publish(request: Request, changes: list[dict[str, Any]]) -> None:
    for alert in changes:
        request.app.state.hub.publish(ALERTS_TOPIC, orjson.dumps(alert))


def _sees_unit(who: Principal, unit: dict[str, Any]) -> bool:
    """A unit from another borough assigned to an incident is only counted, except for a
    firearms commander: they may already watch it live (the units of an open incident in
    their area, services/consent.py), so its position and recording state are theirs too."""
    return who.covers(unit["borough"]) or who.role is Role.FIREARMS_COMMANDER


def _detail(db: Db, incident_id: int, who: Principal) -> IncidentDetail:
    row = incidents.get(db, incident_id, boroughs=who.areas)
    if row is None:
        raise NotFound(f"no incident {incident_id} in your area")
    assigned = incidents.units(db, incident_id)
    shown = [AssignedUnit(**u) for u in assigned if _sees_unit(who, u)]
    return IncidentDetail(**row, units=shown, units_outside_area=len(assigned) - len(shown))


def _device_in_area(db: Db, device_id: str, who: Principal) -> None:
    # Changing a unit's assignment is for whoever covers its borough, firearms commanders too.
    if queries.get_device(db, device_id, boroughs=who.areas) is None:
        raise NotFound(f"no device {device_id} in your area")


def _audit_unit(db: Db, who: Principal, action: str, incident: Incident, device_id: str) -> None:
    audit.record(db, actor=who.username, action=action, device_id=device_id,
                 details={"incident_id": incident.id, "title": incident.title})


@router.post("", response_model=Incident, status_code=201)
def create(body: IncidentIn, request: Request, db: Db, who: Commander, areas: ForceAreas) -> Incident:
    check_known([body.borough], areas)
    if not who.covers(body.borough):
        raise InvalidRequest("the incident's borough is outside your area")
    limit: float = request.app.state.settings.incident_max_radius_m
    if body.radius_m > limit:
        raise InvalidRequest(f"radius_m {body.radius_m:g} is over the limit of {limit:g} m")
    row = incidents.create(db, title=body.title, lat=body.lat, lon=body.lon, radius_m=body.radius_m,
                           borough=body.borough, by=who.username)
    # An incident decides whose live view a firearms commander may open: on the record.
    audit.record(db, actor=who.username, action="incident_created",
                 details={"incident_id": row["id"], "title": body.title, "borough": body.borough,
                          "lat": body.lat, "lon": body.lon, "radius_m": body.radius_m})
    return Incident(**row)


@router.get("", response_model=list[Incident], summary="Open incidents in your area")
def list_open(db: Db, who: Commander) -> list[Incident]:
    return [Incident(**r) for r in incidents.list_open(db, boroughs=who.areas, limit=500)]


@router.get("/{incident_id}", response_model=IncidentDetail, summary="An incident and its assigned units")
def detail(incident_id: IncidentId, db: Db, who: Commander) -> IncidentDetail:
    return _detail(db, incident_id, who)


def _geofence(request: Request) -> Geofence:
    settings = request.app.state.settings
    return Geofence(margin_m=settings.alert_geofence_margin_m, dwell_s=settings.alert_geofence_dwell_s)


@router.post("/{incident_id}/units", response_model=IncidentDetail, summary="Assign units")
def assign(incident_id: IncidentId, body: AssignIn, request: Request, db: Db, who: Commander) -> IncidentDetail:
    incident = _detail(db, incident_id, who)
    for device_id in body.device_ids:
        _device_in_area(db, device_id, who)
    # One entry per unit newly assigned, about that unit, so that an auditor of its borough sees it.
    for device_id in incidents.assign(db, incident_id, body.device_ids, by=who.username):
        _audit_unit(db, who, "incident_unit_assigned", incident, device_id)
    changes = evaluate_incidents(db, body.device_ids, load_policy(db), _geofence(request))
    db.commit()
    _publish(request, changes)
    return _detail(db, incident_id, who)


@router.delete("/{incident_id}/units/{device_id}", response_model=IncidentDetail, summary="Unassign a unit")
def unassign(incident_id: IncidentId, device_id: Annotated[str, Path(pattern=DEVICE_ID)], request: Request,
             db: Db, who: Commander) -> IncidentDetail:
    incident = _detail(db, incident_id, who)
    _device_in_area(db, device_id, who)
    if not incidents.unassign(db, incident_id, device_id):
        raise NotFound(f"{device_id} is not assigned to incident {incident_id}")
    _audit_unit(db, who, "incident_unit_unassigned", incident, device_id)
    changes = evaluate_incidents(db, [device_id], load_policy(db), _geofence(request))
    db.commit()
    _publish(request, changes)
    return _detail(db, incident_id, who)


@router.post("/{incident_id}/close", response_model=IncidentDetail)
def close(incident_id: IncidentId, request: Request, db: Db, who: Commander) -> IncidentDetail:
    incident = _detail(db, incident_id, who)
    if incidents.close(db, incident_id):  # closing a closed incident changes nothing, so records nothing
        audit.record(db, actor=who.username, action="incident_closed",
                     details={"incident_id": incident_id, "title": incident.title,
                              "units": len(incident.units) + incident.units_outside_area})
    changes = evaluate_incidents(db, None, load_policy(db), _geofence(request))
    db.commit()
    _publish(request, changes)
    return _detail(db, incident_id, who)
