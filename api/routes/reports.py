"""Reports for fleet managers: the fleet's health as CSV, generated on the server so that
it is filtered by the caller's area like every other read, bounded, and recorded."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from api.auth import require
from api.deps import Db
from api.errors import ErrorBody
from api.spreadsheet import csv_cell
from services import audit
from services.accounts import Principal, Role
from telemetry import queries

__all__ = ["EXPORT_COLUMNS", "MAX_EXPORT_ROWS", "router"]

router = APIRouter(prefix="/api/v1/fleet", tags=["reports"],
                   responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 422: {"model": ErrorBody}})

Reporter = Annotated[Principal, Depends(require(Role.FLEET_MANAGER, Role.ADMIN))]
#: One export holds at most this many devices (the Met's fleet is about 22,000).
MAX_EXPORT_ROWS = 50_000
#: Health only: no positions and no officer names, whoever asks (a report leaves the system).
EXPORT_COLUMNS = ("device_id", "callsign", "borough", "role", "state", "online", "battery_pct", "charging",
                  "storage_pct", "docked", "firmware", "last_seen", "gps_fix")


@router.get("/export.csv", response_class=Response, summary="The fleet's health as CSV (fleet managers, admins)",
            responses={200: {"content": {"text/csv": {}}}})
def export_csv(db: Db, who: Reporter, borough: Annotated[str | None, Query(max_length=64)] = None,
               limit: Annotated[int, Query(ge=1, le=MAX_EXPORT_ROWS)] = MAX_EXPORT_ROWS) -> Response:
    rows, total = queries.list_devices(db, boroughs=who.areas, where=queries.DeviceFilter(borough=borough),
                                       limit=limit, offset=0)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
    writer.writerow(EXPORT_COLUMNS)
    for row in rows:
        writer.writerow([csv_cell(row["received_at"] if c == "last_seen" else row.get(c)) for c in EXPORT_COLUMNS])
    # Recorded in the request's transaction: if the entry cannot be written, no file leaves.
    audit.record(db, actor=who.username, action="export",
                 details={"report": "fleet.csv", "rows": len(rows), "total": total, "borough": borough,
                          "areas": "*" if who.areas is None else sorted(who.areas)})
    db.commit()  # the record is in before the file leaves (the request's own commit may come after the response)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="fleet-{stamp}.csv"',
                             "X-Total-Count": str(total), "X-Row-Count": str(len(rows))})
