"""The contract's device payloads as msgspec structs: what ingest's hot decoder validates into.

:mod:`core.contract`'s pydantic models stay the contract's reference (its JSON Schema, the
API's models, and the referee :func:`telemetry.decode.decode` asks about anything these
structs refuse). These mirror them field for field, with the same bounds, so that a report
msgspec accepts is one the models accept, with the same values (tests/test_decode_structs.py
checks that on recorded, hand-written and generated payloads). msgspec validates JSON
straight into these, in C, at a fraction of pydantic's cost per message.

The structs are not tracked by the garbage collector (``gc=False``): they hold numbers,
strings and each other, never a cycle, and ingest makes three per message.

msgspec is strict by default, as the contract is: no ``"12"`` for a number, no ``1`` for a
boolean, no float for an integer; integers are accepted for floats; a timestamp must carry
its offset (``tz=True``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from core.contract import Checkout, EventType, RecordingState, checkout_of

__all__ = ["BatteryReport", "EventReport", "GpsReport", "TelemetryReport"]

Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]


class BatteryReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    pct: Percent
    charging: bool
    temp_c: Annotated[float, msgspec.Meta(ge=-40, le=100)] | None = None


class GpsReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    lat: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    lon: Annotated[float, msgspec.Meta(ge=-180, le=180)]
    accuracy_m: Annotated[float, msgspec.Meta(ge=0, le=10_000)]
    speed_mps: Annotated[float, msgspec.Meta(ge=0, le=100)] | None = None
    heading_deg: Annotated[float, msgspec.Meta(ge=0, lt=360)] | None = None


class TelemetryReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """:class:`core.contract.Telemetry`, decoded."""

    seq: Seq
    ts: Timestamp
    battery: BatteryReport
    gps: GpsReport | None
    recording: RecordingState
    storage_pct: Percent | None = None
    docked: bool | None = None
    firmware: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] | None = None
    live: bool = False
    viewers: Annotated[int, msgspec.Meta(ge=0, le=1_000)] = 0
    on_duty: bool | None = None


class EventReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """:class:`core.contract.Event`, decoded."""

    seq: Seq
    ts: Timestamp
    type: EventType
    details: Annotated[dict[str, Any], msgspec.Meta(max_length=16)] | None = None

    def __post_init__(self) -> None:
        # A malformed checkout is refused here (msgspec wraps the ValueError), so the
        # contract's model decides it and names the reason, as for any refused field.
        if self.type is EventType.UNDOCKED and self.details is not None:
            checkout_of(self.details)

    def checkout(self) -> Checkout | None:
        """Who took the camera out of its dock, if this is an ``undocked`` event that says so."""
        return checkout_of(self.details) if self.type is EventType.UNDOCKED else None
