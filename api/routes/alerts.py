"""Alerts: list, acknowledge (one, or many at once), resolve. Every change is published so that every API process
pushes it to its live clients."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request

from api.auth import require
from api.deps import Db
from api.errors import ErrorBody
from api.models import Alert, AlertHistory, AlertHistoryEntry, AlertPage, BulkAcknowledged, BulkAcknowledgeIn, ResolveIn
from core.contract import ALERTS_TOPIC
from services import audit
from services.accounts import HANDLES_ALERTS, Principal, Role
from services.errors import Conflict, Forbidden, NotFound
from telemetry import queries
from telemetry.alert_timeline import timeline

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"],
                   responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 422: {"model": ErrorBody}})

# An admin sees the system alerts only (Principal.alert_kinds, sees_system_alerts).
AlertViewer = Annotated[Principal, Depends(require(Role.OPERATOR, Role.FIREARMS_COMMANDER, Role.FLEET_MANAGER,
                                                   Role.ADMIN))]
AlertHandler = Annotated[Principal, Depends(require(*HANDLES_ALERTS))]
AlertId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def _publish(request: Request, alert: dict[str, Any]) -> None:
    request.app.state.hub.publish(ALERTS_TOPIC, orjson.dumps(alert))


def _shown(alert: dict[str, Any], who: Principal) -> Alert:
    """The alert as ``who`` may read it: who carried the camera is for the roles that see
    officers (a fleet manager sees the unit's health, not the person)."""
    return Alert.model_validate(alert if who.sees_positions else {**alert, "officer": None})


@router.get("", response_model=AlertPage, summary="Alerts in your area, newest first")
def list_alerts(db: Db, who: AlertViewer,
                status: Literal["open", "acknowledged", "resolved"] | None = None,
                kind: Annotated[str | None, Query(max_length=64)] = None,
                borough: Annotated[str | None, Query(max_length=64)] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                offset: Annotated[int, Query(ge=0)] = 0) -> AlertPage:
    if kind is not None and not who.sees_kind(kind):
        raise Forbidden(f"role {who.role.value} does not see {kind} alerts")
    rows = queries.list_alerts(db, boroughs=who.areas, status=status, kinds=who.alert_kinds(),
                               system=who.sees_system_alerts, borough=borough, limit=limit, offset=offset, kind=kind)
    return AlertPage(items=[_shown(r, who) for r in rows], limit=limit, offset=offset)


@router.get("/{alert_id}/history", response_model=AlertHistory, responses={404: {"model": ErrorBody}},
            summary="What happened to an alert: raised, escalated, acknowledged, resolved; by whom, when")
def alert_history(alert_id: AlertId, db: Db, who: AlertViewer) -> AlertHistory:
    # Another area's alert, or a kind the role does not see, is absent (404), as in the list.
    alert, history = queries.get_alert_with_history(db, alert_id, boroughs=who.areas, kinds=who.alert_kinds(),
                                                    system=who.sees_system_alerts)
    if alert is None:
        raise NotFound(f"no alert {alert_id} in your area")
    return AlertHistory(alert=_shown(alert, who),
                        history=[AlertHistoryEntry.model_validate(e, from_attributes=True)
                                 for e in timeline(alert, history)])


@router.post("/acknowledge", response_model=BulkAcknowledged, summary="Acknowledge a selection or a filter at once")
def acknowledge_many(body: BulkAcknowledgeIn, request: Request, db: Db, who: AlertHandler) -> BulkAcknowledged:
    """Only open alerts of units in the caller's areas are touched, whatever the ids or the
    filter say (an id of another area's alert is ignored, as absent). One audit entry for
    the act, with the count; each alert's history says it was acknowledged."""
    alerts = queries.acknowledge_alerts(db, by=who.username, boroughs=who.areas, kinds=who.alert_kinds(),
                                        ids=body.ids, kind=body.kind, severity=body.severity, borough=body.borough)
    # No device: the act spans units; the entry names the alerts by id only, so an auditor
    # of another area learns that it happened, not where.
    audit.record(db, actor=who.username, action="alerts_acknowledged",
                 details={"count": len(alerts), "alert_ids": [a["id"] for a in alerts],
                          "filter": body.model_dump(exclude_none=True, exclude={"ids"})})
    db.commit()
    for alert in alerts:
        _publish(request, alert)
    return BulkAcknowledged(count=len(alerts), items=[_shown(a, who) for a in alerts])


@router.post("/{alert_id}/acknowledge", response_model=Alert,
             responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}})
def acknowledge(alert_id: AlertId, request: Request, db: Db, who: AlertHandler) -> Alert:
    alert, changed = queries.acknowledge_alert(db, alert_id, by=who.username, boroughs=who.areas)
    if alert is None:
        raise NotFound(f"no alert {alert_id} in your area")
    if not changed:
        raise Conflict(f"alert {alert_id} is {alert['status']}, not open")
    audit.record(db, actor=who.username, action="alert_acknowledged", device_id=alert["device_id"],
                 details={"alert_id": alert_id, "kind": alert["kind"]})
    db.commit()  # published only once it is true in the database
    _publish(request, alert)
    return _shown(alert, who)


@router.post("/{alert_id}/resolve", response_model=Alert,
             responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}})
def resolve(alert_id: AlertId, body: ResolveIn, request: Request, db: Db, who: AlertHandler) -> Alert:
    alert, changed = queries.resolve_alert(db, alert_id, by=who.username, outcome=body.outcome, note=body.note,
                                           boroughs=who.areas)
    if alert is None:
        raise NotFound(f"no alert {alert_id} in your area")
    if not changed:
        raise Conflict(f"alert {alert_id} is already resolved")
    audit.record(db, actor=who.username, action="alert_resolved", device_id=alert["device_id"],
                 details={"alert_id": alert_id, "kind": alert["kind"], "outcome": body.outcome, "note": body.note})
    db.commit()
    _publish(request, alert)
    return _shown(alert, who)
