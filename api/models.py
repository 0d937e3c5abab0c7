"""Request and response bodies of the REST API (they are the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Alert", "AlertPage", "Assignment", "AssignmentEnd", "AssignmentIn", "DeviceIn", "DevicePage", "DeviceEvent",
           "FleetSummary", "HealthBucket", "OfficerTrackPoint",
           "NotSeen", "ResolveIn", "TokenIn", "TokenOut", "TrackPoint", "Unit"]

DEVICE_ID = r"^[A-Za-z0-9_-]{1,64}$"
RoleName = Literal["response", "firearms", "neighbourhood", "traffic", "custody", "other"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Unit(_Out):
    """A device and its latest state. Position fields are null for roles that may not see them."""

    device_id: str
    callsign: str | None = None
    officer: str | None = None
    borough: str | None = None
    role: str | None = None
    state: str | None = Field(default=None, description="offline, recording, buffering or off")
    ts: datetime | None = None
    received_at: datetime | None = None
    battery_pct: float | None = None
    charging: bool | None = None
    gps_fix: bool | None = None
    lat: float | None = None
    lon: float | None = None
    accuracy_m: float | None = None
    speed_mps: float | None = None
    heading_deg: float | None = None
    last_fix_at: datetime | None = None
    recording: str | None = None
    storage_pct: float | None = None
    docked: bool | None = None
    firmware: str | None = None
    live: bool | None = None
    viewers: int | None = None
    online: bool | None = None
    retired_at: datetime | None = None


class DevicePage(_Out):
    items: list[Unit]
    total: int
    limit: int
    offset: int


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device_id: str = Field(pattern=DEVICE_ID)
    callsign: str | None = Field(default=None, max_length=32)
    officer: str | None = Field(default=None, max_length=100)
    borough: str | None = Field(default=None, max_length=64)
    role: RoleName = "response"


class TrackPoint(_Out):
    ts: datetime
    lat: float
    lon: float
    accuracy_m: float | None = None
    speed_mps: float | None = None
    heading_deg: float | None = None
    recording: str | None = None
    officer: str | None = Field(default=None, description="who carried the camera then (null: docked or unknown)")
    callsign: str | None = None


class OfficerTrackPoint(TrackPoint):
    device_id: str = Field(description="the camera the officer carried at this fix")


class DeviceEvent(_Out):
    ts: datetime
    seq: int
    type: str
    details: dict[str, Any] | None = None
    officer: str | None = Field(default=None, description="who carried the camera then (a docked event: who docked it)")
    callsign: str | None = None


class Assignment(_Out):
    """A custody window: who carried the camera from ``valid_from`` until ``valid_to`` (null: still)."""

    id: int
    device_id: str
    officer: str
    callsign: str | None = None
    valid_from: datetime
    valid_to: datetime | None = None
    opened_by: str
    closed_by: str | None = None


class AssignmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    officer: str = Field(min_length=1, max_length=100, pattern=r"\S")
    callsign: str | None = Field(default=None, min_length=1, max_length=32)
    at: datetime | None = Field(default=None, description="from when (RFC 3339 with an offset); default now")


class AssignmentEnd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at: datetime | None = Field(default=None, description="when it ended (RFC 3339 with an offset); default now")


class HealthBucket(_Out):
    bucket: datetime
    battery_min: float | None
    battery_max: float | None
    battery_avg: float | None
    storage_max: float | None
    samples: int
    recording_samples: int


class NotSeen(_Out):
    device_id: str
    callsign: str | None
    borough: str | None
    last_seen: datetime | None


class FleetSummary(_Out):
    total: int
    by_state: dict[str, int]
    by_borough: dict[str, int]
    by_role: dict[str, int]
    low_battery: int
    docked: int
    charging: int
    not_seen: list[NotSeen] = Field(description="devices not seen for longer than not_seen_hours (at most 1,000)")


class Alert(_Out):
    id: int
    device_id: str | None = Field(description="the unit; none for a system alert (about Watchfloor itself)")
    subject: str | None = Field(default=None, description="what a system alert is about, e.g. storage_job:1000;"
                                " none for a unit's alert")
    kind: str
    severity: str
    status: str
    detail: str
    raised_at: datetime
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    outcome: str | None = None
    note: str | None = None
    escalated_at: datetime | None = None
    escalation_level: int = 0
    borough: str | None = None
    callsign: str | None = None
    role: str | None = None
    officer: str | None = Field(default=None, description="who carried the camera when the alert was raised (custody"
                                " windows); null for nobody on record, and for roles that do not see officers")


class AlertHistoryEntry(_Out):
    at: datetime
    action: Literal["raised", "escalated", "acknowledged", "resolved"]
    actor: str = Field(description="a user, or system (ingest: raised, escalated, cleared)")
    detail: str | None = None


class AlertHistory(_Out):
    alert: Alert
    history: list[AlertHistoryEntry] = Field(description="oldest first")


class AlertPage(_Out):
    items: list[Alert]
    limit: int
    offset: int


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcome: Literal["resolved", "false_alarm"]
    note: str | None = Field(default=None, max_length=2000)


class BulkAcknowledgeIn(BaseModel):
    """A selection (``ids``) or a filter; given together, an alert must match all of them.
    At least one is required: acknowledging everything in one's area is not a default."""
    model_config = ConfigDict(extra="forbid")
    ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] | None = Field(default=None, min_length=1, max_length=1000)
    kind: str | None = Field(default=None, min_length=1, max_length=64)
    severity: Literal["critical", "high", "warning", "info"] | None = None
    borough: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _something_chosen(self) -> BulkAcknowledgeIn:
        if self.ids is None and self.kind is None and self.severity is None and self.borough is None:
            raise ValueError("give ids, or a filter (kind, severity, borough)")
        return self


class BulkAcknowledged(_Out):
    count: int
    items: list[Alert]


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    role: str
    areas: list[str]


class UserOut(BaseModel):
    """A local user as an admin sees them (never their password hash)."""

    username: str
    role: str
    areas: list[str]
    display_name: str | None
    disabled: bool
