"""The simulator's main loop: step each unit at its report time and publish what it says."""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import orjson

from telemetry.contract import Channel, topic_for
from telemetry.mqtt import BrokerAddress
from telemetry.simulator.fleet import FleetProfile, Unit, build_fleet
from telemetry.simulator.geo import load_boroughs
from telemetry.simulator.publisher import ClientPool

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


class Simulator:
    def __init__(self, *, mqtt_url: str, devices: int, interval_s: float, seed: int,
                 connections: int | None = None, profile: FleetProfile | None = None,
                 client_prefix: str = "watchfloor-sim", first: int = 0) -> None:
        self.profile = profile or FleetProfile()
        self.units: list[Unit] = build_fleet(load_boroughs(), devices, seed=seed, profile=self.profile, first=first)
        self.interval_s = interval_s
        count = min(connections or default_connections(devices), devices)
        self.dedicated = count == devices
        wills: list[str | None] = [topic_for(u.device_id, Channel.STATUS) if self.dedicated else None
                                   for u in self.units[:count]]
        self._pool = ClientPool(BrokerAddress.parse(mqtt_url), prefix=f"{client_prefix}-{first}", count=count,
                                wills=wills)
        self.connections = count
        self._first = first
        self.stats = SimulatorStats()
        self._stopping = threading.Event()

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
        finally:
            pool.close()

    def _tick(self, unit: Unit, now: datetime, reconnecting: set[int]) -> None:
        self.stats.ticks += 1
        if unit.offline_s > 0:
            unit.offline_s -= self.interval_s
            unit.step(now, self.interval_s, self.profile)  # the world goes on without coverage
            if unit.offline_s <= 0:
                self._come_back(unit)
                if self.dedicated:
                    reconnecting.add(unit.index)
            return
        if unit.rng.random() < 1.0 - math.exp(-self.profile.drops_per_h * self.interval_s / 3600):
            self._go_offline(unit)
            return
        for channel, payload in unit.step(now, self.interval_s, self.profile):
            self._send(unit, channel, orjson.dumps(payload))
