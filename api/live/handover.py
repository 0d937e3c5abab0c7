"""Where paho's thread meets the event loop: :meth:`Handover.put`, and a lock.

The feed takes ingest's live-units frames (telemetry/live_frame.py): one per committed batch
per worker, each a few hundred units at full rate. Rather than a queue per message
(``core.mqtt.LoopHandover``: a loop callback each, and every intermediate position of a unit
carried to the loop only to be overwritten), paho's thread decodes each frame (one
``orjson.loads``) and merges its units into the :class:`~api.live.state.FleetState` under a
lock, and the loop's ticker takes the changes under the same lock. Every other method here
runs on the loop, and each holds the lock for as long as it reads or writes the shared
state, no longer.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

import orjson

from api.live.client import FeedCounters
from api.live.deltas import View, unit_view
from api.live.state import Changes, FleetState, RegistryRow
from core.contract import ACCOUNTS_TOPIC, ALERTS_TOPIC, LIVE_UNITS_TOPIC, REGISTRY_TOPIC
from telemetry.live_frame import FrameError, decode_frame

__all__ = ["ALERTS_KEPT", "Handover"]

#: Alerts kept between two ticks; past that the oldest are dropped (clients re-read over REST).
ALERTS_KEPT = 10_000


class Handover:
    """The shared state of the live feed, and the one function paho's thread calls."""

    def __init__(self, *, counters: FeedCounters, registry_changed: asyncio.Event,
                 accounts_changed: asyncio.Event) -> None:
        self._lock = threading.Lock()
        self._state = FleetState()
        self._alerts: deque[dict[str, Any]] = deque(maxlen=ALERTS_KEPT)
        self._counters = counters
        self._registry_changed = registry_changed
        self._accounts_changed = accounts_changed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._missed = False  # frames were lost with a broker session since the last take_missed

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop to tell of registry and account announcements (before the broker starts)."""
        self._loop = loop

    def put(self, topic: str, payload: bytes) -> None:
        """paho's thread: take one message in; never blocks for longer than a merge.

        Nothing here can fill up in a way that holds paho's thread back:
        - a live-units frame is decoded here, then its units are merged under the lock: the
          latest value per unit and field wins (an older report never overwrites a newer
          one), so the state is bounded by the number of devices however fast they publish
          or however late the tick runs. A frame this version cannot read is counted and
          dropped (only ingest may publish one: it is a version mismatch, not an attack);
        - an alert is kept under the lock for the next tick, at most ``ALERTS_KEPT`` of
          them: past that the oldest is dropped (a client re-reads alerts over REST);
        - a registry or accounts announcement sets an ``asyncio.Event`` on the loop
          (``call_soon_threadsafe``): announcements before the loop's reader wakes coalesce
          into one refresh, which reads the whole registry anyway. Before :meth:`attach`, or once
          the loop has closed (the app is stopping), it is dropped.
        """
        self._counters.broker_messages += 1
        if topic == LIVE_UNITS_TOPIC:
            try:
                updates = decode_frame(payload)
            except FrameError:
                self._counters.bad_frames += 1
                return
            with self._lock:
                for device_id, fields in updates:
                    self._state.apply(device_id, fields)
            self._counters.unit_updates += len(updates)
            return
        if topic in (REGISTRY_TOPIC, ACCOUNTS_TOPIC):
            self._announce(self._registry_changed if topic == REGISTRY_TOPIC else self._accounts_changed)
            return
        if topic == ALERTS_TOPIC:
            try:
                alert = orjson.loads(payload)
            except orjson.JSONDecodeError:
                return
            with self._lock:
                self._alerts.append(alert)

    def reconnected(self) -> None:
        """paho's thread, on a connection after the first: frames published while the
        session was away are lost, so the registry refresher's next load reads every unit's
        state from ``device_latest`` too (it keeps what is newer in the state already)."""
        with self._lock:
            self._missed = True
        self._announce(self._registry_changed)

    def _announce(self, event: asyncio.Event) -> None:
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop closed under us: the app is stopping
                pass

    # the event loop

    def load(self, rows: Iterable[dict[str, Any]]) -> None:
        """Merge the registry with the units' stored state (see :meth:`FleetState.load`)."""
        with self._lock:
            self._state.load(rows)

    def unregistered(self, registry: Iterable[RegistryRow]) -> list[str]:
        """See :meth:`FleetState.unregistered`."""
        with self._lock:
            return self._state.unregistered(registry)

    def load_registry(self, registry: Iterable[RegistryRow], whole: Iterable[dict[str, Any]]) -> None:
        """Merge the registry alone (see :meth:`FleetState.load_registry`)."""
        with self._lock:
            self._state.load_registry(registry, whole)

    def take_missed(self) -> bool:
        """Whether frames were lost with a broker session since the last call."""
        with self._lock:
            missed, self._missed = self._missed, False
        return missed

    def take(self) -> tuple[Changes, list[dict[str, Any]]]:
        """The unit changes and the alerts since the last call, each alert with its unit's
        ``borough`` now (who may see it)."""
        with self._lock:
            changes = self._state.take_changes()
            # A system alert has no unit, so no borough (who sees it: Principal.sees_alert).
            alerts = [{**a, "borough": None if a.get("device_id") is None
                       else self._state.borough_of(str(a["device_id"]))} for a in self._alerts]
            self._alerts.clear()
        return changes, alerts

    def snapshot(self, view: View) -> list[dict[str, Any]]:
        """Every unit a client of ``view`` may see, copied (so that it encodes unlocked)."""
        sees, areas = view
        with self._lock:
            visible = self._state.visible(areas)
            return [dict(u) for u in visible] if sees else [unit_view(u, False) for u in visible]

    def borough_of(self, device_id: str) -> str | None:
        with self._lock:
            return self._state.borough_of(device_id)
