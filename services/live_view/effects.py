"""The effects live view's pure decisions return, as plain data, in the order they must
happen; :class:`services.live_view.LiveView` performs them, and writes :class:`Audit` rows
in the same transaction as the records they describe."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.commands import CommandType

__all__ = ["Announce", "ArmIdle", "Audit", "CancelIdle", "CloseStream", "Effect", "Row", "SendCommand",
           "announcement"]

Row = Mapping[str, Any]


@dataclass(frozen=True)
class SendCommand:
    device_id: str
    kind: CommandType
    params: Mapping[str, Any]
    command_id: str | None = None  # a fresh one when None


@dataclass(frozen=True)
class Announce:
    event: str
    device_id: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CloseStream:
    """Close this process's stream of ``device_id`` (nothing when there is none)."""

    device_id: str
    reason: str


@dataclass(frozen=True)
class ArmIdle:
    """(Re)start the no-viewer timer of ``device_id``'s stream."""

    device_id: str


@dataclass(frozen=True)
class CancelIdle:
    device_id: str


@dataclass(frozen=True)
class Audit:
    actor: str
    action: str
    device_id: str
    details: Mapping[str, Any]


Effect = SendCommand | Announce | CloseStream | ArmIdle | CancelIdle


def announcement(effect: Announce) -> dict[str, Any]:
    """The message published on the live-view topic for ``effect``."""
    body = {"type": "live_view", "event": effect.event, "device_id": effect.device_id, **effect.fields}
    request = effect.fields.get("request")
    if request is not None:  # a request's answer, flat as well: what a client matches on
        body.update(request_id=request["request_id"], status=request["status"], detail=request["detail"])
    return body
