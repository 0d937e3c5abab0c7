"""MQTT contract v1: topics and payload models (documented in docs/mqtt-contract.md).

The models are strict on purpose: a device that sends ``"12"`` for a number or ``false``
for a percentage is broken and should be told so, not silently coerced. Numbers may be
integers or floats (JSON does not distinguish ``12`` from ``12.0`` reliably across firmware).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "ALERTS_TOPIC",
    "ALERT_POLICY_TOPIC",
    "LIVE_UNITS_TOPIC",
    "ACCOUNTS_TOPIC",
    "REGISTRY_TOPIC",
    "SERVICE_PREFIX",
    "CHANNELS",
    "DEVICE_ID_RE",
    "TOPIC_ROOT",
    "Battery",
    "Channel",
    "CALLSIGN_MAX",
    "Checkout",
    "OFFICER_MAX",
    "Event",
    "EventType",
    "Gps",
    "RecordingState",
    "Status",
    "Telemetry",
    "checkout_of",
    "topic_for",
]

TOPIC_ROOT = "watchfloor/v1/devices"
#: Alert changes, published by ingest (and by the API on acknowledge/resolve) for every
#: API process to push live. Devices may neither publish nor read it (deploy/mosquitto/acl).
ALERTS_TOPIC = "watchfloor/v1/alerts"
#: The live picture: after each batch commits, ingest publishes one frame of the units it
#: stored (telemetry/live_frame.py), which every API process merges instead of decoding the
#: devices' topics again. Only ingest may write it; the API may only read it.
LIVE_UNITS_TOPIC = "watchfloor/v1/live/units"
#: Registry changes made through the API (a device registered, moved or retired), after
#: commit, so that every API process re-reads the registry for its live feed at once.
REGISTRY_TOPIC = "watchfloor/v1/registry"
#: Account changes (a user disabled, removed, re-added with another role or areas, signed
#: out), after commit, so that every API process re-reads the users' token versions at once
#: and refuses the tokens those changes ended. Only the API's service account may use it.
ACCOUNTS_TOPIC = "watchfloor/v1/accounts"
#: Alert policy changes made through the API, after commit, so that every ingest worker reads
#: the policy again before its next batch. Only the API writes it and only ingest reads it.
ALERT_POLICY_TOPIC = "watchfloor/v1/alert-policy"
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: The services' namespace at the broker: their usernames (watchfloor-ingest, watchfloor-api)
#: and client ids start with it, and no device id may. The cameras' listener makes a camera's
#: client id its device id (deploy/mosquitto), and Mosquitto's client ids are one namespace
#: across listeners, so a device id equal to a worker's client id would take its session.
SERVICE_PREFIX = "watchfloor-"


class Channel(StrEnum):
    """The last level of a device topic: what kind of message it carries."""

    TELEMETRY = "telemetry"
    EVENTS = "events"
    STATUS = "status"
    COMMANDS = "commands"
    COMMAND_REPLIES = "command-replies"


#: Channels that devices publish and ingest stores.
CHANNELS = (Channel.TELEMETRY, Channel.EVENTS, Channel.STATUS)


def topic_for(device_id: str, channel: Channel) -> str:
    """The topic a device publishes (or receives) ``channel`` on."""
    return f"{TOPIC_ROOT}/{device_id}/{channel.value}"


class RecordingState(StrEnum):
    OFF = "off"
    BUFFERING = "buffering"  # pre-event buffer running, nothing kept yet
    RECORDING = "recording"


class EventType(StrEnum):
    RECORDING_STARTED = "recording_started"
    RECORDING_STOPPED = "recording_stopped"
    EMERGENCY = "emergency"
    EMERGENCY_CLEARED = "emergency_cleared"
    DOCKED = "docked"
    UNDOCKED = "undocked"
    WATCH_ME = "watch_me"


Number = float  # strict float still accepts JSON integers
Seq = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]
Percent = Annotated[Number, Field(ge=0, le=100)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Battery(_Strict):
    pct: Percent
    charging: StrictBool
    temp_c: Annotated[Number, Field(ge=-40, le=100)] | None = None


class Gps(_Strict):
    lat: Annotated[Number, Field(ge=-90, le=90)]
    lon: Annotated[Number, Field(ge=-180, le=180)]
    accuracy_m: Annotated[Number, Field(ge=0, le=10_000)]
    speed_mps: Annotated[Number, Field(ge=0, le=100)] | None = None
    heading_deg: Annotated[Number, Field(ge=0, lt=360)] | None = None


class Telemetry(_Strict):
    """A periodic report: ``watchfloor/v1/devices/{id}/telemetry``, QoS 1."""

    seq: Seq
    ts: AwareDatetime
    battery: Battery
    gps: Gps | None
    recording: RecordingState
    storage_pct: Percent | None = None
    docked: StrictBool | None = None
    # Since 1.2: whether the camera's officer is on duty (signed on to the camera for a shift).
    on_duty: StrictBool | None = None
    firmware: Annotated[StrictStr, Field(min_length=1, max_length=32)] | None = None
    live: StrictBool = False
    viewers: Annotated[StrictInt, Field(ge=0, le=1_000)] = 0


class Event(_Strict):
    """A discrete event: ``watchfloor/v1/devices/{id}/events``, QoS 1."""

    seq: Seq
    ts: AwareDatetime
    type: EventType
    # Free-form but small: e.g. {"trigger": "holster"} for recording_started.
    details: Annotated[dict[str, Any], Field(max_length=16)] | None = None

    @model_validator(mode="after")
    def _checkout_is_well_formed(self) -> Event:
        """An ``undocked`` event's ``officer`` and ``callsign`` (since 1.2) open a custody
        window, so they are held to the contract like any field; other details stay free."""
        if self.type is EventType.UNDOCKED and self.details is not None:
            checkout_of(self.details)
        return self

    def checkout(self) -> Checkout | None:
        """Who took the camera out of its dock, if this is an ``undocked`` event that says so."""
        return checkout_of(self.details) if self.type is EventType.UNDOCKED else None


#: Lengths of an officer's name and a callsign wherever they are stored (the registry's too).
OFFICER_MAX = 100
CALLSIGN_MAX = 32


class Checkout(_Strict):
    """Who checked a camera out at the dock (release 1.2): the officer who now carries it,
    and the callsign they work under."""

    officer: str
    callsign: str | None = None


def checkout_of(details: Mapping[str, Any] | None) -> Checkout | None:
    """The checkout an ``undocked`` event's details carry: None if they name no officer (a
    1.0/1.1 camera, or a dock that does not know who). Raises the pydantic error a decoder
    maps to ``wrong_type`` or ``out_of_range`` if the fields are malformed."""
    details = details or {}
    officer, callsign = details.get("officer"), details.get("callsign")
    if officer is None:
        if callsign is not None:
            raise PydanticCustomError("missing", "details.officer: required with details.callsign")
        return None
    for name, value, limit in (("officer", officer, OFFICER_MAX), ("callsign", callsign, CALLSIGN_MAX)):
        if value is None:
            continue
        if not isinstance(value, str):
            raise PydanticCustomError("string_type", "details.{name}: must be a string", {"name": name})
        if not value.strip() or len(value) > limit:
            raise PydanticCustomError("too_long", "details.{name}: 1 to {limit} characters, not blank",
                                      {"name": name, "limit": limit})
    return Checkout(officer=officer.strip(), callsign=callsign.strip() if callsign else None)


Status = Literal["online", "offline"]
