"""The live hub: ties the broker, the shared state and the websocket clients together.

A ticker on the event loop takes the changes since the last tick ``live_rate_hz`` times a
second and fans them out: a delta per *view* (:mod:`api.live.deltas`), encoded once and
queued for every client of that view (:mod:`api.live.client`), and the alerts of the tick,
encoded once per (area, visible kinds). Every client holds the state it was sent (snapshot,
then deltas) and merges, as the dashboard does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

import orjson
from fastapi import WebSocket

from api.live.broker import FeedConnection
from api.live.client import FeedCounters, LiveClient
from api.live.deltas import Delta, View, encode_delta, for_view
from api.live.handover import Handover
from api.live.snapshot import deflate_units, feed_alert
from api.live.state import RegistryRow
from services.accounts import Principal, Role

__all__ = ["LiveHub"]

log = logging.getLogger(__name__)


class LiveHub:
    def __init__(self, *, mqtt_url: str, rate_hz: float, alert_backlog: int, client_id: str) -> None:
        self._interval = 1.0 / rate_hz
        self._alert_backlog = alert_backlog
        self._clients: set[LiveClient] = set()
        self._ticks = 0
        self._snapshots: dict[View, tuple[int, bytes]] = {}
        self._ticker: asyncio.Task[None] | None = None
        self.registry_changed = asyncio.Event()  # another (or this) API process changed the registry
        self.accounts_changed = asyncio.Event()  # a user was disabled, signed out or changed
        self.counters = FeedCounters()
        self._shared = Handover(counters=self.counters, registry_changed=self.registry_changed,
                                accounts_changed=self.accounts_changed)
        self._broker = FeedConnection(mqtt_url=mqtt_url, client_id=client_id, deliver=self._shared.put,
                                      reconnected=self._shared.reconnected)
        self.connected = self._broker.connected

    # lifecycle (owned by the app's lifespan)

    def load(self, units: Iterable[dict[str, Any]]) -> None:
        """Merge the registry's devices with their stored state (see ``FleetState.load``)."""
        self._shared.load(units)

    def unregistered(self, registry: Iterable[RegistryRow]) -> list[str]:
        """The devices of ``registry`` whose stored state :meth:`load_registry` needs."""
        return self._shared.unregistered(registry)

    def load_registry(self, registry: Iterable[RegistryRow], whole: Iterable[dict[str, Any]]) -> None:
        """Merge the registry alone (see ``FleetState.load_registry``)."""
        self._shared.load_registry(registry, whole)

    def take_missed(self) -> bool:
        """Whether frames were lost with the broker session since the last call: the next
        load must read every unit's stored state, not the registry alone."""
        return self._shared.take_missed()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._shared.attach(loop)
        self._broker.start()
        self._ticker = loop.create_task(self._tick_forever())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self._broker.stop()

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish on the hub's connection (QoS 1, queued; paho's thread sends it)."""
        self._broker.publish(topic, payload)

    # clients

    def register(self, who: Principal, websocket: WebSocket) -> tuple[LiveClient, bytes]:
        """Add a client; return it and its snapshot's units, encoded and deflated (the
        piece of :func:`api.live.snapshot.snapshot_message` shared by the view).

        Every change after the snapshot reaches the client as a delta: a change made while
        the snapshot is copied is also noted for the next tick, sent to every registered
        client. For the same reason a snapshot encoded earlier in the same tick
        is as good as a new one, so a burst of (re)connecting clients of one view shares one
        encoding instead of blocking the loop once per client.
        """
        client = LiveClient(who, websocket, self._alert_backlog, counters=self.counters)
        self.counters.connections += 1
        view = client.view
        cached = self._snapshots.get(view)
        self._clients.add(client)  # before the copy: a tick cannot run in between (same loop)
        if cached is not None and cached[0] == self._ticks:
            return client, cached[1]
        encoded = deflate_units(self._shared.snapshot(view))
        self._snapshots[view] = (self._ticks, encoded)
        return client, encoded

    def unregister(self, client: LiveClient) -> None:
        self._clients.discard(client)

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def clients(self) -> list[LiveClient]:
        """The registered clients now (a copy: the set changes as clients come and go)."""
        return list(self._clients)

    def borough_of(self, device_id: str) -> str | None:
        return self._shared.borough_of(device_id)

    def push(self, frame: str, *, device_id: str, roles: frozenset[Role]) -> int:
        """Queue an encoded frame about one unit (a live-view change) for the clients whose
        role is in ``roles`` and whose area covers the unit; returns how many. It queues with
        the alert frames, so the same bound holds (a lagging client is told what it missed)."""
        borough = self.borough_of(device_id)
        pushed = 0
        for client in self._clients:
            if client.who.role in roles and client.who.covers(borough):
                client.offer_alerts(frame, 1)
                pushed += 1
        return pushed

    # the ticker

    async def _tick_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                self._tick()
            except Exception:  # a bad frame must not stop the feed for everyone
                log.exception("live tick failed")
            await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))

    def _tick(self) -> None:
        self._ticks += 1
        changes, alerts = self._shared.take()
        if alerts:
            self._fan_out_alerts(alerts)
        if not changes:
            return
        frames: dict[View, tuple[str, Delta]] = {}
        for client in self._clients:
            view = client.view
            if view not in frames:
                delta = for_view(changes, view)
                frames[view] = (encode_delta(delta), delta)
            frame, delta = frames[view]
            if delta:
                client.offer(frame, delta)

    def _fan_out_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """One ``alerts`` frame per tick, encoded once per (area, visible kinds, system alerts,
        sees officers): the officer an alert names is for the roles that see positions, as on
        the units."""
        frames: dict[tuple[frozenset[str] | None, frozenset[str] | None, bool, bool], tuple[str, int]] = {}
        for client in self._clients:
            who = client.who
            key = (who.areas, who.alert_kinds(), who.sees_system_alerts, who.sees_positions)
            if key not in frames:
                visible = [feed_alert(a, who) for a in alerts if who.sees_alert(a)]
                frames[key] = (orjson.dumps({"type": "alerts", "alerts": visible}).decode(), len(visible))
            frame, count = frames[key]
            if count:
                client.offer_alerts(frame, count)
