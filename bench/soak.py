"""bench/soak: the whole pipeline at the fleet's rate for minutes, to show that neither
memory nor latency grows.

    .venv/bin/python bench/soak.py [--rate 22000] [--minutes 5] [--every 30] [--clients 10]

Starts, as separate processes: Mosquitto from deploy/mosquitto/mosquitto.conf (spare port),
a scratch database on the machine's PostgreSQL (``--database``), two ingest workers in one
``$share`` group (MQTT 3.1.1, metrics on spare ports), one API process with ``--clients``
live-feed websocket clients, and the load generator (bench/loadgen.py: ``--rate`` reports a
second at QoS 1 over 22,000 device ids; 22,000/s is the full fleet at 1 Hz). Every
``--every`` seconds it prints a row: stored/s, each process's RSS and CPU, ingest queue
depth, publish-to-commit latency (a probe report every 50 ms, polled in device_latest) and
publish-to-client latency on the live feed. The summary compares the first window with
the last, and fits a line to RSS over time. Not part of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import httpx
import orjson
import psutil
import psycopg
import websockets
from common import ROOT, scratch_stack, stop_processes, wait_ready
from ingest import Probe

from api.live.snapshot import read_message  # noqa: E402
from services.accounts import Role, add_user  # noqa: E402
from telemetry.embedded import free_port  # noqa: E402
from telemetry.latency import LatencyHistogram  # noqa: E402

SECRET = "soak-" + uuid.uuid4().hex * 2
PASSWORD = "soak password " + uuid.uuid4().hex[:8]


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class LiveClients:
    """``count`` websocket clients of the live feed on one thread; each samples up to 20
    units per delta frame for publish-to-client latency (the load generator stamps ``ts``)."""

    def __init__(self, base: str, bearer: str, count: int) -> None:
        self.url = base.replace("http://", "ws://") + "/api/v1/live"
        self.bearer, self.count = bearer, count
        self.latency = LatencyHistogram()
        self.frames = 0
        self.snapshots = 0
        self.unit_updates = 0  # units in deltas, every client together
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> "LiveClients":
        self._thread.start()
        return self

    async def _main(self) -> None:
        await asyncio.gather(*(self._one() for _ in range(self.count)))

    async def _one(self) -> None:
        async with websockets.connect(self.url, max_size=256 * 1024 * 1024, open_timeout=60) as ws:
            await ws.send(orjson.dumps({"type": "auth", "token": self.bearer}).decode())
            while not self._stop.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(), 0.5)
                except asyncio.TimeoutError:
                    continue
                frame = read_message(raw)
                now = time.time()
                self.frames += 1
                if frame["type"] == "snapshot":
                    self.snapshots += 1
                elif frame["type"] == "delta":
                    self.unit_updates += len(frame["units"])
                    for unit in frame["units"][:20]:
                        if unit.get("ts"):
                            self.latency.record(now - _epoch(unit["ts"]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class Row:
    t_s: float
    stored_per_s: float
    rss_mb: list[float]  # ingest 1, ingest 2, api
    cpu_pct: list[float]
    queue: list[float]
    commit_p50: float | None
    commit_p99: float | None
    live_p50: float | None
    live_p99: float | None


def _scrape(port: int) -> dict[str, float]:
    samples: dict[str, float] = {}
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return samples
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def _stored(db_url: str) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM telemetry WHERE device_id LIKE 'load-%'").fetchone()
    return int(row[0]) if row else 0


def _bytes_per_row(db_url: str) -> float:
    """Table and index bytes per stored report, over the day partitions of ``telemetry``."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT sum(pg_total_relation_size(i.inhrelid)), (SELECT count(*) FROM telemetry) "
                           "FROM pg_inherits i WHERE i.inhparent = 'telemetry'::regclass").fetchone()
    return float(row[0]) / row[1] if row and row[0] and row[1] else float("nan")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=22_000, help="reports per second offered")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--every", type=float, default=30.0, help="seconds per row")
    parser.add_argument("--clients", type=int, default=10, help="live-feed websocket clients")
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    seconds = args.minutes * 60

    with scratch_stack(args.database, prefix="wf-soak") as (broker, db_url):
        workdir = broker.workdir.parent
        with psycopg.connect(db_url) as conn:
            add_user(conn, username="soak-op", password=PASSWORD, role=Role.OPERATOR, areas=["*"])
        common = dict(os.environ, WATCHFLOOR_MQTT_URL=broker.url, WATCHFLOOR_DATABASE_URL=db_url,
                      WATCHFLOOR_TIMESCALEDB="off", WATCHFLOOR_AUTH_SECRET=SECRET, WATCHFLOOR_AUDIT_KEY=SECRET)
        metrics_ports = [free_port(), free_port()]
        procs = [subprocess.Popen([sys.executable, "-m", "watchfloor", "ingest"], cwd=ROOT,
                                  env={**common, "WATCHFLOOR_INGEST_CLIENT_ID": f"watchfloor-soak-ingest-{n}",
                                       "WATCHFLOOR_MQTT_PROTOCOL": "3.1.1",
                                       "WATCHFLOOR_METRICS_PORT": str(metrics_ports[n])},
                                  stdout=(workdir / f"ingest-{n}.log").open("ab"), stderr=subprocess.STDOUT)
                 for n in (0, 1)]
        api_port = free_port()
        base = f"http://127.0.0.1:{api_port}"
        procs.append(subprocess.Popen([sys.executable, "-m", "watchfloor", "api", "--port", str(api_port)],
                                      cwd=ROOT, env=common, stdout=(workdir / "api.log").open("ab"),
                                      stderr=subprocess.STDOUT))
        clients: LiveClients | None = None
        loadgen: subprocess.Popen[bytes] | None = None
        rows: list[Row] = []
        try:
            wait_ready(base)
            bearer = httpx.post(f"{base}/api/v1/auth/token", json={"username": "soak-op", "password": PASSWORD},
                                timeout=10).json()["access_token"]
            time.sleep(2)  # ingest subscribed
            clients = LiveClients(base, bearer, args.clients).start()
            watched = [psutil.Process(p.pid) for p in procs]
            for p in watched:
                p.cpu_percent(None)
            print(f"soak: {args.rate}/s offered for {args.minutes:g} min; 2 ingest workers (MQTT 3.1.1, $share), "
                  f"1 API process with {args.clients} live clients; a row every {args.every:g} s", flush=True)
            print("| t s | stored/s | RSS ingest-1 MB | RSS ingest-2 MB | RSS api MB | CPU ingest-1 % | CPU ingest-2 % "
                  "| CPU api % | queue depth | commit p50 ms | commit p99 ms | live p50 ms | live p99 ms |")
            print("|" + "|".join(["---"] * 13) + "|", flush=True)
            with Probe(broker.url, db_url) as probe:
                loadgen = subprocess.Popen([sys.executable, str(ROOT / "bench" / "loadgen.py"), broker.url,
                                            str(args.rate), str(seconds), "22000", "soak-load"],
                                           stdout=subprocess.PIPE)
                started = time.monotonic()
                last_stored, last_at = _stored(db_url), started
                probe.latency.reset()
                while time.monotonic() - started < seconds - 1:
                    time.sleep(max(0.0, min(args.every, seconds - (time.monotonic() - started))))
                    now = time.monotonic()
                    stored = _stored(db_url)
                    scraped = [_scrape(port) for port in metrics_ports]
                    row = Row(now - started, (stored - last_stored) / (now - last_at),
                              [p.memory_info().rss / 1e6 for p in watched], [p.cpu_percent(None) for p in watched],
                              [s.get("watchfloor_ingest_queue_depth", -1) for s in scraped],
                              probe.latency.quantile(0.5), probe.latency.quantile(0.99),
                              clients.latency.quantile(0.5), clients.latency.quantile(0.99))
                    probe.latency.reset()
                    clients.latency.reset()
                    last_stored, last_at = stored, now
                    rows.append(row)
                    print(f"| {row.t_s:.0f} | {row.stored_per_s:.0f} | {row.rss_mb[0]:.0f} | {row.rss_mb[1]:.0f} "
                          f"| {row.rss_mb[2]:.0f} | {row.cpu_pct[0]:.0f} | {row.cpu_pct[1]:.0f} | {row.cpu_pct[2]:.0f} "
                          f"| {max(row.queue):.0f} | {_fmt(row.commit_p50)} | {_fmt(row.commit_p99)} "
                          f"| {_fmt(row.live_p50)} | {_fmt(row.live_p99)} |", flush=True)
                try:
                    out, _ = loadgen.communicate(timeout=300)
                    sent = int(out.split()[1])
                except subprocess.TimeoutExpired:  # it could not even send its schedule: say so
                    loadgen.kill()
                    loadgen.communicate()
                    sent = -1
                    print("the load generator fell behind its schedule and was stopped", flush=True)
            t_end = time.monotonic()
            while sent >= 0 and _stored(db_url) < sent and time.monotonic() - t_end < 120:
                time.sleep(0.5)
            print(f"\nsent {sent}, stored {_stored(db_url)} (caught up {time.monotonic() - t_end:.1f} s after the "
                  f"load stopped); live clients got {clients.snapshots} snapshots and {clients.frames} frames")
            print(f"telemetry on disk (plain PostgreSQL, table and indexes): {_bytes_per_row(db_url):.0f} "
                  "bytes per report")
            _summary(rows)
        finally:
            if clients is not None:
                clients.stop()
            if loadgen is not None and loadgen.poll() is None:
                loadgen.kill()
            stop_processes(procs)


def _slope_per_min(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var * 60


def _summary(rows: list[Row]) -> None:
    if len(rows) < 2:
        return
    # The first window includes start-up (snapshots, first partitions): compare from the second.
    steady = rows[1:] if len(rows) > 2 else rows
    first, last = steady[0], steady[-1]
    xs = [r.t_s for r in steady]
    print("\nsteady state (from the second row):")
    for i, name in enumerate(("ingest-1", "ingest-2", "api")):
        ys = [r.rss_mb[i] for r in steady]
        print(f"  RSS {name}: {first.rss_mb[i]:.0f} -> {last.rss_mb[i]:.0f} MB "
              f"(max {max(ys):.0f}; trend {_slope_per_min(xs, ys):+.2f} MB/min)")
    for what, a, b in (("commit p99", first.commit_p99, last.commit_p99), ("live p99", first.live_p99, last.live_p99)):
        print(f"  {what}: {_fmt(a)} -> {_fmt(b)} ms")
    p99s = [r.commit_p99 for r in steady if r.commit_p99 is not None]
    if len(p99s) >= 2:
        print(f"  commit p99 trend {_slope_per_min(xs[:len(p99s)], p99s):+.1f} ms/min")


if __name__ == "__main__":
    main()
