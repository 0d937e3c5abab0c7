"""One websocket client of the live feed: what waits to be sent to it, and its sender.

Two bounded queues per client. Deltas: a few shared, already encoded frames may queue (a
client whose sender has not run since the last tick is not slow, only unlucky); past
``QUEUED_FRAMES`` the client is slow, and its deltas are merged per unit into a
:class:`~api.live.deltas.Pending` (bounded by the units of its view). Alerts and live-view
changes: queued up to ``alert_backlog`` alerts; past that the oldest frames are dropped,
counted, and the client is told to re-read them over REST (``alerts_dropped``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import orjson
from fastapi import WebSocket

from api.live.deltas import Delta, Pending, View, encode_delta
from services.accounts import Principal

__all__ = ["QUEUED_FRAMES", "FeedCounters", "LiveClient"]

QUEUED_FRAMES = 4


@dataclass
class FeedCounters:
    """Totals of the live feed since the process started, read by its metrics. Written on
    the event loop, but for the broker's three (paho's thread, their only writer)."""

    connections: int = 0  # clients registered (each got a snapshot)
    units_conflated: int = 0  # intermediate states of a unit merged away for a lagging client
    alerts_dropped: int = 0  # alert changes not sent to a lagging client (told to re-read)
    broker_messages: int = 0
    unit_updates: int = 0  # unit states taken from ingest's frames (paho's thread)
    bad_frames: int = 0  # frames this version could not read, dropped (paho's thread)


@dataclass(eq=False)
class LiveClient:
    """One websocket client: its principal, and what waits to be sent to it."""

    who: Principal
    websocket: WebSocket
    alert_backlog: int
    frames: deque[str] = field(default_factory=deque)  # shared, already encoded
    pending: Pending = field(default_factory=Pending)  # conflated, for a lagging client
    alert_frames: deque[tuple[str, int]] = field(default_factory=deque)  # (shared text, alerts in it)
    queued_alerts: int = 0
    alerts_dropped: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    sent_frames: int = 0
    conflated_units: int = 0
    counters: FeedCounters = field(default_factory=FeedCounters)  # the hub's, shared
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # its token was revoked
    end_reason: str = ""

    def end(self, reason: str) -> None:
        """End this client's feed (its websocket closes with the reason): its token is over."""
        self.end_reason = reason
        self.ended.set()

    @property
    def view(self) -> View:
        return self.who.sees_positions, self.who.areas

    def offer(self, frame: str, delta: Delta) -> None:
        """Queue this tick's ``delta`` (``frame`` is it encoded, shared with its view)."""
        if not self.pending and len(self.frames) < QUEUED_FRAMES:
            self.frames.append(frame)
        else:
            conflated = self.pending.add(delta)
            self.conflated_units += conflated
            self.counters.units_conflated += conflated
        self.ready.set()

    def offer_alerts(self, frame: str, count: int) -> None:
        self.alert_frames.append((frame, count))
        self.queued_alerts += count
        while self.queued_alerts > self.alert_backlog and len(self.alert_frames) > 1:
            _, dropped = self.alert_frames.popleft()  # the client is told, and re-reads over REST
            self.queued_alerts -= dropped
            self.alerts_dropped += dropped
            self.counters.alerts_dropped += dropped
        self.ready.set()

    async def send_loop(self) -> None:
        ws = self.websocket
        while True:
            await self.ready.wait()
            self.ready.clear()
            while self.alert_frames:
                frame, count = self.alert_frames.popleft()
                self.queued_alerts -= count
                await ws.send_text(frame)
            if self.alerts_dropped:
                dropped, self.alerts_dropped = self.alerts_dropped, 0
                await ws.send_text(orjson.dumps({"type": "alerts_dropped", "count": dropped}).decode())
            while self.frames:
                await ws.send_text(self.frames[0])
                self.frames.popleft()
                self.sent_frames += 1
            if self.pending:
                await ws.send_text(encode_delta(self.pending.take()))
                self.sent_frames += 1
