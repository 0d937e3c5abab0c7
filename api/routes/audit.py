"""The audit log for auditors: filtered by person, device, action and time, paged; and a
check of the hash chain."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from api.auth import require
from api.deps import Db
from api.errors import ErrorBody
from api.models import DEVICE_ID
from services import audit
from services.accounts import Principal, Role
from services.errors import InvalidRequest

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/audit", tags=["audit"],
                   responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 422: {"model": ErrorBody}})

# Auditors only: the people whose acts are recorded (admins change users and the registry)
# are not the ones who read the record.
Auditor = Annotated[Principal, Depends(require(Role.AUDITOR))]
MAX_PAGE = 1000
MAX_SPAN = timedelta(days=366)
MAX_OFFSET = 100_000


class AuditEntry(BaseModel):
    seq: int
    at: datetime
    actor: str
    action: str
    device_id: str | None
    details: dict[str, Any] | None
    hash: str = Field(description="this entry's hash (hex); the next entry's prev_hash")


class AuditPage(BaseModel):
    items: list[AuditEntry]
    limit: int
    offset: int


class AuditCheck(BaseModel):
    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    problems: list[dict[str, Any]] = Field(
        description="each entry changed, removed, relinked, reordered or downgraded, and a checkpoint not matched")
    checkpoint: str | None = Field(
        description="the latest stored checkpoint with a valid MAC (SEQ:HASH:TIME:MAC) the log was checked "
                    "against; null when none is stored")
    unchecked: int = Field(description="keyed entries not checked (this process has no audit key)")


@router.get("", response_model=AuditPage, summary="Audit entries, newest first, filtered and paged")
def list_entries(
    db: Db, who: Auditor,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    device_id: Annotated[str | None, Query(pattern=DEVICE_ID)] = None,
    action: Annotated[str | None, Query(max_length=64, description="one of the actions in docs/api.md")] = None,
    session_id: Annotated[str | None, Query(max_length=128, description="entries about one viewing session (its"
                                            " details' session_id)")] = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> AuditPage:
    end = end or datetime.now(timezone.utc)
    start = start or end - timedelta(days=30)
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidRequest("times need a UTC offset (RFC 3339)")
    if end <= start or end - start > MAX_SPAN:
        raise InvalidRequest("start must be before end, at most 366 days apart")
    if action is not None and action not in audit.ACTIONS:
        raise InvalidRequest(f"unknown action {action!r}")
    where: list[str] = ["a.at >= %s", "a.at < %s"]
    params: list[object] = [start, end]
    for column, value in (("a.actor", actor), ("a.device_id", device_id), ("a.action", action)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if session_id is not None:
        where.append("a.details->>'session_id' = %s")
        params.append(session_id)
    if who.areas is not None:
        # An auditor of some boroughs sees entries about devices there, and those about no device
        # but those naming units by borough (a replay's or an incident export's, `boroughs`) only when one is theirs.
        where.append("(d.borough = ANY(%s) OR (a.device_id IS NULL AND (NOT a.details ? 'boroughs'"
                     " OR a.details->'boroughs' ?| %s::text[])))")
        params.extend([sorted(who.areas), sorted(who.areas)])
    with db.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            "SELECT a.seq, a.at, a.actor, a.action, a.device_id, a.details, encode(a.hash, 'hex') AS hash"
            " FROM audit_log a LEFT JOIN devices d ON d.device_id = a.device_id"
            f" WHERE {' AND '.join(where)} ORDER BY a.seq DESC LIMIT %s OFFSET %s", (*params, limit, offset))
        rows = cursor.fetchall()
    return AuditPage(items=[AuditEntry.model_validate(_within(r, who.areas)) for r in rows], limit=limit,
                     offset=offset)


def _within(row: dict[str, Any], areas: frozenset[str] | None) -> dict[str, Any]:
    """The entry as this auditor may read it: of the units it names by borough, only those of
    their boroughs (the hash is of the whole entry, which /verify checks)."""
    details = row["details"]
    if areas is None or not isinstance(details, dict) or not isinstance(details.get("boroughs"), dict):
        return row
    return {**row, "details": {**details, "boroughs": {b: ids for b, ids in details["boroughs"].items()
                                                        if b in areas}}}


@router.get("/verify", response_model=AuditCheck, summary="Check the whole hash chain")
def verify_chain(db: Db, who: Auditor, request: Request) -> AuditCheck:
    # Against the latest stored checkpoint (`watchfloor audit checkpoint --store`): the runtime
    # role can only add to that table, and one without a valid MAC is passed over.
    key: bytes | None = request.app.state.audit_key
    saved = audit.latest_checkpoint(db, key=key) if key is not None else None
    report = audit.verify(db, key=key, checkpoints=[saved] if saved else [])
    return AuditCheck(ok=report.ok, entries=report.entries, head_seq=report.head_seq, head_hash=report.head_hash,
                      problems=[{"seq": p.seq, "id": p.id, "kind": p.kind, "message": p.message}
                                for p in report.problems[:100]],
                      checkpoint=saved.line() if saved else None, unchecked=report.unchecked)
