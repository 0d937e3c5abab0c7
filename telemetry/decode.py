"""Decoding: a pure function from one MQTT message to a record to store or a rejection.

No I/O here, so every rule is tested from recorded samples (tests/samples/). The ingest
loop calls :func:`decode` for each message and stores whichever result comes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum

from pydantic import ValidationError

from core.contract import DEVICE_ID_RE, TOPIC_ROOT, Channel, Event, Telemetry

__all__ = [
    "Decoded",
    "PayloadLimits",
    "Reason",
    "Rejection",
    "StatusChange",
    "decode",
    "parse_topic",
]


class Reason(StrEnum):
    """Why a message was rejected; the label of the rejection counter."""

    BAD_TOPIC = "bad_topic"  # not a device topic, or a device id the contract does not allow
    OVERSIZED = "oversized"
    MALFORMED_JSON = "malformed_json"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    UNKNOWN_FIELD = "unknown_field"
    FUTURE_TIMESTAMP = "future_timestamp"
    TOO_OLD = "too_old"
    UNKNOWN_DEVICE = "unknown_device"
    RATE_LIMITED = "rate_limited"  # a device over its message rate (ingest's, not the decoder's)
    REFUSED_BY_DATABASE = "refused_by_database"  # a safety net: validation should catch it first


@dataclass(frozen=True, slots=True)
class PayloadLimits:
    """What one message may be: its size, and how far its timestamp may be from now."""

    max_payload_bytes: int
    max_future_skew: timedelta
    max_age: timedelta



@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    detail: str
    device_id: str | None


@dataclass(frozen=True, slots=True)
class StatusChange:
    device_id: str
    online: bool


@dataclass(frozen=True, slots=True)
class Decoded:
    device_id: str
    message: Telemetry | Event


_RANGE_ERRORS = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_long", "too_short"}
)


def parse_topic(topic: str) -> tuple[str, Channel] | None:
    """``watchfloor/v1/devices/{id}/{channel}`` -> (id, channel), or None if it is not one."""
    prefix, _, rest = topic.rpartition("/")
    root, _, device_id = prefix.rpartition("/")
    if root != TOPIC_ROOT or not DEVICE_ID_RE.fullmatch(device_id):
        return None
    try:
        return device_id, Channel(rest)
    except ValueError:
        return None


def _reason_for(error: ValidationError) -> tuple[Reason, str]:
    first = error.errors(include_url=False)[0]
    kind = first["type"]
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    if kind == "json_invalid":
        return Reason.MALFORMED_JSON, first["msg"]
    if kind == "missing":
        return Reason.MISSING_FIELD, f"{where}: required"
    if kind == "extra_forbidden":
        return Reason.UNKNOWN_FIELD, f"{where}: not in the contract"
    if kind in _RANGE_ERRORS:
        return Reason.OUT_OF_RANGE, f"{where}: {first['msg']}"
    return Reason.WRONG_TYPE, f"{where}: {first['msg']}"


def decode(
    topic: str,
    payload: bytes,
    *,
    now: datetime,
    limits: PayloadLimits,
) -> Decoded | StatusChange | Rejection:
    """Decode one message. Never raises for anything a device can send."""
    parsed = parse_topic(topic)
    if parsed is None:
        return Rejection(Reason.BAD_TOPIC, f"not a device topic: {topic[:200]!r}", None)
    device_id, channel = parsed
    if len(payload) > limits.max_payload_bytes:
        detail = f"{len(payload)} bytes, limit {limits.max_payload_bytes}"
        return Rejection(Reason.OVERSIZED, detail, device_id)

    if channel is Channel.STATUS:
        if payload in (b"online", b"offline"):
            return StatusChange(device_id, payload == b"online")
        return Rejection(Reason.WRONG_TYPE, "status must be 'online' or 'offline'", device_id)

    model: type[Telemetry] | type[Event]
    if channel is Channel.TELEMETRY:
        model = Telemetry
    elif channel is Channel.EVENTS:
        model = Event
    else:  # commands and replies flow towards devices; ingest does not store them
        return Rejection(Reason.BAD_TOPIC, f"ingest does not take {channel.value}", device_id)

    if b"\\u0000" in payload:  # PostgreSQL text and jsonb cannot hold NUL
        return Rejection(Reason.WRONG_TYPE, "NUL characters are not allowed in strings", device_id)
    try:
        message = model.model_validate_json(payload)
    except ValidationError as error:
        reason, detail = _reason_for(error)
        return Rejection(reason, detail, device_id)

    ts = message.ts.astimezone(timezone.utc)
    if ts > now + limits.max_future_skew:
        return Rejection(Reason.FUTURE_TIMESTAMP, f"ts {ts.isoformat()} is ahead of {now.isoformat()}", device_id)
    if ts < now - limits.max_age:
        return Rejection(Reason.TOO_OLD, f"ts {ts.isoformat()} is past retention", device_id)
    return Decoded(device_id, message)
