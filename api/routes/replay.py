"""Replay: every unit in an incident's area (or any borough or box) over a time window, as
pages of time slices in a compact encoding, with the timeline beside it; and the export of an
incident for disclosure (one zip, api/incident_export.py).

Who: a replay shows where officers were, so the roles that see positions (operators,
firearms commanders, admins) and auditors (after-action review by professional standards);
the export is a disclosure, so auditors and admins. Each only within their areas, and each
read is on the audit log (a replay is a look at history)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, Field

from api.areas import ForceAreas, check_known
from api.auth import require
from api.deps import Db
from api.errors import ErrorBody
from api.incident_export import Export, build_archive
from services import audit, viewings
from services.accounts import Principal, Role
from services.errors import InvalidRequest, NotFound
from telemetry import incidents, replay
from telemetry.schema import features

router = APIRouter(prefix="/api/v1", tags=["replay"],
                   responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody},
                              422: {"model": ErrorBody}})

Replayer = Annotated[Principal, Depends(require(Role.OPERATOR, Role.FIREARMS_COMMANDER, Role.AUDITOR, Role.ADMIN))]
Discloser = Annotated[Principal, Depends(require(Role.AUDITOR, Role.ADMIN))]
IncidentId = Annotated[int, Path(ge=1, le=2**63 - 1)]
MAX_SPAN = timedelta(days=1)
DEFAULT_WINDOW = timedelta(minutes=10)
#: Slices per frames request: a client pages through a long window, so the first frame
#: arrives after one small query, not after the whole window has been read.
MAX_SLICES = 600
MAX_TIMELINE = 5000
# Around an incident: from before it was opened to after it was closed, and beyond its edge,
# so the replay shows the units arriving and leaving.
INCIDENT_PAD = timedelta(minutes=10)
INCIDENT_MARGIN_M = 250.0
# A disclosure carries the record as stored, up to this many fixes (about 2 days of one unit at 1 Hz).
MAX_EXPORT_FIXES = 2_000_000
MAX_EXPORT_ROWS = 100_000
RECORDING_STATES = ("recording", "buffering", "off")
POINT_COLUMNS = ("slice", "unit", "t_ms", "lat", "lon", "heading_deg", "recording", "officer")


class ReplayPlan(BaseModel):
    start: datetime
    end: datetime
    bbox: list[float] | None = Field(description="[south, west, north, east], or null for the boroughs alone")
    borough: str | None
    incident_id: int | None
    units: list[list[str | None]] = Field(description="[device_id, callsign, borough, role] of every unit there")
    timeline_columns: list[str]
    timeline: list[list[Any]] = Field(description="rows of timeline_columns, oldest first")
    timeline_truncated: bool


class Frames(BaseModel):
    start: datetime
    step_s: float
    slices: int
    units: list[list[str | None]] = Field(description="[device_id, callsign, borough, role]; points name an index")
    officers: list[list[str | None]] = Field(description="[officer, callsign] carrying a unit; points name an index")
    recording_states: list[str]
    columns: list[str]
    points: list[list[float | int | None]] = Field(
        description="rows of columns: slice index, unit index, ms after start, lat, lon, heading, recording state"
                    " index, officer index (-1: nobody on record)")


def _window(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    """The window asked for; by default the last ten minutes."""
    end = end or datetime.now(timezone.utc)
    start = start or end - DEFAULT_WINDOW
    if end <= start or end - start > MAX_SPAN:
        raise InvalidRequest("start must be before end, at most 24 hours apart")
    return start, end


def _area(who: Principal, areas: frozenset[str], borough: str | None, bbox: list[float] | None) -> replay.Area:
    """The area asked for (by default every borough of the caller's), narrowed to the caller's
    own: a borough they do not cover is as unknown to them as a unit there."""
    check_known([borough], areas)
    if borough is not None and not who.covers(borough):
        raise NotFound(f"no borough {borough} in your area")
    box = None
    if bbox is not None:
        if len(bbox) != 4:
            raise InvalidRequest("bbox is south, west, north, east")
        south, west, north, east = bbox
        if not (-90 <= south < north <= 90 and -180 <= west < east <= 180):
            raise InvalidRequest("bbox: south < north within ±90, west < east within ±180")
        box = (south, west, north, east)
    boroughs = who.areas if borough is None else frozenset({borough})
    return replay.Area(box, boroughs)


def _timescaledb(request: Request, db: Db) -> bool:
    state = request.app.state
    if getattr(state, "storage_features", None) is None:
        state.storage_features = features(db)  # fixed by migration 1: read once per process
    return "timescaledb" in state.storage_features


def _utc(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _audit(db: Db, who: Principal, what: str, area: replay.Area, start: datetime, end: datetime,
           units: list[list[str | None]] | None, **extra: object) -> None:
    """A replay is on the record like a unit's track, as one entry per request (a plan of 500
    units is one row on the chain, not 500 written before the first frame). A plan's entry
    names its units by borough (``boroughs``: borough -> device ids), so that an auditor of a
    borough finds it and reads only the units of theirs (api/routes/audit.py). A page of
    frames names no unit, only its window and box (an entry about no unit is every auditor's
    to read): the plan read before it names them."""
    details = {"read": what, "start": _utc(start), "end": _utc(end),
               "bbox": list(area.bbox) if area.bbox else None, **extra}
    if units is not None:
        details["boroughs"] = _by_borough((device_id, borough) for device_id, _callsign, borough, _role in units)
    audit.record(db, actor=who.username, action="replay_read", details=details)


def _by_borough(units: Iterable[tuple[object, str | None]], also: str | None = None) -> dict[str, list[str]]:
    """Device ids by borough, as an audit entry's ``boroughs`` (``also``: a borough named even
    with no unit there, so its auditors still find the entry)."""
    by_borough: dict[str, list[str]] = {also: []} if also else {}
    for device_id, borough in units:
        by_borough.setdefault(borough or "", []).append(str(device_id))
    return by_borough


TIMELINE_COLUMNS = ["at", "kind", "device_id", "what", "detail", "ref", "officer", "callsign"]


def _plan(db: Db, area: replay.Area, start: datetime, end: datetime, *, borough: str | None,
          incident_id: int | None, assigned: list[str]) -> ReplayPlan:
    units = replay.units_in(db, area, start=start, end=end, also=assigned)
    ids = [u["device_id"] for u in units]
    rows = replay.timeline(db, ids, start=start, end=end, limit=MAX_TIMELINE + 1) if ids else []
    return ReplayPlan(start=start, end=end, bbox=list(area.bbox) if area.bbox else None, borough=borough,
                      incident_id=incident_id,
                      units=[[u["device_id"], u["callsign"], u["borough"], u["role"]] for u in units],
                      timeline_columns=TIMELINE_COLUMNS,
                      timeline=[[r[c] for c in TIMELINE_COLUMNS] for r in rows[:MAX_TIMELINE]],
                      timeline_truncated=len(rows) > MAX_TIMELINE)


Bbox = Annotated[list[float] | None, Query(description="south, west, north, east (repeat the parameter 4 times)")]
BoroughQuery = Annotated[str | None, Query(max_length=64)]


@router.get("/replay", response_model=ReplayPlan, summary="The units in an area and time window, and the timeline")
def area_replay(db: Db, who: Replayer, areas: ForceAreas, start: AwareDatetime | None = None,
                end: AwareDatetime | None = None, borough: BoroughQuery = None, bbox: Bbox = None) -> ReplayPlan:
    start, end = _window(start, end)
    area = _area(who, areas, borough, bbox)
    plan = _plan(db, area, start, end, borough=borough, incident_id=None, assigned=[])
    _audit(db, who, "area", area, start, end, plan.units, borough=borough)
    return plan


def _incident(db: Db, incident_id: int, who: Principal) -> tuple[dict[str, Any], replay.Area, datetime, datetime]:
    row = incidents.get(db, incident_id, boroughs=who.areas)
    if row is None:
        raise NotFound(f"no incident {incident_id} in your area")
    start = row["created_at"] - INCIDENT_PAD
    end = (row["closed_at"] or datetime.now(timezone.utc)) + INCIDENT_PAD
    start = max(start, end - MAX_SPAN)  # a long-running incident: its last day
    box = replay.bbox_around(row["lat"], row["lon"], row["radius_m"] + INCIDENT_MARGIN_M)
    return row, replay.Area(box, who.areas), start, end


@router.get("/incidents/{incident_id}/replay", response_model=ReplayPlan,
            summary="An incident's replay: its area and open..closed window (padded), the units and the timeline")
def incident_replay(incident_id: IncidentId, db: Db, who: Replayer) -> ReplayPlan:
    row, area, start, end = _incident(db, incident_id, who)
    assigned = [u["device_id"] for u in incidents.units(db, incident_id)]
    plan = _plan(db, area, start, end, borough=None, incident_id=incident_id, assigned=assigned)
    _audit(db, who, "incident", area, start, end, plan.units, incident_id=incident_id)
    return plan


@router.get("/replay/frames", response_model=Frames,
            summary="Each unit's latest fix per time slice in an area: one query for every unit, a page of slices")
def frames(request: Request, db: Db, who: Replayer, areas: ForceAreas, start: AwareDatetime | None = None,
           end: AwareDatetime | None = None, step_s: Annotated[float, Query(ge=0.5, le=3600)] = 5.0,
           borough: BoroughQuery = None, bbox: Bbox = None) -> Response:
    start, end = _window(start, end)
    slices = int(-(-(end - start).total_seconds() // step_s))
    if slices > MAX_SLICES:
        raise InvalidRequest(f"at most {MAX_SLICES} slices a request: page through the window")
    area = _area(who, areas, borough, bbox)
    rows = replay.frames(db, area, start=start, end=end, step_s=step_s, timescaledb=_timescaledb(request, db))
    units: dict[str, int] = {}
    unit_rows: list[list[str | None]] = []
    officers: dict[tuple[str | None, str | None], int] = {}
    points: list[list[float | int | None]] = []
    for r in rows:
        unit = units.get(r["device_id"])
        if unit is None:
            unit = units[r["device_id"]] = len(unit_rows)
            unit_rows.append([r["device_id"], r["callsign"], r["borough"], r["role"]])
        officer = -1
        if r["officer"] is not None:
            officer = officers.setdefault((r["officer"], r["officer_callsign"]), len(officers))
        recording = RECORDING_STATES.index(r["recording"]) if r["recording"] in RECORDING_STATES else 2
        heading = None if r["heading_deg"] is None else round(r["heading_deg"])
        points.append([r["k"], unit, round((r["ts"] - start).total_seconds() * 1000), round(r["lat"], 6),
                       round(r["lon"], 6), heading, recording, officer])
    _audit(db, who, "frames", area, start, end, None, shown=len(unit_rows), step_s=step_s)
    # Serialised as it stands, not validated point by point against Frames (which documents it):
    # a page of 500 units is tens of thousands of small arrays, and it is the first frame's wait.
    body = {"start": start, "step_s": step_s, "slices": slices, "units": unit_rows,
            "officers": [[o, c] for o, c in officers], "recording_states": list(RECORDING_STATES),
            "columns": list(POINT_COLUMNS), "points": points}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/incidents/{incident_id}/export.zip", response_class=Response,
            responses={200: {"content": {"application/zip": {}}}},
            summary="An incident for disclosure: units, officers, tracks, events, alerts, viewings and a manifest")
def export(incident_id: IncidentId, db: Db, who: Discloser) -> Response:
    row, area, start, end = _incident(db, incident_id, who)
    assigned = {u["device_id"] for u in incidents.units(db, incident_id)}
    units = replay.units_in(db, area, start=start, end=end, also=sorted(assigned))
    ids = [u["device_id"] for u in units]
    fixes = replay.fixes(db, ids, start=start, end=end, limit=MAX_EXPORT_FIXES + 1) if ids else []
    if len(fixes) > MAX_EXPORT_FIXES:
        raise InvalidRequest(f"more than {MAX_EXPORT_FIXES} fixes: too large for one archive")
    events = [r for r in replay.timeline(db, ids, start=start, end=end, limit=MAX_EXPORT_ROWS)
              if r["kind"] == "event"] if ids else []
    watched = viewings.viewings(db, boroughs=who.areas, limit=MAX_EXPORT_ROWS,
                                where=viewings.ViewingFilter(since=start, until=end))
    content = Export(incident=row, start=start, end=end, assigned=assigned, units=units,
                     windows=replay.windows(db, ids, start=start, end=end) if ids else [], fixes=fixes,
                     events=events, alerts=replay.alerts(db, ids, start=start, end=end) if ids else [],
                     viewings=[v for v in watched if v["device_id"] in set(ids)],
                     exported_by=who.username, exported_at=datetime.now(timezone.utc))
    files = content.files()
    # One entry per export, like a replay's: its units by borough, so that an auditor of a
    # borough finds it (also that of the incident's borough, when no unit was there) and reads
    # only their units in it (api/routes/audit.py); and every file's hash. The manifest then
    # carries the chain's head, which is this very entry: whoever holds the archive can find it
    # in the log and see it unchanged.
    by_borough = _by_borough(((u["device_id"], u["borough"]) for u in units), also=row["borough"])
    audit.record(db, actor=who.username, action="export",
                 details={"report": "incident.zip", "incident_id": incident_id, "start": _utc(start),
                          "end": _utc(end), "boroughs": by_borough, "units": len(ids), "fixes": len(fixes),
                          "sha256": content.digests(files)})
    head = audit.checkpoint(db, key=None)
    archive = build_archive(content, files, head_seq=head.seq, head_hash=head.hash)
    db.commit()  # the record is in before the archive leaves
    stamp = content.exported_at.strftime("%Y%m%dT%H%M%SZ")
    return Response(archive, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="incident-{incident_id}-{stamp}.zip"'})
