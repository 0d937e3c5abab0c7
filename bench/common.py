"""What the benchmarks share: a scratch database on the machine's PostgreSQL and a
Mosquitto from the shipped configuration, both removed afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.mqtt import BrokerAddress, new_client  # noqa: E402
from services.accounts import Role, add_user  # noqa: E402
from services.registry import DeviceRecord, upsert_devices  # noqa: E402
from simulator.fleet import FleetProfile, Unit, build_fleet  # noqa: E402
from simulator.geo import load_boroughs  # noqa: E402
from telemetry.schema import migrate  # noqa: E402
from watchfloor.mosquitto import MosquittoProcess  # noqa: E402

__all__ = ["CHROMIUM", "LOAD_TOPIC", "PASSWORD", "ROOT", "SECRET", "CountingSubscriber", "WalMark", "WalUsed",
           "require_chromium", "scratch_stack", "seed_fleet", "signed_in_page", "stop_processes", "wait_ready",
           "wal_mark", "wal_since"]


#: The devices' telemetry, as the bare subscribers take it.
LOAD_TOPIC = "watchfloor/v1/devices/+/telemetry"


@contextmanager
def scratch_stack(admin_url: str, *, prefix: str, timescaledb: str = "off") -> Iterator[tuple[MosquittoProcess, str]]:
    """(broker, database URL): a fresh migrated database and a Mosquitto on a spare port."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    broker = MosquittoProcess(workdir / "mosquitto").start()
    name = f"{prefix.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    db_url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    try:
        with psycopg.connect(db_url) as conn:
            migrate(conn, retention=timedelta(days=30), compress_after=timedelta(days=2), timescaledb=timescaledb)
        yield broker, db_url
    finally:
        broker.stop()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def seed_fleet(db_url: str, *, devices: int, password: str) -> list[Unit]:
    """Register the simulator's fleet (seed 1, as ``watchfloor simulate`` builds it) and an
    operator ``bench`` who sees every borough; returns the units."""
    units = build_fleet(load_boroughs(), devices, seed=1, profile=FleetProfile())
    with psycopg.connect(db_url) as conn:
        upsert_devices(conn, [DeviceRecord(u.device_id, u.callsign, u.officer, u.borough.name, u.role)
                              for u in units])
        add_user(conn, username="bench", password=password, role=Role.OPERATOR, areas=["*"])
    return units


@dataclass(frozen=True)
class WalMark:
    """Where the server's write-ahead log stood, and how many checkpoints had begun by then."""

    lsn: str
    checkpoints: int


@dataclass(frozen=True)
class WalUsed:
    """WAL the server wrote over a window, and the checkpoints that began in it: after a
    checkpoint begins, the first change to each page logs the whole 8 kB page
    (``full_page_writes``), so a window with one costs more per report than one without."""

    bytes: int
    checkpoints: int

    def per(self, count: int) -> float:
        return self.bytes / count if count else float("nan")


# The checkpointer counts a checkpoint as it begins (and reports it while writing), so the
# difference says whether one began inside a window.
_CHECKPOINTS = "(SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter)"


def wal_mark(db_url: str) -> WalMark:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(f"SELECT pg_current_wal_lsn()::text, {_CHECKPOINTS}").fetchone()
    assert row is not None
    return WalMark(row[0], row[1])


def wal_since(db_url: str, mark: WalMark) -> WalUsed:
    """The WAL written since ``mark`` by the whole server, whatever the database: anything
    else running on it counts too."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)::bigint, {_CHECKPOINTS}",
                           (mark.lsn,)).fetchone()
    assert row is not None
    return WalUsed(row[0], row[1] - mark.checkpoints)


class CountingSubscriber:
    """The bare subscriber: a paho client that only counts the devices' telemetry (QoS 1,
    auto-ack), in ``share_group`` if one is given; the benches' calibration (its CPU per
    message is ``B`` of docs/operations.md's sizing). With ``sample_every``, every so many
    messages its publish-to-delivery time goes to ``latencies`` (parsing every message would
    be work). Connected and subscribed (SUBACK) when made."""

    def __init__(self, url: str, *, share_group: str = "", sample_every: int = 0) -> None:
        address = BrokerAddress.parse(url)
        self.count = 0
        self.latencies: list[float] = []
        self._sample_every = sample_every
        subscribed = threading.Event()
        self.client = new_client(address, client_id=f"bare-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv311)
        self.client.on_message = (lambda c, u, m: self._sampled(m)) if sample_every else (lambda c, u, m: self._one())
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(address.host, address.port)
        self.client.subscribe(f"$share/{share_group}/{LOAD_TOPIC}" if share_group else LOAD_TOPIC, qos=1)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise SystemExit("the bare subscriber got no SUBACK within 10 s")

    def _sampled(self, message: paho.MQTTMessage) -> None:
        self.count += 1
        if self.count % self._sample_every == 0:
            sent = json.loads(message.payload)["ts"]
            self.latencies.append(time.time() - datetime.fromisoformat(sent.replace("Z", "+00:00")).timestamp())

    def _one(self) -> None:
        self.count += 1

    def reach(self, target: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count < target and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process, then wait for each (SIGKILL after 20 s)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_ready(base: str, *, timeout: float = 60.0) -> None:
    """Until the API at ``base`` answers ``/readyz`` (its database and broker connected)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the API at {base} was not ready within {timeout:.0f} s")


# The benchmarks that drive the dashboard: their API's secrets, and Debian's Chromium (never a
# browser download), headless, in a fresh profile each run.
SECRET = "bench-secret-" + "x" * 40
PASSWORD = "bench password, long enough"
CHROMIUM = "/usr/bin/chromium"
_CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium")


def signed_in_page(playwright: Any, profile: str, session: dict[str, Any]) -> tuple[Any, Any]:
    """(context, page) of Chromium at 1600x900 in ``profile``, signed in with ``session``
    before the page's scripts run, as after a reload: a load is timed from navigation, not
    from someone typing a password."""
    context = playwright.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=_CHROMIUM_ARGS,
                                                            viewport={"width": 1600, "height": 900})
    saved = json.dumps(json.dumps(session))
    context.add_init_script(f"sessionStorage.setItem('watchfloor.session', {saved})")
    return context, context.new_page()
