"""Live view: requests to cameras, who is watching, and the WHIP/WHEP endpoints.

WHIP (RFC 9725) and WHEP share one shape: ``POST`` an ``application/sdp`` offer with a
bearer token, get ``201 Created`` with the SDP answer and a ``Location`` header naming the
session; ``DELETE`` on that location ends it. The answer is complete (aiortc gathers every
candidate before answering and does not trickle), so ``PATCH`` is not offered (405).
A camera's bearer token is its own device secret; a viewer's is their user token.
The decisions are in :mod:`services.consent`; :class:`services.live_view.LiveView` applies them.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from pydantic import BaseModel, Field

from api.auth import bearer, principal, require
from api.client_address import client_address
from api.deps import Db
from api.errors import ErrorBody
from api.limits import ApiLimits
from api.models import DEVICE_ID
from api.spreadsheet import csv_cell
from services import audit, viewings
from services.accounts import Principal, Role
from services.consent import VIEWING_ROLES, Denied, UnitFacts, may_watch
from services.errors import Forbidden, InvalidRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from services.live_view import LiveView

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["live view"],
                   responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody},
                              409: {"model": ErrorBody}, 422: {"model": ErrorBody}})

Caller = Annotated[Principal, Depends(principal)]
Auditor = Annotated[Principal, Depends(require(Role.AUDITOR, Role.ADMIN))]
DeviceId = Annotated[str, Path(pattern=DEVICE_ID)]
SessionId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
_SDP = "application/sdp"
# Refused unread past this; the relay's own bounds (streaming/offer.py: 32 KiB, 500 lines, 4 media
# sections, 16 candidates) then refuse what is still too much with a 400 that says which.
_MAX_SDP_BYTES = 64 * 1024


class LiveViewRequestIn(BaseModel):
    reason: str = Field(min_length=3, max_length=200, description="why the control room wants to watch")
    incident_id: int | None = Field(default=None, ge=1, le=2**63 - 1,
                                    description="the incident the request is for: one you see, with the unit"
                                                " assigned to it (a later request naming the same incident may"
                                                " be covered by the consent: rule same_incident)")


class LiveViewRequest(BaseModel):
    request_id: str
    device_id: str
    requested_by: str
    reason: str
    status: Literal["pending", "accepted", "declined", "expired"]
    detail: str | None = None
    created_at: datetime
    expires_at: datetime
    answered_at: datetime | None = None
    consent_id: int | None = Field(default=None, description="the consent it was accepted under")
    incident_id: int | None = Field(default=None, description="the incident the request named")
    covered_rule: Literal["same_requester", "same_incident", "officer_asked", "policy_recording"] | None = Field(
        default=None, description="accepted by this rule of the force's, the camera not asked; "
                                  "null when the camera (its officer) or the policy accepted it")


class Consent(BaseModel):
    consent_id: int
    basis: Literal["officer_request", "accepted_request", "policy_recording"]
    request_id: str | None = None
    granted_at: datetime
    publishing_since: datetime | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None


class Viewing(BaseModel):
    """A viewing session (or, with ``refused``, an attempt that was refused)."""

    session_id: str | None = None
    device_id: str
    viewer: str
    role: str
    reason: str | None = None
    consent_id: int | None = None
    started_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    refused: str | None = None


class LiveViewStatus(BaseModel):
    device_id: str
    consent: Consent | None = Field(description="the consent in force, if any")
    live: bool = Field(description="the camera is streaming now")
    whep_url: str | None = Field(description="where to POST a WHEP offer while live")
    viewers: list[Viewing]


def _service(request: Request) -> LiveView:
    service: LiveView = request.app.state.live_view
    return service


def _check(db: Db, who: Principal, device_id: str) -> None:
    row = viewings.unit_for_live_view(db, device_id)
    denied: Denied | None = may_watch(who, UnitFacts.from_row(row) if row is not None else None)
    if denied is not None:
        raise denied.error()


# requests and status

@router.post("/devices/{device_id}/live-view", response_model=LiveViewRequest, status_code=201,
             summary="Ask a camera to stream live (or, by policy, start at once)")
async def request_live_view(device_id: DeviceId, body: LiveViewRequestIn, request: Request,
                            who: Caller) -> LiveViewRequest:
    row = await _service(request).request(who, device_id, body.reason, body.incident_id)
    return LiveViewRequest.model_validate(row)


@router.delete("/devices/{device_id}/live-view", response_model=Consent,
               summary="Stop the camera's stream (ends the consent in force)")
async def stop_live_view(device_id: DeviceId, request: Request, who: Caller) -> Consent:
    return Consent.model_validate(await _service(request).stop(who, device_id))


@router.get("/devices/{device_id}/live-view", response_model=LiveViewStatus,
            summary="Consent in force, whether the camera streams, and who is watching")
def live_view_status(device_id: DeviceId, db: Db, who: Caller) -> LiveViewStatus:
    _check(db, who, device_id)
    consent = viewings.active_consent(db, device_id)
    live = consent is not None and consent["publisher_session"] is not None
    return LiveViewStatus(device_id=device_id, consent=Consent.model_validate(consent) if consent else None,
                          live=live, whep_url=f"/api/v1/whep/{device_id}" if live else None,
                          viewers=[Viewing.model_validate(v) for v in viewings.open_viewings(db, device_id)])


@router.get("/devices/{device_id}/viewers", response_model=list[Viewing], summary="Who is watching the unit now")
def viewers(device_id: DeviceId, db: Db, who: Caller) -> list[Viewing]:
    _check(db, who, device_id)
    return [Viewing.model_validate(v) for v in viewings.open_viewings(db, device_id)]


@router.get("/live-view/requests", response_model=list[LiveViewRequest],
            summary="Live-view requests in your area, newest first")
def list_requests(db: Db, who: Caller, device_id: Annotated[str | None, Query(pattern=DEVICE_ID)] = None,
                  status: Literal["pending", "accepted", "declined", "expired"] | None = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[LiveViewRequest]:
    if who.role not in VIEWING_ROLES:
        raise Forbidden(f"role {who.role.value} does not see live-view requests")
    rows = viewings.list_requests(db, boroughs=who.areas, device_id=device_id, status=status, limit=limit)
    return [LiveViewRequest.model_validate(r) for r in rows]


@router.get("/live-view/requests/{request_id}", response_model=LiveViewRequest)
def get_request(request_id: Annotated[str, Path(pattern=DEVICE_ID)], db: Db, who: Caller) -> LiveViewRequest:
    row = viewings.get_request(db, request_id)
    if row is None:
        raise NotFound(f"no live-view request {request_id}")
    _check(db, who, row["device_id"])
    return LiveViewRequest.model_validate(row)


class ViewingRecord(Viewing):
    """A viewing session in the record, with its unit and the basis of its consent."""

    callsign: str | None = None
    borough: str | None = None
    officer: str | None = Field(None, description="who carried the unit when the viewing began (the registry's"
                                                  " officer then; unknown for sessions before migration 10)")
    basis: Literal["officer_request", "accepted_request", "policy_recording"] | None = Field(
        None, description="the consent the viewing was under (none for a refusal)")


#: One export holds at most this many sessions.
MAX_EXPORT_ROWS = 50_000
#: The CSV's columns, in order (``duration_s``: seconds, while ended).
EXPORT_COLUMNS = ("started_at", "ended_at", "duration_s", "device_id", "callsign", "borough", "officer", "viewer",
                  "role", "reason", "basis", "consent_id", "end_reason", "refused", "session_id")
Basis = Literal["officer_request", "accepted_request", "policy_recording"]


def _filter(device_id: str | None, officer: str | None, viewer: str | None, since: datetime | None,
            until: datetime | None, basis: Basis | None) -> viewings.ViewingFilter:
    for name, at in (("since", since), ("until", until)):
        if at is not None and at.tzinfo is None:
            raise InvalidRequest(f"{name}: give a time zone (an RFC 3339 time, e.g. 2026-12-06T14:00:00Z)")
    if since is not None and until is not None and since >= until:
        raise InvalidRequest("since must be before until")
    return viewings.ViewingFilter(device_id=device_id, officer=officer, viewer=viewer, since=since, until=until,
                                  basis=basis)


DeviceQuery = Annotated[str | None, Query(pattern=DEVICE_ID, description="one unit")]
OfficerQuery = Annotated[str | None, Query(max_length=200, description="the officer who carried the unit then"
                                                                       " (exactly as the registry named them)")]
ViewerQuery = Annotated[str | None, Query(max_length=64, description="one viewer's username")]
SinceQuery = Annotated[datetime | None, Query(description="sessions still open at or after this time (RFC 3339)")]
UntilQuery = Annotated[datetime | None, Query(description="sessions started before this time (RFC 3339)")]
BasisQuery = Annotated[Basis | None, Query(description="the basis of the consent watched under")]


@router.get("/live-view/sessions", response_model=list[ViewingRecord],
            summary="The record of viewing sessions and refused attempts in your area (auditor, admin)")
def sessions(db: Db, who: Auditor, device_id: DeviceQuery = None, officer: OfficerQuery = None,
             viewer: ViewerQuery = None,
             since: SinceQuery = None, until: UntilQuery = None, basis: BasisQuery = None,
             limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[ViewingRecord]:
    where = _filter(device_id, officer, viewer, since, until, basis)
    return [ViewingRecord.model_validate(v) for v in viewings.viewings(db, boroughs=who.areas, where=where,
                                                                          limit=limit)]


@router.get("/live-view/sessions.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}},
            summary="The same record as CSV, with the same filters (auditor, admin; the export is audited)")
def sessions_csv(db: Db, who: Auditor, device_id: DeviceQuery = None, officer: OfficerQuery = None,
                 viewer: ViewerQuery = None,
                 since: SinceQuery = None, until: UntilQuery = None, basis: BasisQuery = None,
                 limit: Annotated[int, Query(ge=1, le=MAX_EXPORT_ROWS)] = MAX_EXPORT_ROWS) -> Response:
    where = _filter(device_id, officer, viewer, since, until, basis)
    rows = viewings.viewings(db, boroughs=who.areas, where=where, limit=limit)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
    writer.writerow(EXPORT_COLUMNS)
    for row in rows:
        ended = row["ended_at"]
        duration = round((ended - row["started_at"]).total_seconds(), 1) if ended is not None else None
        # The same cells as the fleet export: a viewer's reason is free text and stays text.
        writer.writerow([csv_cell(duration if c == "duration_s" else row.get(c)) for c in EXPORT_COLUMNS])
    # Recorded in the request's transaction: if the entry cannot be written, no file leaves.
    audit.record(db, actor=who.username, action="export", device_id=device_id,
                 details={"report": "viewings.csv", "rows": len(rows), "device_id": device_id, "officer": officer,
                          "viewer": viewer,
                          "since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
                          "basis": basis, "areas": "*" if who.areas is None else sorted(who.areas)})
    db.commit()  # the record is in before the file leaves (the request's own commit may come after the response)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="viewings-{stamp}.csv"',
                             "X-Row-Count": str(len(rows))})


# WHIP and WHEP

async def _offer(request: Request) -> str:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != _SDP:
        raise UnsupportedMediaType(f"the offer must be sent as {_SDP}")
    body = await request.body()
    if len(body) > _MAX_SDP_BYTES:
        raise PayloadTooLarge(f"the offer is larger than {_MAX_SDP_BYTES} bytes")
    return body.decode("utf-8", errors="replace")


def _created(answer: str, location: str) -> Response:
    # RFC 9725 section 4.2: 201 Created, the answer as application/sdp, the session's URL.
    return Response(content=answer, status_code=201, media_type=_SDP, headers={"Location": location})


# The offer is read raw (not JSON): described here so that the OpenAPI document says so.
_SDP_OFFER: dict[str, Any] = {"requestBody": {"required": True, "description": "the complete SDP offer",
                                              "content": {_SDP: {"schema": {"type": "string"}}}}}
_SDP_BODY: dict[int | str, dict[str, Any]] = {
    201: {"content": {_SDP: {}}, "description": "the SDP answer; Location names the session"},
    400: {"model": ErrorBody, "description": "an offer the relay will not take (the message says why)"},
    413: {"model": ErrorBody}, 415: {"model": ErrorBody}, 429: {"model": ErrorBody}}


@router.post("/whip/{device_id}", status_code=201, response_class=Response, responses=_SDP_BODY,
             openapi_extra=_SDP_OFFER,
             summary="WHIP: the camera publishes (bearer: the device's own secret; only under consent)")
async def whip(device_id: DeviceId, request: Request) -> Response:
    secret = bearer(request.headers.get("authorization"))
    # Before the (deliberately slow) secret check, by the client's address (a trusted proxy's
    # word) and by device (api/limits.py Attempts): someone guessing at a device's secret
    # from elsewhere does not lock the camera itself out; a publish gives its tokens back.
    limits: ApiLimits = request.app.state.limits
    attempt = limits.device.start(client_address(request, limits.proxies), device_id)
    session = await _service(request).publish(device_id, secret, await _offer(request))
    attempt.succeeded()
    return _created(session.answer_sdp, f"/api/v1/whip/{device_id}/{session.id}")


@router.delete("/whip/{device_id}/{session_id}", status_code=200, response_class=Response,
               summary="WHIP: the camera ends its stream")
async def whip_end(device_id: DeviceId, session_id: SessionId, request: Request) -> Response:
    secret = bearer(request.headers.get("authorization"))
    await _service(request).unpublish(device_id, session_id, secret)
    return Response(status_code=200)


@router.post("/whep/{device_id}", status_code=201, response_class=Response, responses=_SDP_BODY,
             openapi_extra=_SDP_OFFER,
             summary="WHEP: watch a live camera (operator or firearms commander, in area, with a reason)")
async def whep(device_id: DeviceId, request: Request, who: Caller,
               x_viewing_reason: Annotated[str | None, Header(description="why you watch (required)")] = None,
               ) -> Response:
    offer = await _offer(request)
    session = await _service(request).view(who, device_id, x_viewing_reason, offer)
    return _created(session.answer_sdp, f"/api/v1/whep/{device_id}/{session.id}")


@router.delete("/whep/{device_id}/{session_id}", status_code=200, response_class=Response,
               summary="WHEP: stop watching")
async def whep_end(device_id: DeviceId, session_id: SessionId, request: Request, who: Caller) -> Response:
    await _service(request).unview(who, device_id, session_id)
    return Response(status_code=200)
