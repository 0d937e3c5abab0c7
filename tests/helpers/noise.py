"""The alert noise run, shared by tests/test_alert_noise.py (compressed) and
bench/alert_noise.py (2,000 cameras for 10 real minutes): the simulator's fleet registered, a
`watchfloor ingest` process with the default alert policy, both on a real broker and
PostgreSQL; then what was raised while the fleet ran, read from the database.

Compressed, the simulator lives ``time_scale`` simulated seconds per real one (its units
drain, record, lose GPS and drop out that much faster), and every alert timeout of the
policy and the settings is divided by the same factor, so the same simulated shift raises
the same alerts in a tenth of the time. Timestamps stay real.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import orjson
import psycopg

from core.contract import Channel, topic_for
from core.mqtt import publish_all
from services.registry import DeviceRecord, upsert_devices
from simulator.fleet import FleetProfile
from simulator.run import Simulator
from telemetry.alert_policy import AFTER_S_RANGE
from telemetry.alert_policy_store import load_policy, set_rule

__all__ = ["NoiseResult", "NoiseRun", "measure"]

#: What counts as noise: an alert a control room must act on at once, that is not an
#: emergency (every emergency must be raised; they are counted apart).
LOUD = ("high", "critical")


@dataclass(frozen=True)
class NoiseRun:
    devices: int = 2_000
    minutes: float = 10.0  # simulated
    interval_s: float = 10.0  # simulated seconds between two reports of a camera
    time_scale: float = 1.0
    profile: FleetProfile = field(default_factory=FleetProfile)
    seed: int = 1

    @property
    def real_seconds(self) -> float:
        return self.minutes * 60 / self.time_scale


@dataclass
class NoiseResult:
    run: NoiseRun
    loud_by_kind: Counter[str]
    emergencies_sent: int
    emergency_senders: set[str]
    emergency_alerted: set[str]
    published: int

    @property
    def rate(self) -> float:
        """Loud alerts (not emergencies) per 100 cameras per simulated hour."""
        return sum(self.loud_by_kind.values()) / (self.run.devices / 100) / (self.run.minutes / 60)

    def report(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.loud_by_kind.items())) or "none"
        return (f"{self.run.devices} cameras, {self.run.minutes:g} simulated minutes"
                f" (×{self.run.time_scale:g}), {self.published} messages: {self.rate:.2f} high or critical alerts"
                f" per 100 cameras per hour ({kinds}); emergencies: {self.emergencies_sent} sent by"
                f" {len(self.emergency_senders)} units, raised for"
                f" {len(self.emergency_alerted & self.emergency_senders)}")


def _sentinel(lat: float, lon: float) -> bytes:
    """A report like the unit's own first one (a fix where it stands), older than all of them."""
    return orjson.dumps({"seq": 0, "ts": datetime.now(timezone.utc).isoformat(), "recording": "buffering",
                         "battery": {"pct": 90, "charging": False},
                         "gps": {"lat": lat, "lon": lon, "accuracy_m": 5.0}})


def _scaled(seconds: float, scale: float) -> float:
    return max(AFTER_S_RANGE[0], seconds / scale)


def _ingest_env(run: NoiseRun, database_url: str, mqtt_url: str) -> dict[str, str]:
    defaults_s = 120.0  # Settings' offline and GPS-lost defaults, scaled like the policy's timeouts
    return {**os.environ, "WATCHFLOOR_DATABASE_URL": database_url, "WATCHFLOOR_MQTT_URL": mqtt_url,
            "WATCHFLOOR_TIMESCALEDB": "off", "WATCHFLOOR_INGEST_CLIENT_ID": f"watchfloor-noise-{os.getpid()}",
            "WATCHFLOOR_ALERT_OFFLINE_AFTER_S": f"{_scaled(defaults_s, run.time_scale):g}",
            "WATCHFLOOR_ALERT_GPS_LOST_AFTER_S": str(max(1, round(defaults_s / run.time_scale)))}


def _prepare(conn: psycopg.Connection, run: NoiseRun, sim: Simulator) -> None:
    """Register the fleet; divide the default policy's own timeouts by the time scale."""
    upsert_devices(conn, [DeviceRecord(u.device_id, u.callsign, u.officer, u.borough.name, u.role) for u in sim.units])
    for rule in load_policy(conn).sorted_rules():
        if rule.after_s is not None and run.time_scale != 1.0:
            set_rule(conn, replace(rule, after_s=_scaled(rule.after_s, run.time_scale)), by="noise run")
    conn.commit()


def _count(conn: psycopg.Connection, sql: str, *params: object) -> int:
    row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


def measure(*, database_url: str, mqtt_url: str, run: NoiseRun, log: Path) -> NoiseResult:
    """Run the fleet against a `watchfloor ingest` process; count what it raised meanwhile."""
    sim = Simulator(mqtt_url=mqtt_url, devices=run.devices, interval_s=run.interval_s / run.time_scale,
                    seed=run.seed, connections=min(run.devices, 20), profile=run.profile, commands=False,
                    client_prefix=f"watchfloor-noise-sim-{os.getpid()}", time_scale=run.time_scale)
    with psycopg.connect(database_url) as conn:
        _prepare(conn, run, sim)
    ingest = subprocess.Popen([sys.executable, "-m", "watchfloor", "ingest"],
                              env=_ingest_env(run, database_url, mqtt_url),
                              stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            ready = threading.Event()
            thread = threading.Thread(target=sim.run, kwargs={"duration_s": run.real_seconds, "ready": ready},
                                      name="noise-simulator", daemon=True)
            # The fleet starts once ingest stores a sentinel report: it has subscribed, so that
            # nothing the fleet sends is lost before it did.
            first = sim.units[0]

            def stored() -> bool:
                report = (topic_for(first.device_id, Channel.TELEMETRY), _sentinel(first.lat, first.lon))
                publish_all(mqtt_url, [report], client_id=f"watchfloor-noise-sentinel-{os.getpid()}")
                return _count(conn, "SELECT count(*) FROM device_latest") > 0

            _wait(stored, 60, "ingest to store a sentinel report", ingest)
            started = datetime.now(timezone.utc)
            thread.start()
            if not ready.wait(60):
                raise RuntimeError("the simulator did not connect")
            thread.join(run.real_seconds + 60)
            ended = datetime.now(timezone.utc)
            sent = sim.stats.events["emergency"]
            # Everything the fleet sent is stored before the count: its emergencies are the sentinel.
            _wait(lambda: _count(conn, "SELECT count(*) FROM device_events WHERE type = 'emergency'") >= sent,
                  60, "the emergencies to be stored", ingest)
            _wait(lambda: _count(conn, "SELECT count(*) FROM alerts WHERE kind = 'emergency'") >= min(sent, 1),
                  60, "the emergencies to be raised", ingest)
            # Counted up to the fleet's end: after it, every silent unit is rightly offline.
            loud = conn.execute("SELECT kind, count(*) FROM alerts WHERE severity = ANY(%s) AND kind <> 'emergency'"
                                " AND raised_at BETWEEN %s AND %s GROUP BY kind",
                                (list(LOUD), started, ended)).fetchall()
            alerted = {r[0] for r in conn.execute("SELECT DISTINCT device_id FROM alerts WHERE kind = 'emergency'")}
    finally:
        ingest.terminate()
        try:
            ingest.wait(20)
        except subprocess.TimeoutExpired:
            ingest.kill()
    return NoiseResult(run, Counter({k: int(n) for k, n in loud}), sent,
                       set(sim.stats.senders.get("emergency", set())), alerted, sim.stats.published)


def _wait(condition: Callable[[], bool], timeout: float, what: str, ingest: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if ingest.poll() is not None:
            raise RuntimeError(f"ingest exited ({ingest.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(0.2)
