"""The live picture: every unit's latest state, fed by the broker, fanned out to clients.

Each API process subscribes to the device topics itself (a direct subscription, not the
ingest group's), so every process sees every update whichever ingest worker stores it.
paho's thread updates the state under a lock and notes which fields of the unit changed;
that is the one place where the two threads meet. A ticker on the event loop turns the
changes into a delta ``live_rate_hz`` times a second: per unit, its id and the fields that
changed since the last tick (a moving unit's position and times, rarely its battery or
recording state), which is less than half the bytes of its whole state. Every client
holds the state it was sent (snapshot, then deltas) and merges, as the dashboard does.

Fan-out encodes a delta once per *view* (what a role may see, in which area) and queues
the same text for every client of that view. A client that falls behind does not hold
anyone up: past a few queued frames its deltas are merged into a pending map of
unit -> latest state, bounded by the number of units, so it loses intermediate positions,
never the latest state.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import paho.mqtt.client as paho
from fastapi import WebSocket

from core.contract import ACCOUNTS_TOPIC, ALERTS_TOPIC, CHANNELS, REGISTRY_TOPIC, TOPIC_ROOT, Telemetry
from core.mqtt import BrokerAddress, BufferedClient, new_client
from services.accounts import Principal, Role
from telemetry.decode import Decoded, Limits, StatusChange, decode

__all__ = ["FeedCounters", "LiveClient", "LiveHub", "unit_view"]

log = logging.getLogger(__name__)

_REGISTRY_FIELDS = ("callsign", "officer", "borough", "role")
_POSITION_FIELDS = ("lat", "lon", "accuracy_m", "speed_mps", "heading_deg", "officer", "last_fix_at")
_UNIT_FIELDS = ("device_id", "callsign", "officer", "borough", "role", "ts", "received_at", "battery_pct",
                "charging", "gps_fix", "lat", "lon", "accuracy_m", "speed_mps", "heading_deg", "last_fix_at",
                "recording", "storage_pct", "docked", "live", "viewers", "online")


def unit_view(unit: dict[str, Any], sees_positions: bool) -> dict[str, Any]:
    """What a client may see of a unit: no positions or names for a health-only role."""
    if sees_positions:
        return unit
    return {k: v for k, v in unit.items() if k not in _POSITION_FIELDS}


def _telemetry_fields(t: Telemetry, received: datetime) -> dict[str, Any]:
    fields = dict(ts=t.ts, received_at=received, battery_pct=t.battery.pct, charging=t.battery.charging,
                  recording=t.recording.value, storage_pct=t.storage_pct, docked=t.docked, live=t.live,
                  viewers=t.viewers, gps_fix=t.gps is not None, online=True)
    if t.gps is not None:
        fields.update(lat=t.gps.lat, lon=t.gps.lon, accuracy_m=t.gps.accuracy_m, speed_mps=t.gps.speed_mps,
                      heading_deg=t.gps.heading_deg, last_fix_at=t.ts)
    return fields


def _merge(unit: dict[str, Any], fields: dict[str, Any]) -> list[str]:
    """Apply ``fields`` to ``unit``; return the names of those whose value changed."""
    changed = [name for name, value in fields.items() if unit[name] != value]
    for name in changed:
        unit[name] = fields[name]
    return changed


_QUEUED_FRAMES = 4


@dataclass(frozen=True)
class _Left:
    """A unit that left a borough since the last tick: moved to ``now``, or retired."""

    device_id: str
    was: str | None
    now: str | None
    retired: bool

    def hidden_from(self, areas: frozenset[str] | None) -> bool:
        """Whether a client of ``areas`` had it and may see it no longer."""
        if areas is None:
            return self.retired
        return self.was in areas and (self.retired or self.now not in areas)


def _delta(units: list[dict[str, Any]], removed: list[str]) -> str:
    frame: dict[str, Any] = {"type": "delta", "units": units}
    if removed:
        frame["removed"] = removed
    return orjson.dumps(frame).decode()


@dataclass
class FeedCounters:
    """Totals of the live feed since the process started, read by its metrics. Written on
    the event loop, but for ``broker_messages`` (paho's thread, its only writer)."""

    connections: int = 0  # clients registered (each got a snapshot)
    units_conflated: int = 0  # intermediate states of a unit merged away for a lagging client
    alerts_dropped: int = 0  # alert changes not sent to a lagging client (told to re-read)
    broker_messages: int = 0


@dataclass(eq=False)
class LiveClient:
    """One websocket client: its principal, and what waits to be sent to it."""

    who: Principal
    websocket: WebSocket
    alert_backlog: int
    frames: deque[str] = field(default_factory=deque)  # shared, already encoded
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)  # conflated, for a lagging client
    pending_removed: set[str] = field(default_factory=set)  # units gone from its view, for a lagging client
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
    def view(self) -> tuple[bool, frozenset[str] | None]:
        return self.who.sees_positions, self.who.areas

    def offer(self, frame: str, units: list[dict[str, Any]], removed: list[str]) -> None:
        # A few shared frames may queue (a client whose sender has not run since the last
        # tick is not slow, only unlucky); past that, merge per unit: the client is slow.
        if not self.pending and not self.pending_removed and len(self.frames) < _QUEUED_FRAMES:
            self.frames.append(frame)
        else:
            for device_id in removed:
                self.pending.pop(device_id, None)
                self.pending_removed.add(device_id)
            for unit in units:
                self.pending_removed.discard(unit["device_id"])  # back in view: it comes whole
                earlier = self.pending.get(unit["device_id"])
                if earlier is None:
                    self.pending[unit["device_id"]] = unit
                else:  # a new dict: ``unit`` is shared with every client of the view
                    self.pending[unit["device_id"]] = {**earlier, **unit}
                    self.conflated_units += 1
                    self.counters.units_conflated += 1
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
            if self.pending or self.pending_removed:
                units, self.pending = list(self.pending.values()), {}
                removed, self.pending_removed = sorted(self.pending_removed), set()
                await ws.send_text(_delta(units, removed))
                self.sent_frames += 1


class LiveHub:
    def __init__(self, *, mqtt_url: str, rate_hz: float, alert_backlog: int, client_id: str) -> None:
        self._address = BrokerAddress.parse(mqtt_url)
        self._interval = 1.0 / rate_hz
        self._alert_backlog = alert_backlog
        self._lock = threading.Lock()
        self._units: dict[str, dict[str, Any]] = {}
        self._changed: dict[str, set[str]] = {}  # unit -> fields changed since the last tick
        # Units that left a borough since the last tick (moved, or retired): the borough they
        # left, so that the clients of that area are told to drop them.
        self._left: dict[str, str | None] = {}
        self._registered: set[str] = set()  # in the registry at the last load
        self._retired: set[str] = set()  # left the registry: what they still send is not shown
        self._alerts: deque[dict[str, Any]] = deque(maxlen=10_000)
        self._clients: set[LiveClient] = set()
        self._ticks = 0
        self._snapshots: dict[tuple[bool, frozenset[str] | None], tuple[int, str]] = {}
        self._limits = Limits(max_payload_bytes=65_536, max_future_skew=timedelta(days=1),
                              max_age=timedelta(days=3650))
        self._client: BufferedClient = new_client(self._address, client_id=client_id, protocol=paho.MQTTv311)
        self._client.on_connect = self._on_connect  # type: ignore[assignment]
        self._client.on_message = self._on_message  # type: ignore[assignment]
        self._client.on_disconnect = self._on_disconnect  # type: ignore[assignment]
        self._ticker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.registry_changed = asyncio.Event()  # another (or this) API process changed the registry
        self.accounts_changed = asyncio.Event()  # a user was disabled, signed out or changed
        self.connected = threading.Event()
        self.counters = FeedCounters()

    # lifecycle (owned by the app's lifespan)

    def load(self, units: Iterable[dict[str, Any]]) -> None:
        """Merge the registry's devices from the database (all of them: a device that was
        in the previous load and is not in this one has been retired, and is dropped):
        registry fields always, state only where it is newer than what the broker already
        told us (the subscription starts before the load)."""
        with self._lock:
            registered = set()
            for row in units:
                device_id = row["device_id"]
                registered.add(device_id)
                self._retired.discard(device_id)
                unit = self._units.get(device_id)
                stored = {k: row.get(k) for k in _UNIT_FIELDS}
                if unit is None:  # new to clients connected before it was registered: all of it
                    self._units[device_id] = stored
                    self._note(device_id, list(_UNIT_FIELDS))
                    continue
                newer = unit["ts"] is None or (row["ts"] is not None and row["ts"] > unit["ts"])
                borough = unit["borough"]
                changed = _merge(unit, stored if newer else {k: stored[k] for k in _REGISTRY_FIELDS})
                if "borough" in changed:  # clients of its new area have never seen it: all of it
                    self._left.setdefault(device_id, borough)
                    changed = list(_UNIT_FIELDS)
                self._note(device_id, changed)
            for device_id in self._registered - registered:
                gone = self._units.pop(device_id, None)
                self._changed.pop(device_id, None)
                self._retired.add(device_id)
                if gone is not None:
                    self._left.setdefault(device_id, gone["borough"])
            self._registered = registered

    def start(self) -> None:
        self._client.connect_async(self._address.host, self._address.port, keepalive=30)
        self._client.loop_start()
        self._loop = asyncio.get_running_loop()
        self._ticker = self._loop.create_task(self._tick_forever())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish on the hub's connection (QoS 1, queued; paho's thread sends it)."""
        self._client.publish(topic, payload, qos=1)

    # paho's thread

    def _on_connect(self, client: paho.Client, u: object, f: object, reason: object, p: object) -> None:
        client.subscribe([(f"{TOPIC_ROOT}/+/{c.value}", 0) for c in CHANNELS] + [(ALERTS_TOPIC, 1),
                                                                                  (REGISTRY_TOPIC, 1),
                                                                                  (ACCOUNTS_TOPIC, 1)])
        self.connected.set()

    def _on_disconnect(self, client: paho.Client, u: object, f: object, reason: object, p: object) -> None:
        self.connected.clear()  # /readyz reports the broker away until paho reconnects

    def _on_message(self, client: paho.Client, u: object, message: paho.MQTTMessage) -> None:
        self.counters.broker_messages += 1
        if message.topic in (REGISTRY_TOPIC, ACCOUNTS_TOPIC):
            changed = self.registry_changed if message.topic == REGISTRY_TOPIC else self.accounts_changed
            if self._loop is not None:
                self._loop.call_soon_threadsafe(changed.set)
            return
        if message.topic == ALERTS_TOPIC:
            try:
                alert = orjson.loads(message.payload)
            except orjson.JSONDecodeError:
                return
            with self._lock:
                self._alerts.append(alert)
            return
        result = decode(message.topic, bytes(message.payload), now=datetime.now(timezone.utc), limits=self._limits)
        if not isinstance(result, (Decoded, StatusChange)) or (
                isinstance(result, Decoded) and not isinstance(result.message, Telemetry)):
            return  # events reach clients as alerts; bad input is ingest's to count
        received = datetime.now(timezone.utc)
        if isinstance(result, StatusChange):
            fields: dict[str, Any] = {"online": result.online}
        else:
            assert isinstance(result.message, Telemetry)
            fields = _telemetry_fields(result.message, received)
        with self._lock:
            if result.device_id in self._retired:
                return
            unit = self._units.get(result.device_id)
            if unit is None:
                unit = self._units[result.device_id] = {k: None for k in _UNIT_FIELDS}
                unit["device_id"] = result.device_id
            self._note(result.device_id, _merge(unit, fields))

    def _note(self, device_id: str, fields: list[str]) -> None:
        """Remember changed fields for the next tick (called under the lock)."""
        if fields:
            self._changed.setdefault(device_id, set()).update(fields)

    # the event loop

    def register(self, who: Principal, websocket: WebSocket) -> tuple[LiveClient, str]:
        """Add a client; return it and its snapshot's units, encoded (a JSON array).

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
        if cached is not None and cached[0] == self._ticks:
            self._clients.add(client)
            return client, cached[1]
        areas = who.areas
        with self._lock:  # copies (unit_view makes one), so that encoding can happen unlocked
            visible = [u for u in self._units.values() if areas is None or u["borough"] in areas]
            units = [dict(u) for u in visible] if who.sees_positions else [unit_view(u, False) for u in visible]
            self._clients.add(client)
        encoded = orjson.dumps(units).decode()
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
        unit = self._units.get(device_id)
        return unit["borough"] if unit else None

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

    async def _tick_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                self._tick()
            except Exception:  # a bad frame must not stop the feed for everyone
                log.exception("live tick failed")
            await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))

    def _fan_out_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """One ``alerts`` frame per tick, encoded once per (area, visible kinds)."""
        frames: dict[tuple[frozenset[str] | None, frozenset[str] | None], tuple[str, int]] = {}
        for client in self._clients:
            who = client.who
            key = (who.areas, who.alert_kinds())
            if key not in frames:
                areas, kinds = key
                visible = [a for a in alerts if (areas is None or a["borough"] in areas)
                           and (kinds is None or a.get("kind") in kinds)]
                frames[key] = (orjson.dumps({"type": "alerts", "alerts": visible}).decode(), len(visible))
            frame, count = frames[key]
            if count:
                client.offer_alerts(frame, count)

    def _tick(self) -> None:
        self._ticks += 1
        with self._lock:
            dirty, self._changed = self._changed, {}
            changed = [(self._units[d]["borough"], {"device_id": d, **{k: self._units[d][k] for k in fields}})
                       for d, fields in dirty.items()]
            left = []
            for d, old in self._left.items():
                unit = self._units.get(d)
                left.append(_Left(d, old, None if unit is None else unit["borough"], retired=unit is None))
            self._left = {}
            alerts = list(self._alerts)
            self._alerts.clear()
        if alerts:
            self._fan_out_alerts([{**a, "borough": self.borough_of(str(a.get("device_id")))} for a in alerts])
        if not changed and not left:
            return
        frames: dict[tuple[bool, frozenset[str] | None], tuple[str, list[dict[str, Any]], list[str]]] = {}
        for client in self._clients:
            view = client.view
            if view not in frames:
                sees, areas = view
                units = [unit_view(u, sees) for borough, u in changed if areas is None or borough in areas]
                removed = [gone.device_id for gone in left if gone.hidden_from(areas)]
                frames[view] = (_delta(units, removed), units, removed)
            frame, units, removed = frames[view]
            if units or removed:
                client.offer(frame, units, removed)
