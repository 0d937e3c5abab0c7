"""Decoding: a pure function from one MQTT message to a record to store or a rejection.

No I/O here, so every rule is tested from recorded samples (tests/samples/). The ingest
loop calls :func:`decode` for each message and stores whichever result comes back.

Two validators, one behaviour. msgspec validates each payload straight into the structs of
:mod:`core.reports`, in C: that is the path every good message takes. Whatever msgspec
refuses goes to the contract's pydantic model, which stays the referee: it names the
rejection (its reason and detail, as before msgspec) or, for the few spellings pydantic
accepts and msgspec does not (a timestamp without seconds, a decimal comma), accepts it and
its values are converted into the struct. A timestamp with more than six fractional digits
also goes to the referee, because msgspec rounds where pydantic truncates. So the contract's
behaviour is pydantic's exactly, at msgspec's cost for good messages (tests/test_decode_structs.py
compares the two on recorded, hand-written and generated payloads).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum

import msgspec
from pydantic import BaseModel, ValidationError

from core.contract import DEVICE_ID_RE, TOPIC_ROOT, Channel, Event, Telemetry
from core.reports import EventReport, TelemetryReport

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
    message: TelemetryReport | EventReport


_RANGE_ERRORS = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_long", "too_short"}
)


_CHANNELS = {channel.value: channel for channel in Channel}


@functools.lru_cache(maxsize=1 << 15)
def parse_topic(topic: str) -> tuple[str, Channel] | None:
    """``watchfloor/v1/devices/{id}/{channel}`` -> (id, channel), or None if it is not one.

    Cached: a fleet's topics are few and come back every second or so, and a hit costs a
    fifth of the split and the pattern (bounded: a topic not seen for long is pushed out)."""
    prefix, _, rest = topic.rpartition("/")
    root, _, device_id = prefix.rpartition("/")
    if root != TOPIC_ROOT or not DEVICE_ID_RE.fullmatch(device_id):
        return None
    channel = _CHANNELS.get(rest)
    return None if channel is None else (device_id, channel)


class _TsText(msgspec.Struct):
    """Only the timestamp's text, to see how many fractional digits it has."""

    ts: str = ""


_STRUCT_DECODERS: dict[Channel, msgspec.json.Decoder[TelemetryReport] | msgspec.json.Decoder[EventReport]] = {
    Channel.TELEMETRY: msgspec.json.Decoder(TelemetryReport),
    Channel.EVENTS: msgspec.json.Decoder(EventReport),
}
_MODELS: dict[Channel, type[Telemetry] | type[Event]] = {Channel.TELEMETRY: Telemetry, Channel.EVENTS: Event}
_REPORTS: dict[Channel, type[TelemetryReport] | type[EventReport]] = {
    Channel.TELEMETRY: TelemetryReport, Channel.EVENTS: EventReport}
_TS_TEXT = msgspec.json.Decoder(_TsText)
# A fraction of a second longer than microseconds: msgspec rounds it, pydantic truncates it.
_SUB_MICROSECOND = re.compile(r"[.,][0-9]{7}")


def _sub_microsecond(payload: bytes) -> bool:
    """The timestamp msgspec accepted has more than six fractional digits (read again by
    msgspec, which skips the rest: cheaper than looking for it in the bytes)."""
    return _SUB_MICROSECOND.search(_TS_TEXT.decode(payload).ts) is not None


def _struct_from(model: BaseModel, channel: Channel) -> TelemetryReport | EventReport:
    """What the referee accepted, as the struct msgspec would have made."""
    return msgspec.convert(model.model_dump(), _REPORTS[channel], from_attributes=False)


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

    decoder = _STRUCT_DECODERS.get(channel)
    if decoder is None:  # commands and replies flow towards devices; ingest does not store them
        return Rejection(Reason.BAD_TOPIC, f"ingest does not take {channel.value}", device_id)

    if b"\\" in payload and b"\\u0000" in payload:  # PostgreSQL text and jsonb cannot hold NUL (memchr first)
        return Rejection(Reason.WRONG_TYPE, "NUL characters are not allowed in strings", device_id)
    message: TelemetryReport | EventReport
    try:
        message = decoder.decode(payload)
        if _sub_microsecond(payload):
            raise msgspec.ValidationError("more than six fractional digits")
    except msgspec.MsgspecError:
        try:
            model = _MODELS[channel].model_validate_json(payload)
        except ValidationError as error:
            reason, detail = _reason_for(error)
            return Rejection(reason, detail, device_id)
        message = _struct_from(model, channel)

    ts = message.ts.astimezone(timezone.utc)
    if ts > now + limits.max_future_skew:
        return Rejection(Reason.FUTURE_TIMESTAMP, f"ts {ts.isoformat()} is ahead of {now.isoformat()}", device_id)
    if ts < now - limits.max_age:
        return Rejection(Reason.TOO_OLD, f"ts {ts.isoformat()} is past retention", device_id)
    return Decoded(device_id, message)
