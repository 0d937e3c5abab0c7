"""The fleet model: units that move, drain and charge, record, lose GPS fix, and drop off.

Pure: :meth:`Unit.step` advances one unit by ``dt`` seconds and returns the messages it
would send, as (channel, payload dict). Every unit has its own random generator seeded
from the fleet seed and its index, so a run is repeatable whatever the timing.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.contract import Channel, EventType, RecordingState
from simulator.geo import Borough, metres_to_degrees

__all__ = ["FleetProfile", "Unit", "build_fleet"]

HOUR = 3600.0


@dataclass(frozen=True)
class FleetProfile:
    """Rates that shape the fleet; the defaults make a lively but plausible shift."""

    firearms_share: float = 0.08
    vehicle_share: float = 0.35
    idle_drain_pct_h: float = 6.0  # buffering all shift: about 16 h of battery
    recording_drain_pct_h: float = 5.0  # extra while recording
    streaming_drain_pct_h: float = 8.0  # extra while live
    dock_charge_pct_h: float = 40.0
    recordings_per_h: float = 1.5
    firearms_recordings_per_h: float = 2.5
    emergencies_per_h: float = 0.002
    gps_losses_per_h: float = 0.6
    drops_per_h: float = 0.05  # connection lost (Last Will), back after a while
    storage_pct_h_recording: float = 6.0
    watch_me_per_h: float = 0.0  # officers asking the control room to watch them live (the demo sets it)


def _rfc3339(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def _wrap(deg: float) -> float:
    return deg % 360.0


@dataclass
class Unit:
    index: int
    device_id: str
    callsign: str
    officer: str  # who carries it now
    borough: Borough
    role: str  # response | firearms
    mode: str  # foot | vehicle
    rng: random.Random
    lat: float
    lon: float
    battery: float
    storage: float
    seq: int = 0
    heading: float = 0.0
    speed: float = 0.0
    target: tuple[float, float] | None = None
    pause_s: float = 0.0
    docked: bool = False
    dock_s: float = 0.0
    recording: RecordingState = RecordingState.BUFFERING
    record_s: float = 0.0
    emergency_s: float = 0.0
    no_fix_s: float = 0.0
    offline_s: float = 0.0
    live: bool = False
    viewers: int = 0
    watching: tuple[str, ...] = ()  # who the camera shows its officer as watching (names, as told)
    firmware: str = "4.2.1"
    # The officer of the other shift: at each dock the camera changes hands (a shift change
    # at the station), so a simulated fleet exercises custody windows (telemetry/custody.py).
    relief: str = ""
    extra_events: list[tuple[EventType, dict[str, Any] | None]] = field(default_factory=list)

    @property
    def online(self) -> bool:
        return self.offline_s <= 0

    def _chance(self, per_hour: float, dt: float) -> bool:
        return self.rng.random() < 1.0 - math.exp(-per_hour * dt / HOUR)

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _event(self, now: datetime, kind: EventType,
               details: dict[str, Any] | None = None) -> tuple[Channel, dict[str, Any]]:
        payload: dict[str, Any] = {"seq": self._next_seq(), "ts": _rfc3339(now), "type": kind.value}
        if details:
            payload["details"] = details
        return Channel.EVENTS, payload

    def _move(self, dt: float) -> None:
        if self.docked:
            self.speed = 0.0
            return
        if self.pause_s > 0:
            self.pause_s -= dt
            self.speed = 0.0
            return
        if self.target is None:
            self.target = self.borough.random_point(self.rng)
        walking = self.mode == "foot"
        self.speed = self.rng.uniform(1.1, 1.7) if walking else self.rng.uniform(5.0, 13.0)
        tlat, tlon = self.target
        dn = (tlat - self.lat) * 111_320.0
        de = (tlon - self.lon) * 111_320.0 * math.cos(math.radians(self.lat))
        distance = math.hypot(dn, de)
        self.heading = _wrap(math.degrees(math.atan2(de, dn)))
        step = self.speed * dt
        if distance <= step:
            self.lat, self.lon = tlat, tlon
            self.target = None
            self.pause_s = self.rng.uniform(30, 300) if walking else self.rng.uniform(60, 900)
            return
        dlat, dlon = metres_to_degrees(dn / distance * step, de / distance * step, self.lat)
        self.lat += dlat
        self.lon += dlon

    def step(self, now: datetime, dt: float, profile: FleetProfile) -> list[tuple[Channel, dict[str, Any]]]:
        """Advance ``dt`` seconds; return what the camera sends now (nothing while offline)."""
        out: list[tuple[Channel, dict[str, Any]]] = []
        self._move(dt)

        # Docking: low battery sends the officer back to the station to charge.
        if not self.docked and self.battery < 12 and self.rng.random() < 0.05:
            self.docked, self.dock_s = True, self.rng.uniform(1800, 5400)
            if self.recording is RecordingState.RECORDING:
                out.append(self._event(now, EventType.RECORDING_STOPPED, {"reason": "docked"}))
            self.recording = RecordingState.OFF
            out.append(self._event(now, EventType.DOCKED))
        elif self.docked:
            self.dock_s -= dt
            if self.dock_s <= 0 and self.battery > 80:
                self.docked = False
                self.recording = RecordingState.BUFFERING
                if self.relief:
                    self.officer, self.relief = self.relief, self.officer
                # Contract 1.2: who checked the camera out opens its custody window.
                out.append(self._event(now, EventType.UNDOCKED, {"officer": self.officer, "callsign": self.callsign}))

        # Recording sessions, with the pre-event buffer saved at the start.
        if self.recording is RecordingState.RECORDING:
            self.record_s -= dt
            self.storage = min(100.0, self.storage + profile.storage_pct_h_recording * dt / HOUR)
            if self.record_s <= 0 and self.emergency_s <= 0:
                self.recording = RecordingState.BUFFERING
                out.append(self._event(now, EventType.RECORDING_STOPPED, {"reason": "button"}))
        elif self.recording is RecordingState.BUFFERING:
            rate = profile.firearms_recordings_per_h if self.role == "firearms" else profile.recordings_per_h
            if self._chance(rate, dt):
                self.recording = RecordingState.RECORDING
                self.record_s = self.rng.uniform(120, 1200)
                triggers = ["button", "button", "holster", "taser"] if self.role == "firearms" else ["button"]
                trigger = self.rng.choice(triggers)
                out.append(self._event(now, EventType.RECORDING_STARTED, {"trigger": trigger, "pre_event_s": 30}))

        # Emergency button: starts recording and holds it until cleared.
        if self.emergency_s > 0:
            self.emergency_s -= dt
            if self.emergency_s <= 0:
                out.append(self._event(now, EventType.EMERGENCY_CLEARED))
        elif not self.docked and self._chance(profile.emergencies_per_h, dt):
            self.emergency_s = self.rng.uniform(120, 600)
            out.append(self._event(now, EventType.EMERGENCY))
            if self.recording is not RecordingState.RECORDING:
                self.recording = RecordingState.RECORDING
                self.record_s = self.emergency_s
                out.append(self._event(now, EventType.RECORDING_STARTED, {"trigger": "emergency", "pre_event_s": 30}))

        # "Watch me": checked only when enabled, so fleets without it keep their random sequence.
        if profile.watch_me_per_h > 0 and not self.docked and not self.live and \
                self._chance(profile.watch_me_per_h, dt):
            out.append(self._event(now, EventType.WATCH_ME))

        for kind, details in self.extra_events:
            out.append(self._event(now, kind, details))
        self.extra_events.clear()

        # Battery: drains with use, charges on the dock.
        if self.docked:
            self.battery = min(100.0, self.battery + profile.dock_charge_pct_h * dt / HOUR)
            self.storage = max(0.0, self.storage - 50.0 * dt / HOUR)  # footage offloads
        else:
            drain = profile.idle_drain_pct_h
            drain += profile.recording_drain_pct_h if self.recording is RecordingState.RECORDING else 0.0
            drain += profile.streaming_drain_pct_h if self.live else 0.0
            self.battery = max(0.0, self.battery - drain * dt / HOUR)

        # GPS: noisy, and lost for a while indoors.
        if self.no_fix_s > 0:
            self.no_fix_s -= dt
        elif not self.docked and self._chance(profile.gps_losses_per_h, dt):
            self.no_fix_s = self.rng.uniform(10, 240)

        out.append((Channel.TELEMETRY, self._report(now)))
        return out

    def _report(self, now: datetime) -> dict[str, Any]:
        gps: dict[str, Any] | None = None
        if self.no_fix_s <= 0:
            accuracy = self.rng.uniform(3, 8) if self.mode == "vehicle" else self.rng.uniform(4, 20)
            dlat, dlon = metres_to_degrees(self.rng.gauss(0, accuracy / 2), self.rng.gauss(0, accuracy / 2), self.lat)
            gps = {"lat": round(self.lat + dlat, 6), "lon": round(self.lon + dlon, 6),
                   "accuracy_m": round(accuracy, 1), "speed_mps": round(self.speed, 1),
                   "heading_deg": round(self.heading, 1) % 360.0}
        return {
            "seq": self._next_seq(),
            "ts": _rfc3339(now),
            "battery": {"pct": round(self.battery, 1), "charging": self.docked,
                        "temp_c": round(28 + self.rng.uniform(-2, 4), 1)},
            "gps": gps,
            "recording": self.recording.value,
            "storage_pct": round(self.storage, 1),
            "docked": self.docked,
            "firmware": self.firmware,
            "live": self.live,
            "viewers": self.viewers,
        }


def build_fleet(boroughs: list[Borough], count: int, *, seed: int, profile: FleetProfile,
                first: int = 0) -> list[Unit]:
    """``count`` units spread evenly over ``boroughs``, the same for the same seed.

    ``first`` is the index of the first unit, so that several simulator processes can
    drive disjoint parts of one fleet.
    """
    units: list[Unit] = []
    for index in range(first, first + count):
        rng = random.Random(f"{seed}:{index}")
        borough = boroughs[index % len(boroughs)]
        firearms = rng.random() < profile.firearms_share
        role = "firearms" if firearms else "response"
        mode = "vehicle" if firearms or rng.random() < profile.vehicle_share else "foot"
        lat, lon = borough.random_point(rng)
        number = index // len(boroughs) + 1
        unit = Unit(
            index=index,
            device_id=f"bwv-{index:05d}",
            callsign=f"{borough.code}{'TRJ' if firearms else ''}{number:03d}",
            officer=f"PC {10000 + index}",
            relief=f"PC {60000 + index}",
            borough=borough,
            role=role,
            mode=mode,
            rng=rng,
            lat=lat,
            lon=lon,
            battery=rng.uniform(55, 100),
            storage=rng.uniform(5, 60),
        )
        units.append(unit)
    return units
