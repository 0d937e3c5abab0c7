"""How a simulated camera answers the control room: the pure decision.

A real camera shows a live-view request to its officer, who accepts or declines; while live
it shows who is watching and why (:func:`wearer_display`, from ``live_view_status``). The
simulated officer accepts unless busy (an emergency), docked (off duty) or unable to stream
(no video uplink configured), and otherwise declines a seeded share of requests, so a
demo shows both answers and a run is repeatable. A request made under the force's policy
(``basis: policy_recording``) is not a question: the camera complies and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.commands import Command, ReplyStatus
from simulator.fleet import Unit

__all__ = ["CameraPolicy", "WearerDisplay", "Watching", "answer_live_view_request", "wearer_display"]


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
    if unit.live:
        return ReplyStatus.ACCEPTED, "already live"
    if unit.emergency_s > 0:
        return ReplyStatus.DECLINED, "officer busy"
    if unit.rng.random() < policy.decline_share:
        return ReplyStatus.DECLINED, "declined by the officer"
    return ReplyStatus.ACCEPTED, None


@dataclass(frozen=True)
class Watching:
    """One viewer as the camera shows them (named as the force chose: name, call sign or role)."""

    name: str
    role: str
    since: str
    reason: str | None


@dataclass(frozen=True)
class WearerDisplay:
    """What the camera's screen says while live: how many watch, who, and why it may stream."""

    viewers: int
    watching: tuple[Watching, ...]
    basis: str | None
    reason: str | None

    def line(self) -> str:
        """The screen as one log line."""
        who = "; ".join(f"{w.name} ({w.role}, since {w.since}, {w.reason or 'no reason given'})"
                        for w in self.watching) or "nobody"
        why = f"{self.basis or 'no consent'}" + (f": {self.reason}" if self.reason else "")
        return f"{self.viewers} watching: {who} | allowed by {why}"


def _text(value: Any) -> str | None:
    return "".join(c for c in value if c.isprintable())[:200] if isinstance(value, str) else None


def wearer_display(params: Mapping[str, Any]) -> WearerDisplay | None:
    """A ``live_view_status`` command's params as the screen shows them; None when they do not
    say how many watch. A contract 1.0 status (the count alone) shows the count; list entries
    that are not well formed are left out, never guessed at."""
    viewers = params.get("viewers")
    if not isinstance(viewers, int) or isinstance(viewers, bool):
        return None
    raw = params.get("watching")
    entries = raw if isinstance(raw, list) else []
    watching = tuple(Watching(name, _text(e.get("role")) or "?", _text(e.get("since")) or "?", _text(e.get("reason")))
                     for e in entries[:1_000] if isinstance(e, dict) and (name := _text(e.get("name"))))
    return WearerDisplay(max(0, min(1_000, viewers)), watching, _text(params.get("basis")), _text(params.get("reason")))
