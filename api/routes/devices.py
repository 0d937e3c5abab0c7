"""Devices: the fleet with its latest state, one device's history, the registry, the summary."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from api.areas import ForceAreas, check_known
from api.auth import require
from api.deps import Db
from api.errors import ErrorBody
from api.live import unit_view
from api.models import DEVICE_ID, DeviceEvent, DeviceIn, DevicePage, FleetSummary, HealthBucket, TrackPoint, Unit
from core.contract import REGISTRY_TOPIC
from services import audit
from services.accounts import SEES_DEVICES, SEES_POSITIONS, Principal, Role
from services.device_accounts import DeviceAccounts
from services.errors import Conflict, InvalidRequest, NotFound
from services.registry import (
    DeviceRecord,
    RegistryEntry,
    change_announcement,
    create_device,
    lock_device,
    reactivate_device,
    retire_device,
    update_device,
)
from telemetry import queries

router = APIRouter(prefix="/api/v1", tags=["devices"],
                   responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 422: {"model": ErrorBody}})

DeviceViewer = Annotated[Principal, Depends(require(*SEES_DEVICES))]
PositionViewer = Annotated[Principal, Depends(require(*SEES_POSITIONS))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
DeviceId = Annotated[str, Path(pattern=DEVICE_ID)]
MAX_PAGE = 1000
MAX_SPAN = timedelta(days=7)


def _unit(row: dict[str, Any], who: Principal) -> Unit:
    return Unit.model_validate(unit_view(row, who.sees_positions))


def _span(start: datetime | None, end: datetime | None, default: timedelta) -> tuple[datetime, datetime]:
    end = end or datetime.now(timezone.utc)
    start = start or end - default
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidRequest("times need a UTC offset (RFC 3339)")
    if end <= start or end - start > MAX_SPAN:
        raise InvalidRequest("start must be before end, at most 7 days apart")
    return start, end


def _visible(db: Db, device_id: str, who: Principal) -> dict[str, Any]:
    row = queries.get_device(db, device_id, boroughs=who.areas)
    if row is None:
        raise NotFound(f"no device {device_id} in your area")
    return row


def _audit_read(db: Db, who: Principal, action: str, device_id: str, start: datetime, end: datetime,
                rows: int) -> None:
    """One officer's history read is on the record, with the window asked for (police logging
    rules); in the request's transaction, which commits before the response leaves."""
    audit.record(db, actor=who.username, action=action, device_id=device_id,
                 details={"start": _utc(start), "end": _utc(end), "rows": rows})


def _utc(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


@router.get("/devices", response_model=DevicePage, summary="Devices with their latest state, filtered and paged")
def list_devices(
    db: Db, who: DeviceViewer,
    borough: str | None = None,
    role: str | None = None,
    state: Literal["recording", "buffering", "off", "offline"] | None = None,
    low_battery_below: Annotated[float | None, Query(ge=0, le=100)] = None,
    q: Annotated[str | None, Query(max_length=64, description="device id, callsign or officer prefix")] = None,
    include_retired: bool = False,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DevicePage:
    where = queries.DeviceFilter(borough=borough, role=role, state=state, low_battery_below=low_battery_below,
                                 search=q if who.sees_positions else None, include_retired=include_retired)
    rows, total = queries.list_devices(db, boroughs=who.areas, where=where, limit=limit, offset=offset)
    return DevicePage(items=[_unit(r, who) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/devices/{device_id}", response_model=Unit, responses={404: {"model": ErrorBody}})
def get_device(device_id: DeviceId, db: Db, who: DeviceViewer) -> Unit:
    return _unit(_visible(db, device_id, who), who)


@router.get("/devices/{device_id}/track", response_model=list[TrackPoint], responses={404: {"model": ErrorBody}},
            summary="GPS track between two times, simplified to at most max_points")
def track(device_id: DeviceId, db: Db, who: PositionViewer, start: datetime | None = None,
          end: datetime | None = None, max_points: Annotated[int, Query(ge=2, le=5000)] = 1000) -> list[TrackPoint]:
    _visible(db, device_id, who)
    start, end = _span(start, end, timedelta(hours=12))
    points = [TrackPoint.model_validate(r) for r in queries.track(db, device_id, start=start, end=end,
                                                                   max_points=max_points)]
    _audit_read(db, who, "device_track_read", device_id, start, end, len(points))
    return points


@router.get("/devices/{device_id}/events", response_model=list[DeviceEvent], responses={404: {"model": ErrorBody}})
def events(device_id: DeviceId, db: Db, who: PositionViewer, start: datetime | None = None,
           end: datetime | None = None, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 200) -> list[DeviceEvent]:
    _visible(db, device_id, who)
    start, end = _span(start, end, timedelta(hours=12))
    found = [DeviceEvent.model_validate(r) for r in queries.device_events(db, device_id, start=start, end=end,
                                                                          limit=limit)]
    _audit_read(db, who, "device_events_read", device_id, start, end, len(found))
    return found


@router.get("/devices/{device_id}/health", response_model=list[HealthBucket], responses={404: {"model": ErrorBody}},
            summary="Hourly battery and storage (continuous aggregate on TimescaleDB)")
def health(device_id: DeviceId, db: Db, who: DeviceViewer, start: datetime | None = None,
           end: datetime | None = None) -> list[HealthBucket]:
    _visible(db, device_id, who)
    start, end = _span(start, end, timedelta(hours=24))
    buckets = [HealthBucket.model_validate(r) for r in queries.device_health(db, device_id, start=start, end=end)]
    _audit_read(db, who, "device_health_read", device_id, start, end, len(buckets))
    return buckets


@router.get("/fleet/summary", response_model=FleetSummary, summary="Counts by state, borough and role")
def summary(db: Db, who: DeviceViewer, not_seen_hours: Annotated[float, Query(gt=0, le=24 * 30)] = 24,
            low_battery_below: Annotated[float, Query(ge=0, le=100)] = 20) -> FleetSummary:
    return FleetSummary.model_validate(queries.fleet_summary(
        db, boroughs=who.areas, not_seen=timedelta(hours=not_seen_hours), low_battery_below=low_battery_below))


def _in_area(who: Principal, borough: str | None) -> None:
    """A target borough the caller does not cover is as unknown to them as a device there."""
    if not who.covers(borough):
        raise NotFound(f"no borough {borough} in your area")


def _locked(db: Db, device_id: str, who: Principal) -> RegistryEntry:
    """The device's registry entry, locked, if the caller's area covers its *current* borough;
    404 otherwise, before anything is written."""
    entry = lock_device(db, device_id=device_id)
    if entry is None or not who.covers(entry.borough):
        raise NotFound(f"no device {device_id} in your area")
    return entry


def _record(device_id: str, body: DeviceIn) -> DeviceRecord:
    return DeviceRecord(device_id, body.callsign, body.officer, body.borough, body.role)


@router.post("/devices", response_model=Unit, status_code=201, summary="Register a new device",
             responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}})
def register(body: DeviceIn, db: Db, who: Admin, request: Request, areas: ForceAreas) -> Unit:
    check_known([body.borough], areas)
    _in_area(who, body.borough)
    # Creating never changes an existing device (nor un-retires one): that is PUT, or reactivate.
    if not create_device(db, record=_record(body.device_id, body)):
        raise Conflict(f"device {body.device_id} is already registered")
    unit = _unit(_visible(db, body.device_id, who), who)
    _audit_registry(db, who, body, "registered")
    _announce(db, request, body.device_id, "registered")
    return unit


def _announce(db: Db, request: Request, device_id: str, change: str) -> None:
    """Commit, then tell every API process (this one too) to re-read the registry, so that
    live feeds show the change at once rather than at their next periodic refresh."""
    db.commit()
    request.app.state.hub.publish(REGISTRY_TOPIC, change_announcement(device_id, change))


def _audit_registry(db: Db, who: Principal, body: DeviceIn, change: str, *, previous: str | None = None) -> None:
    # Moving a unit to another borough changes who sees it: a registry change is on the record.
    details: dict[str, Any] = {"change": change, "callsign": body.callsign, "officer": body.officer,
                               "borough": body.borough, "role": body.role}
    if change == "updated":
        details["previous_borough"] = previous
    audit.record(db, actor=who.username, action="device_registered", device_id=body.device_id, details=details)


@router.put("/devices/{device_id}", response_model=Unit, responses={404: {"model": ErrorBody}},
            summary="Change a registered device (its borough too, within your area)")
def update(device_id: DeviceId, body: DeviceIn, db: Db, who: Admin, request: Request, areas: ForceAreas) -> Unit:
    if body.device_id != device_id:
        raise InvalidRequest("the body's device_id must match the path")
    check_known([body.borough], areas)
    # Both ends of a move: the borough it is in now and the one it goes to.
    entry = _locked(db, device_id, who)
    _in_area(who, body.borough)
    update_device(db, record=_record(device_id, body))
    unit = _unit(_visible(db, device_id, who), who)
    _audit_registry(db, who, body, "updated", previous=entry.borough)
    _announce(db, request, device_id, "updated")
    return unit


@router.post("/devices/{device_id}/retire", response_model=Unit,
             responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}},
             summary="Retire a device: revoke its secret and disable its broker login (disconnected now)")
def retire(device_id: DeviceId, db: Db, who: Admin, request: Request) -> Unit:
    _locked(db, device_id, who)
    # Before the commit: a broker that does not disable the login (503) leaves the device
    # not retired, rather than retired with a login that still works.
    accounts: DeviceAccounts | None = request.app.state.device_accounts
    disabled = accounts.disable(device_id) if accounts is not None else None
    retire_device(db, device_id=device_id, actor=who.username, details={"broker_login_disabled": disabled})
    unit = _unit(_visible(db, device_id, who), who)
    _announce(db, request, device_id, "retired")
    return unit


@router.post("/devices/{device_id}/reactivate", response_model=Unit,
             responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
             summary="Bring a retired device back (its secret stays revoked until provisioned again)")
def reactivate(device_id: DeviceId, db: Db, who: Admin, request: Request) -> Unit:
    entry = _locked(db, device_id, who)
    if not entry.retired:
        raise Conflict(f"device {device_id} is not retired")
    reactivate_device(db, device_id=device_id)
    audit.record(db, actor=who.username, action="device_reactivated", device_id=device_id,
                 details={"borough": entry.borough})
    unit = _unit(_visible(db, device_id, who), who)
    _announce(db, request, device_id, "reactivated")
    return unit
