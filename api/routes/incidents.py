"""Incidents: firearms commanders and operators create them (a circle or a drawn polygon, a
grade, a reference, a commander), assign units (a selection, or every armed unit within a
distance), see each assigned unit's position, battery and recording state, and an alert marks
an assigned firearms unit that is not recording. Firearms commanders and admins close them
with an outcome; closed ones are searchable."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from api.areas import ForceAreas, check_known
from api.auth import require
from api.deps import Db
from api.errors import ErrorBody
from api.models import DEVICE_ID
from core.contract import ALERTS_TOPIC
from services import audit
from services.accounts import ALL_AREAS, HANDLES_ALERTS, Principal, Role, get_user
from services.errors import Conflict, InvalidRequest, NotFound
from telemetry import incidents, queries
from telemetry.alert_policy_store import load_policy
from telemetry.alerts import Geofence, evaluate_incidents
from telemetry.geometry import MAX_VERTICES, PolygonError, parse_ring

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"],
                   responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody},
                              422: {"model": ErrorBody}})

Commander = Annotated[Principal, Depends(require(*HANDLES_ALERTS))]
# Ending an incident ends what it authorised (a firearms commander's live view of its units):
# the firearms commander's call, or an admin's when one was left open.
Closer = Annotated[Principal, Depends(require(Role.FIREARMS_COMMANDER, Role.ADMIN))]
# The lists, for those who run incidents, and for auditors and admins, who find one in them
# to export for disclosure (api/routes/replay.py): the list names no unit and no position.
Lister = Annotated[Principal, Depends(require(*HANDLES_ALERTS, Role.AUDITOR, Role.ADMIN))]
IncidentId = Annotated[int, Path(ge=1, le=2**63 - 1)]
# How urgent, in the words of police call grading: immediate (grade 1, blue lights), priority
# (grade 2), standard (attended when a unit is free), scheduled (by appointment). Migration 15
# holds the same lists in its CHECKs.
Grade = Literal["immediate", "priority", "standard", "scheduled"]
IncidentOutcome = Literal["resolved", "arrest", "stood_down", "no_trace", "handed_over"]
Vertex = Annotated[list[float], Field(min_length=2, max_length=2)]


class IncidentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(min_length=1, max_length=200)
    lat: float | None = Field(default=None, ge=-90, le=90, description="a circle's centre (not with a polygon)")
    lon: float | None = Field(default=None, ge=-180, le=180)
    radius_m: float | None = Field(default=None, gt=0,
                                   description="a circle around (lat, lon), metres, at most"
                                               " WATCHFLOOR_INCIDENT_MAX_RADIUS_M (default 2,000)")
    polygon: list[Vertex] | None = Field(
        default=None, min_length=4, max_length=MAX_VERTICES + 1,
        description="instead of a circle: a closed GeoJSON ring of [lon, lat] pairs (the last repeats the first),"
                    f" 3 to {MAX_VERTICES} corners, not crossing itself, within the radius limit of its centre")
    borough: str | None = Field(default=None, max_length=64)
    grade: Grade = "standard"
    reference: str | None = Field(default=None, min_length=1, max_length=40, pattern=r"^[A-Za-z0-9/ _.-]+$",
                                  description="the call's reference, e.g. a CAD number")
    commander: str | None = Field(default=None, max_length=64, description="the firearms commander in charge (a"
                                  " username covering the borough); default: the creator, if a firearms commander")


class Incident(BaseModel):
    id: int
    title: str
    lat: float
    lon: float
    radius_m: float
    polygon: list[list[float]] | None
    borough: str | None
    grade: str
    reference: str | None
    commander: str | None
    status: str
    created_by: str
    created_at: datetime
    closed_at: datetime | None
    outcome: str | None
    closed_by: str | None


class ClosedPage(BaseModel):
    items: list[Incident]
    limit: int
    offset: int


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
    last_fix_at: datetime | None
    gps_fix: bool | None
    battery_pct: float | None
    charging: bool | None
    recording: str | None
    online: bool
    inside_area: bool
    not_recording: bool = Field(description="an assigned firearms unit whose report says it is not recording")
    no_report: bool = Field(description="an assigned firearms unit that has reported no recording state yet:"
                                        " not known to be recording, nor known not to be")
    assigned_at: datetime
    assigned_by: str


class IncidentDetail(Incident):
    units: list[AssignedUnit] = Field(description="the assigned units the caller may see")
    units_outside_area: int = Field(description="assigned units from boroughs the caller does not cover, only counted")


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device_ids: list[Annotated[str, Field(pattern=DEVICE_ID)]] = Field(min_length=1, max_length=500)


class ArmedWithinIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    within_km: float = Field(gt=0, le=50, description="from the incident's centre, by each unit's latest fix")


class CloseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcome: IncidentOutcome


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


def _open(incident: IncidentDetail) -> IncidentDetail:
    if incident.status != "open":
        raise Conflict(f"incident {incident.id} is closed")
    return incident


def _device_in_area(db: Db, device_id: str, who: Principal) -> None:
    # Changing a unit's assignment is for whoever covers its borough, firearms commanders too.
    if queries.get_device(db, device_id, boroughs=who.areas) is None:
        raise NotFound(f"no device {device_id} in your area")


def _audit_unit(db: Db, who: Principal, action: str, incident: Incident, device_id: str) -> None:
    audit.record(db, actor=who.username, action=action, device_id=device_id,
                 details={"incident_id": incident.id, "title": incident.title})


def _shape(body: IncidentIn, limit_m: float) -> tuple[float, float, float, list[list[float]] | None]:
    """The area as stored: a circle's centre and radius, or a polygon with its centre and
    bounding radius; either way within the radius limit."""
    if body.polygon is not None:
        if body.lat is not None or body.lon is not None or body.radius_m is not None:
            raise InvalidRequest("give a polygon or a circle (lat, lon, radius_m), not both")
        try:
            polygon = parse_ring(body.polygon)
        except PolygonError as error:
            raise InvalidRequest(f"polygon: {error}") from None
        lat, lon, radius, ring = polygon.centre_lat, polygon.centre_lon, polygon.bounding_radius_m, polygon.ring()
    elif body.lat is None or body.lon is None or body.radius_m is None:
        raise InvalidRequest("give a circle (lat, lon and radius_m) or a polygon")
    else:
        lat, lon, radius, ring = body.lat, body.lon, body.radius_m, None
    if radius > limit_m:
        raise InvalidRequest(f"radius_m {radius:g} is over the limit of {limit_m:g} m")
    return lat, lon, radius, ring


def _commander(db: Db, body: IncidentIn, who: Principal) -> str | None:
    if body.commander is None:
        return who.username if who.role is Role.FIREARMS_COMMANDER else None
    user = get_user(db, username=body.commander)
    if user is None or user.disabled or user.role is not Role.FIREARMS_COMMANDER:
        raise InvalidRequest(f"{body.commander} is not a firearms commander")
    if not (ALL_AREAS in user.areas or body.borough in user.areas):
        raise InvalidRequest(f"{body.commander} does not cover {body.borough or 'every borough'}")
    return user.username


@router.post("", response_model=Incident, status_code=201)
def create(body: IncidentIn, request: Request, db: Db, who: Commander, areas: ForceAreas) -> Incident:
    check_known([body.borough], areas)
    if not who.covers(body.borough):
        raise InvalidRequest("the incident's borough is outside your area")
    lat, lon, radius, ring = _shape(body, request.app.state.settings.incident_max_radius_m)
    new = incidents.NewIncident(title=body.title, lat=lat, lon=lon, radius_m=radius, borough=body.borough,
                                grade=body.grade, reference=body.reference, commander=_commander(db, body, who),
                                polygon=ring)
    row = incidents.create(db, new, by=who.username)
    # An incident decides whose live view a firearms commander may open: on the record.
    audit.record(db, actor=who.username, action="incident_created",
                 details={"incident_id": row["id"], "title": body.title, "borough": body.borough,
                          "lat": lat, "lon": lon, "radius_m": radius, "polygon": ring, "grade": body.grade,
                          "reference": body.reference, "commander": new.commander})
    return Incident(**row)


@router.get("", response_model=list[Incident], summary="Open incidents in your area")
def list_open(db: Db, who: Lister) -> list[Incident]:
    return [Incident(**r) for r in incidents.list_open(db, boroughs=who.areas, limit=500)]


@router.get("/closed", response_model=ClosedPage, summary="Closed incidents in your area, newest first")
def list_closed(db: Db, who: Lister, areas: ForceAreas,
                closed_from: Annotated[AwareDatetime | None, Query(alias="from")] = None,
                closed_to: Annotated[AwareDatetime | None, Query(alias="to")] = None,
                borough: Annotated[str | None, Query(max_length=64)] = None,
                reference: Annotated[str | None, Query(max_length=40)] = None,
                limit: Annotated[int, Query(ge=1, le=200)] = 50,
                offset: Annotated[int, Query(ge=0, le=100_000)] = 0) -> ClosedPage:
    check_known([borough], areas)
    search = incidents.ClosedSearch(start=closed_from, end=closed_to, borough=borough, reference=reference,
                                    limit=limit, offset=offset)
    rows = incidents.list_closed(db, search, boroughs=who.areas)
    return ClosedPage(items=[Incident(**r) for r in rows], limit=limit, offset=offset)


@router.get("/{incident_id}", response_model=IncidentDetail, summary="An incident and its assigned units")
def detail(incident_id: IncidentId, db: Db, who: Commander) -> IncidentDetail:
    return _detail(db, incident_id, who)


def _geofence(request: Request) -> Geofence:
    settings = request.app.state.settings
    return Geofence(margin_m=settings.alert_geofence_margin_m, dwell_s=settings.alert_geofence_dwell_s)


@router.post("/{incident_id}/units", response_model=IncidentDetail, summary="Assign units")
def assign(incident_id: IncidentId, body: AssignIn, request: Request, db: Db, who: Commander) -> IncidentDetail:
    incident = _open(_detail(db, incident_id, who))
    for device_id in body.device_ids:
        _device_in_area(db, device_id, who)
    # One entry per unit newly assigned, about that unit, so that an auditor of its borough sees it.
    for device_id in incidents.assign(db, incident_id, body.device_ids, by=who.username):
        _audit_unit(db, who, "incident_unit_assigned", incident, device_id)
    changes = evaluate_incidents(db, body.device_ids, load_policy(db), _geofence(request))
    db.commit()
    _publish(request, changes)
    return _detail(db, incident_id, who)


@router.post("/{incident_id}/units/armed-within", response_model=IncidentDetail,
             summary="Assign every armed unit of your area within a distance")
def assign_armed_within(incident_id: IncidentId, body: ArmedWithinIn, request: Request, db: Db,
                        who: Commander) -> IncidentDetail:
    incident = _open(_detail(db, incident_id, who))
    added = incidents.assign_armed_within(db, incident_id, body.within_km * 1000.0, boroughs=who.areas,
                                          by=who.username)
    for device_id in added:
        audit.record(db, actor=who.username, action="incident_unit_assigned", device_id=device_id,
                     details={"incident_id": incident.id, "title": incident.title, "within_km": body.within_km})
    changes = evaluate_incidents(db, added, load_policy(db), _geofence(request)) if added else []
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


@router.post("/{incident_id}/close", response_model=IncidentDetail, summary="Close an incident with its outcome")
def close(incident_id: IncidentId, body: CloseIn, request: Request, db: Db, who: Closer) -> IncidentDetail:
    incident = _detail(db, incident_id, who)
    # Closing a closed incident changes nothing (its first outcome stands), so records nothing.
    if incidents.close(db, incident_id, outcome=body.outcome, by=who.username):
        audit.record(db, actor=who.username, action="incident_closed",
                     details={"incident_id": incident_id, "title": incident.title, "outcome": body.outcome,
                              "units": len(incident.units) + incident.units_outside_area})
    changes = evaluate_incidents(db, None, load_policy(db), _geofence(request))
    db.commit()
    _publish(request, changes)
    return _detail(db, incident_id, who)
