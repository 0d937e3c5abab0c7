"""Two API processes and two ingest workers, all real processes: every websocket client of
either API process sees every update, because live state comes from the broker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from core.contract import Channel, topic_for
from services.registry import DeviceRecord, upsert_devices
from telemetry.embedded import free_port
from tests.helpers.api import API_PROCESS_ENV, LiveReader, add_test_users, token
from tests.helpers.db import Database
from tests.helpers.telemetry import publish_all, telemetry_payload
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess


@contextmanager
def _processes(commands: list[tuple[list[str], dict[str, str]]], log: Path) -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-m", "watchfloor", *args], env={**os.environ, **env},
                              stdout=log.open("ab"), stderr=subprocess.STDOUT) for args, env in commands]
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)


def test_every_client_of_either_api_process_sees_every_update(pg: Database, mosquitto: MosquittoProcess,
                                                              tmp_path: Path) -> None:
    devices = [DeviceRecord(f"so-{i:03d}", None, None, "Camden", "response") for i in range(100)]
    with pg.connect() as conn:
        add_test_users(conn)
        upsert_devices(conn, devices)
    common = {"WATCHFLOOR_DATABASE_URL": pg.url, "WATCHFLOOR_MQTT_URL": mosquitto.url,
              **API_PROCESS_ENV, "WATCHFLOOR_TIMESCALEDB": "off"}
    ports = [free_port(), free_port()]
    commands = [(["ingest"], {**common, "WATCHFLOOR_INGEST_CLIENT_ID": f"watchfloor-so-ingest-{n}"}) for n in (1, 2)]
    commands += [(["api", "--port", str(port)], common) for port in ports]
    with _processes(commands, tmp_path / "processes.log"):
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        for base in bases:
            wait_for(lambda: _ready(base), timeout=60, what=f"{base} ready")
        readers = [LiveReader(base, token(base, "op-all")) for base in bases for _ in range(2)]
        try:
            for reader in readers:
                wait_for(lambda: reader.of_type("snapshot"), what="snapshot")
            publish_all(mosquitto.url, [(topic_for(d.device_id, Channel.TELEMETRY), telemetry_payload(7, battery=33.0))
                                        for d in devices])
            for reader in readers:
                wait_for(lambda: all((reader.latest_unit(d.device_id) or {}).get("battery_pct") == 33.0
                                     for d in devices), timeout=20, what="every update at every client")
        finally:
            for reader in readers:
                reader.close()
    assert pg.scalar("SELECT count(*) FROM telemetry") == 100


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
