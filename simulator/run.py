"""The simulator's main loop: step each unit at its report time and publish what it says."""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
from pydantic import ValidationError

from core.commands import Command, CommandType, ReplyStatus, reply
from core.contract import Channel, topic_for
from core.mqtt import BrokerAddress
from simulator.camera import CameraPolicy, answer_live_view_request, wearer_display
from simulator.fleet import FleetProfile, Unit, build_fleet
from simulator.geo import load_boroughs
from simulator.publisher import ClientPool
from simulator.video import VideoUplink

__all__ = ["SimulatorStats", "Simulator", "default_connections"]

log = logging.getLogger(__name__)

# Past this many devices, one connection each would exhaust file descriptors here (and on
# most brokers' defaults), so devices share connections and their Last Will is simulated.
DEDICATED_LIMIT = 2_000


def default_connections(devices: int) -> int:
    return devices if devices <= DEDICATED_LIMIT else 200


@dataclass
class SimulatorStats:
    published: int = 0
    ticks: int = 0
    late_s: float = 0.0  # how far behind schedule the last report went out
    # Events sent, by type, and the units that sent each (what a test expects ingest to raise).
    events: Counter[str] = field(default_factory=Counter)
    senders: dict[str, set[str]] = field(default_factory=dict)


class Simulator:
    def __init__(self, *, mqtt_url: str, devices: int, interval_s: float, seed: int,
                 connections: int | None = None, profile: FleetProfile | None = None,
                 client_prefix: str = "watchfloor-sim", first: int = 0, commands: bool = True,
                 video: VideoUplink | None = None, camera_policy: CameraPolicy | None = None,
                 time_scale: float = 1.0) -> None:
        self.profile = profile or FleetProfile()
        # Simulated seconds per real second: each report advances its unit by interval_s ×
        # time_scale (battery, recordings, GPS losses, drops), so a test lives ten minutes
        # of a shift in one. Timestamps stay real: ingest refuses reports from the future.
        self.time_scale = time_scale
        self.units: list[Unit] = build_fleet(load_boroughs(), devices, seed=seed, profile=self.profile, first=first)
        self._by_id = {u.device_id: u for u in self.units}
        self.interval_s = interval_s
        count = min(connections or default_connections(devices), devices)
        self.dedicated = count == devices
        wills: list[str | None] = [topic_for(u.device_id, Channel.STATUS) if self.dedicated else None
                                   for u in self.units[:count]]
        # Each camera reads its own commands topic (live-view requests), on its connection.
        subscriptions: list[list[str]] = [[] for _ in range(count)]
        if commands:
            for unit in self.units:
                subscriptions[(unit.index - first) % count].append(topic_for(unit.device_id, Channel.COMMANDS))
        self._pool = ClientPool(BrokerAddress.parse(mqtt_url), prefix=f"{client_prefix}-{first}", count=count,
                                wills=wills, subscriptions=subscriptions)
        self._video: VideoUplink | None = None
        if video is not None:
            self.attach_video(video)
        self.camera_policy = camera_policy or CameraPolicy()
        self.connections = count
        self._first = first
        self.stats = SimulatorStats()
        self._stopping = threading.Event()

    def attach_video(self, video: VideoUplink) -> None:
        """Stream over ``video`` (before :meth:`run`): cameras then accept live-view requests."""
        video.labels.update({u.device_id: f"{u.device_id} {u.callsign}" for u in self.units})
        self._video = video

    def stop(self) -> None:
        self._stopping.set()

    @property
    def dropped(self) -> int:
        """Reports not sent because a connection was backlogged."""
        return self._pool.dropped

    def _connection(self, unit: Unit) -> int:
        return (unit.index - self._first) % self.connections

    def _send(self, unit: Unit, channel: Channel, payload: bytes, retain: bool = False) -> None:
        self._pool.publish(self._connection(unit), topic_for(unit.device_id, channel), payload, retain=retain)
        self.stats.published += 1

    def _send_all(self, unit: Unit, messages: list[tuple[Channel, dict[str, Any]]]) -> None:
        for channel, payload in messages:
            if channel is Channel.EVENTS:
                self.stats.events[payload["type"]] += 1
                self.stats.senders.setdefault(payload["type"], set()).add(unit.device_id)
            self._send(unit, channel, orjson.dumps(payload))

    def _go_offline(self, unit: Unit) -> None:
        unit.offline_s = unit.rng.uniform(5, 120)
        if self.dedicated:
            self._pool.drop(self._connection(unit))  # the broker publishes the Last Will
        else:
            self._send(unit, Channel.STATUS, b"offline", retain=True)

    def _come_back(self, unit: Unit) -> None:
        if self.dedicated:
            self._pool.connect(self._connection(unit))
        else:
            self._send(unit, Channel.STATUS, b"online", retain=True)

    def run(self, *, duration_s: float | None = None, ready: threading.Event | None = None) -> None:
        pool = self._pool
        pool.connect_all()
        started = time.monotonic()
        # Spread the reports over the interval so the load is steady, not a burst a second.
        schedule = [(started + self.interval_s * i / len(self.units), i) for i in range(len(self.units))]
        heapq.heapify(schedule)
        for unit in self.units:
            if pool.is_up(self._connection(unit)):
                self._send(unit, Channel.STATUS, b"online", retain=True)
        if ready is not None:
            ready.set()
        next_keepalive = started + 1.0
        reconnecting: set[int] = set()
        try:
            while not self._stopping.is_set():
                now_mono = time.monotonic()
                if duration_s is not None and now_mono - started >= duration_s:
                    break
                now = datetime.now(timezone.utc)
                while schedule and schedule[0][0] <= now_mono:
                    due, index = heapq.heappop(schedule)
                    self._tick(self.units[index], now, reconnecting)
                    heapq.heappush(schedule, (due + self.interval_s, index))
                    self.stats.late_s = now_mono - due
                if now_mono >= next_keepalive:
                    pool.keepalive()
                    for index in list(reconnecting):
                        if pool.is_up(self._connection(self.units[index])):
                            reconnecting.discard(index)
                            self._send(self.units[index], Channel.STATUS, b"online", retain=True)
                    next_keepalive = now_mono + 1.0
                # Reports due within 5 ms go out together: far fewer wake-ups for a big fleet.
                wait = schedule[0][0] - time.monotonic() if schedule else 0.05
                pool.pump(0.0 if wait < 0 else min(max(wait, 0.005), 0.05))
                if pool.inbox:
                    self._serve_commands()
                if self._video is not None:
                    for device_id, live in self._video.changes():
                        unit = self._by_id[device_id]
                        unit.live = live
                        unit.viewers = unit.viewers if live else 0
                        unit.watching = unit.watching if live else ()
        finally:
            pool.close()

    def _tick(self, unit: Unit, now: datetime, reconnecting: set[int]) -> None:
        self.stats.ticks += 1
        dt = self.interval_s * self.time_scale  # simulated seconds since this unit's last tick
        if unit.offline_s > 0:
            unit.offline_s -= dt
            unit.step(now, dt, self.profile)  # the world goes on without coverage
            if unit.offline_s <= 0:
                self._come_back(unit)
                if self.dedicated:
                    reconnecting.add(unit.index)
            return
        if unit.rng.random() < 1.0 - math.exp(-self.profile.drops_per_h * dt / 3600):
            self._go_offline(unit)
            return
        # A watch_me goes out like any event; the camera dials in when the API, with the
        # consent on record, sends it a live_view_request (basis officer_request).
        self._send_all(unit, unit.step(now, dt, self.profile))

    def _serve_commands(self) -> None:
        """Answer what the control room sent, as each camera's firmware would."""
        now = datetime.now(timezone.utc)
        inbox = self._pool.inbox
        while inbox:
            topic, payload = inbox.popleft()
            unit = self._by_id.get(topic.split("/")[-2])
            if unit is None or not unit.online:
                continue  # a camera out of coverage hears nothing
            try:
                order = Command.model_validate_json(payload)
            except ValidationError:
                log.info("%s: ignored a malformed command", topic)
                continue
            self._obey(unit, order, now)

    def _obey(self, unit: Unit, order: Command, now: datetime) -> None:
        video = self._video
        if order.type is CommandType.LIVE_VIEW_REQUEST:
            log.info("%s (%s) wearer sees: %s asks to watch (%s): %s", unit.device_id, unit.callsign,
                     order.params.get("requested_by"), order.params.get("basis"), order.params.get("reason"))
            status, detail = answer_live_view_request(
                unit, order, now=now, policy=self.camera_policy,
                can_stream=video is not None and video.can_stream(unit.device_id))
            self._send(unit, Channel.COMMAND_REPLIES, reply(command_id=order.id, status=status, detail=detail))
            if status is ReplyStatus.ACCEPTED and video is not None:
                video.start(unit.device_id)
        elif order.type is CommandType.LIVE_VIEW_STOP:
            if video is not None:
                video.stop(unit.device_id)
            unit.live, unit.viewers, unit.watching = False, 0, ()
            log.info("%s (%s) wearer sees: live view stopped (%s)", unit.device_id, unit.callsign,
                     order.params.get("reason"))
            self._send(unit, Channel.COMMAND_REPLIES, reply(command_id=order.id, status=ReplyStatus.DONE))
        elif order.type is CommandType.LIVE_VIEW_STATUS:
            display = wearer_display(order.params)
            if display is not None:
                unit.viewers = display.viewers  # reported in its next telemetry
                unit.watching = tuple(w.name for w in display.watching)
                log.info("%s (%s) wearer sees: %s", unit.device_id, unit.callsign, display.line())
        else:
            self._send(unit, Channel.COMMAND_REPLIES, reply(command_id=order.id, status=ReplyStatus.FAILED,
                                                            detail="not supported by the simulator"))
