"""Commands to cameras and their replies (docs/mqtt-contract.md, "Commands and replies").

Watchfloor publishes a :class:`Command` on ``watchfloor/v1/devices/{id}/commands`` (QoS 1);
the camera answers with a :class:`CommandReply` on ``.../command-replies``, quoting the id.
The models are strict like the rest of the contract, and shared by the API (which sends
commands and reads replies) and the simulator (which plays the camera).
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Annotated, Any

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, StrictStr

__all__ = ["COMMAND_ID", "Command", "CommandReply", "CommandType", "ReplyStatus", "command", "reply"]

#: A command id: chosen by Watchfloor, quoted by the reply.
COMMAND_ID = r"^[A-Za-z0-9_-]{1,64}$"


class CommandType(StrEnum):
    CONFIG = "config"
    LIVE_VIEW_REQUEST = "live_view_request"  # params: requested_by, reason, basis
    LIVE_VIEW_STOP = "live_view_stop"  # params: reason
    LIVE_VIEW_STATUS = "live_view_status"  # params: viewers (how many are watching now)


class ReplyStatus(StrEnum):
    ACCEPTED = "accepted"
    DECLINED = "declined"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Command(_Strict):
    id: Annotated[StrictStr, Field(pattern=COMMAND_ID)]
    ts: AwareDatetime
    type: CommandType
    expires_s: Annotated[StrictInt, Field(ge=1, le=3600)]
    params: Annotated[dict[str, Any], Field(max_length=16)] = Field(default_factory=dict)

    def expired(self, now: datetime) -> bool:
        return (now - self.ts).total_seconds() > self.expires_s


class CommandReply(_Strict):
    id: Annotated[StrictStr, Field(pattern=COMMAND_ID)]
    ts: AwareDatetime
    status: ReplyStatus
    detail: Annotated[StrictStr, Field(max_length=200)] | None = None


def _rfc3339(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def command(*, command_id: str, kind: CommandType, params: dict[str, Any], expires_s: int,
            now: datetime | None = None) -> bytes:
    """A command's JSON payload (validated, so Watchfloor never sends what it would refuse)."""
    body = {"id": command_id, "ts": _rfc3339(now or datetime.now(timezone.utc)), "type": kind.value,
            "expires_s": expires_s, "params": params}
    return Command.model_validate_json(_dumps(body)).model_dump_json().encode()


def reply(*, command_id: str, status: ReplyStatus, detail: str | None = None,
          now: datetime | None = None) -> bytes:
    """A reply's JSON payload, as a camera sends it."""
    body = {"id": command_id, "ts": _rfc3339(now or datetime.now(timezone.utc)), "status": status.value,
            "detail": detail}
    return _dumps(body)


def _dumps(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)
