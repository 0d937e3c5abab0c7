"""The fleet past one process (issue #17 §4), all real processes on the shipped Mosquitto:
three ingest workers in one ``$share`` group, two API processes, and the simulator split over
two processes with disjoint device ranges. Every update reaches every live-feed client of
either API process, in order per unit, and the store holds exactly what the broker took.
What it costs per message is bench/scale_out.py's to measure, not this test's."""

from __future__ import annotations

import threading
from collections import defaultdict
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from core.contract import Channel, topic_for
from services.registry import DeviceRecord, upsert_devices
from simulator.fleet import FleetProfile, build_fleet
from simulator.geo import load_boroughs
from telemetry.embedded import free_port
from tests.helpers.api import API_PROCESS_ENV, LiveReader, add_test_users, token
from tests.helpers.broker import connect_and_wait, subscribe_and_wait
from tests.helpers.db import Database
from tests.helpers.processes import WatchfloorProcess, scrape, watchfloor_process
from tests.helpers.telemetry import publish_all, telemetry_payload
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess

pytestmark = pytest.mark.timeout(300)

DEVICES = 200
WORKERS = 3
#: The last report of every unit carries this battery reading; the simulator rounds its own to
#: one decimal, so no earlier report can have it.
SENTINEL_BATTERY = 12.34
SENTINEL_SEQ = 1_000_000


class Witness:
    """A bare subscriber to every device's telemetry, beside ingest: what the broker took,
    as ``{device_id: {seq}}``."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.seen: dict[str, set[int]] = defaultdict(set)
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="scaleout-witness",
                                  protocol=paho.MQTTv311)
        self.client.on_message = self._on_message
        connect_and_wait(self.client, host, int(port))
        subscribe_and_wait(self.client, topic_for("+", Channel.TELEMETRY), 1)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        device_id = message.topic.split("/")[-2]
        with self._lock:
            self.seen[device_id].add(int(orjson.loads(message.payload)["seq"]))

    def sentinels(self, devices: list[str]) -> int:
        with self._lock:
            return sum(SENTINEL_SEQ in self.seen[d] for d in devices)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stored(db: Database, devices: list[str]) -> dict[str, list[tuple[int, datetime]]]:
    """Each unit's stored reports, (seq, ts), in the order of their time."""
    with db.connect() as conn:
        rows = conn.execute("SELECT device_id, seq, ts FROM telemetry WHERE device_id = ANY(%s) ORDER BY ts, seq",
                            (devices,)).fetchall()
    stored: dict[str, list[tuple[int, datetime]]] = defaultdict(list)
    for device_id, seq, ts in rows:
        stored[device_id].append((seq, ts))
    return stored


def _times_shown(reader: LiveReader) -> dict[str, list[datetime]]:
    """Per unit, the report times the client was sent, in the order it got them."""
    shown: dict[str, list[datetime]] = defaultdict(list)
    for frame in reader.unit_frames():
        for unit in frame["units"]:
            if unit.get("ts") is not None:
                shown[unit["device_id"]].append(datetime.fromisoformat(unit["ts"]))
    return shown


def test_every_update_reaches_every_client_of_a_scaled_out_fleet(pg: Database, mosquitto: MosquittoProcess,
                                                                 tmp_path: Path) -> None:
    """Two simulator processes drive 100 cameras each for a few rounds, then every camera sends
    a last report with a sentinel battery reading. Three ingest workers share the stream and
    each publishes its own live frames; each of two API processes has two live-feed clients.
    Every client ends with every unit at its sentinel report, saw each unit's reports in time
    order and only reports that were stored; the store holds each report the broker took,
    once."""
    units = build_fleet(load_boroughs(), DEVICES, seed=1, profile=FleetProfile())
    devices = [u.device_id for u in units]
    with pg.connect() as conn:
        add_test_users(conn)
        upsert_devices(conn, [DeviceRecord(u.device_id, u.callsign, u.officer, u.borough.name, u.role)
                              for u in units])
    common = {"WATCHFLOOR_DATABASE_URL": pg.url, "WATCHFLOOR_MQTT_URL": mosquitto.url,
              "WATCHFLOOR_TIMESCALEDB": "off", **API_PROCESS_ENV}
    metrics_ports = [free_port() for _ in range(WORKERS)]
    metrics = [f"http://127.0.0.1:{port}/metrics" for port in metrics_ports]
    ports = [free_port(), free_port()]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    with ExitStack() as stack:
        witness = Witness(mosquitto.url)
        stack.callback(witness.close)
        for n, metrics_port in enumerate(metrics_ports):
            stack.enter_context(watchfloor_process(["ingest"], {
                **common, "WATCHFLOOR_INGEST_CLIENT_ID": f"watchfloor-scaleout-{n}",
                "WATCHFLOOR_METRICS_PORT": str(metrics_port)}, tmp_path / f"ingest-{n}.log"))
        for port in ports:
            stack.enter_context(watchfloor_process(["api", "--port", str(port)], common,
                                                   tmp_path / f"api-{port}.log"))

        # A $share group's member gets nothing published before it subscribed: warm up until
        # each worker has taken a message (the broker deals them out in turn).
        def every_worker_received() -> bool:
            publish_all(mosquitto.url, [(topic_for("scaleout-warmup", Channel.TELEMETRY), telemetry_payload(1))],
                        client_id="scaleout-warmup")
            return all(scrape(url).get("watchfloor_ingest_messages_received_total", 0) > 0 for url in metrics)

        wait_for(every_worker_received, timeout=120, interval=0.5, what="every ingest worker subscribed")
        for base in bases:
            wait_for(lambda: _ready(base), timeout=120, what=f"{base} ready")
        readers = [LiveReader(base, token(base, "op-all")) for base in bases for _ in range(2)]
        for reader in readers:
            stack.callback(reader.close)
            wait_for(lambda: reader.of_type("snapshot"), timeout=60, what="a snapshot")

        half = DEVICES // 2
        simulators = [WatchfloorProcess(["simulate", "--devices", str(half), "--first", str(first),
                                         "--interval", "1", "--duration", "6", "--connections", "10"],
                                        {"WATCHFLOOR_MQTT_URL": mosquitto.url},
                                        tmp_path / f"simulate-{first}.log").start()
                      for first in (0, half)]
        for sim in simulators:
            stack.callback(sim.stop)
        for sim in simulators:
            assert sim.proc is not None
            assert sim.proc.wait(120) == 0, sim.tail()

        last_at = datetime.now(timezone.utc)
        publish_all(mosquitto.url, [(topic_for(d, Channel.TELEMETRY),
                                     telemetry_payload(SENTINEL_SEQ, ts=last_at, battery=SENTINEL_BATTERY))
                                    for d in devices], client_id="scaleout-sentinels")
        wait_for(lambda: witness.sentinels(devices) == DEVICES, what="the broker delivered every sentinel")
        for reader in readers:
            wait_for(lambda: all(u.get("battery_pct") == SENTINEL_BATTERY
                                 for u in (reader.units().get(d, {}) for d in devices)),
                     timeout=120, what="every unit's sentinel at every client")

        stored = _stored(pg, devices)
        with pg.connect() as conn:
            row = conn.execute("SELECT count(*) FROM telemetry WHERE device_id = ANY(%s)", (devices,)).fetchone()
        assert row is not None and row[0] == sum(len(reports) for reports in stored.values())
        assert {d: {seq for seq, _ in stored[d]} for d in devices} == {d: witness.seen[d] for d in devices}
        assert sum(len(witness.seen[d]) for d in devices) > 2 * DEVICES, "the simulators sent hardly anything"
        frames = [scrape(url).get("watchfloor_ingest_live_frames_total", 0) for url in metrics]
        assert all(frames), f"every worker publishes its own live frames: {frames}"

        for reader in readers:
            held = reader.units()
            assert all(datetime.fromisoformat(held[d]["ts"]) == last_at for d in devices)
            for device_id, times in _times_shown(reader).items():
                if device_id not in stored:
                    continue  # the warm-up's unit
                assert times == sorted(times), f"{device_id} went back in time on a screen: {times}"
                assert set(times) <= {ts for _, ts in stored[device_id]}, f"{device_id}: shown but not stored"
