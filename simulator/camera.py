"""How a simulated camera answers the control room: the pure decision.

A real camera shows a live-view request to its officer, who accepts or declines. The
simulated officer accepts unless busy (an emergency), docked (off duty) or unable to stream
(no video uplink configured), and otherwise declines a seeded share of requests, so a
demo shows both answers and a run is repeatable. A request made under the force's policy
(``basis: policy_recording``) is not a question: the camera complies and says so; nor is
the go-ahead for its officer's own ``watch_me`` (``basis: officer_request``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from core.commands import Command, ReplyStatus
from simulator.fleet import Unit

__all__ = ["CameraPolicy", "answer_live_view_request"]


@dataclass(frozen=True)
class CameraPolicy:
    decline_share: float = 0.15  # requests the simulated officers decline, at random (seeded)


def answer_live_view_request(unit: Unit, request: Command, *, now: datetime, policy: CameraPolicy,
                             can_stream: bool) -> tuple[ReplyStatus, str | None]:
    """The reply status and its detail (shown to the requester)."""
    if request.expired(now):
        return ReplyStatus.EXPIRED, "the request arrived after it expired"
    if not can_stream:
        return ReplyStatus.DECLINED, "this camera has no video uplink"
    if unit.docked:
        return ReplyStatus.DECLINED, "the camera is docked"
    if request.params.get("basis") == "policy_recording":
        return ReplyStatus.ACCEPTED, "streaming under the force's policy while recording"
    if request.params.get("basis") == "officer_request":
        return ReplyStatus.ACCEPTED, "the officer asked to be watched"
    if unit.live:
        return ReplyStatus.ACCEPTED, "already live"
    if unit.emergency_s > 0:
        return ReplyStatus.DECLINED, "officer busy"
    if unit.rng.random() < policy.decline_share:
        return ReplyStatus.DECLINED, "declined by the officer"
    return ReplyStatus.ACCEPTED, None
