"""bench/fanout: the live feed under the full fleet's rate, beside the broker's own delivery.

    .venv/bin/python bench/fanout.py [--clients 200] [--seconds 30] [--offered 4400] [--rate 10]

Starts, as separate processes: Mosquitto (deploy/ config, spare port), one ingest worker,
one API process, and the cheap load generator (bench/loadgen.py: ``--offered`` reports a
second spread over ``--devices`` registered ids, each stamped with the time it was sent).
The feed goes the way it does in production: device topics -> ingest -> one frame per
committed batch -> the API. First, before the load generator starts, the API idle
(connected, no frames arriving) over the same window as the next; then, with no client,
the API's intake alone: its CPU per 1,000 unit updates a second as measured (the process's
fixed cost divided by the rate included), and with the idle CPU taken off (what the updates
themselves cost, issue #17's target; the rest, ticks, the registry refresh every 30 s and
uvicorn, is fixed: two runs at two rates give the same without it, as their difference),
beside the run's calibration:
a subscriber that only counts the devices' stream, whose CPU per message is ``B`` of the
sizing (docs/operations.md), so that the intake is also printed as ``k_intake``. Then ``--clients`` websocket
clients on loopback. Most only count frames and bytes (as a browser tab would receive
them); a few probes parse every frame and measure publish-to-client latency from each
unit's ``ts``. Measurement starts only once every client is connected and past its
snapshot: a snapshot in the window would measure reconnection, not the feed. The baseline,
over the same window, is a bare MQTT subscriber's publish-to-delivery latency on the same
stream; it also counts what the load generator achieved. A run whose generator fell short
of its offered rate (under 95%), or whose ingest stored less than that, says so and reports
no latency: on a starved machine those figures measure the backlog, not the feed.
Afterwards it measures the first snapshot (every unit: time, and bytes on the wire) and a
12-hour track query. Prints tables.

One file on purpose, though over 400 lines: a benchmark is read top to bottom beside its
results (docs/performance.md), and its parts (processes, clients, probes, tables) serve only it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import selectors
import socket
import statistics
import subprocess
import sys
import time
import uuid
import zlib
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import orjson
import paho.mqtt.client as paho
import psutil
import psycopg
import websockets
from common import ROOT, CountingSubscriber, scratch_stack, stop_processes, wait_ready

from api.live.snapshot import read_message  # noqa: E402
from core.mqtt import BrokerAddress, new_client  # noqa: E402
from services.accounts import Role, add_user  # noqa: E402
from services.registry import DeviceRecord, upsert_devices  # noqa: E402
from simulator.geo import load_boroughs  # noqa: E402
from telemetry.embedded import free_port  # noqa: E402
from telemetry.latency import LatencyHistogram  # noqa: E402
from telemetry.schema import ensure_partitions, features  # noqa: E402

SECRET = "bench-" + uuid.uuid4().hex * 2
PASSWORD = "bench password " + uuid.uuid4().hex[:8]
PROBES = 5
#: Under this share of the offered rate, the run is starved and its latencies are not reported.
ACHIEVED_MIN = 0.95


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class Stats:
    def __init__(self) -> None:
        self.frames = 0
        self.deltas = 0
        self.bytes = 0
        self.units = 0
        self.open = False  # connected, past the snapshot, not closed by the server
        self.latency = LatencyHistogram()
        self.intake = LatencyHistogram()  # publish -> the API's hub (its received_at)


async def _probe(url: str, token: str, stats: Stats, stop: asyncio.Event) -> None:
    """A client that parses every frame and times each unit update from its ``ts``."""
    async with websockets.connect(url, max_size=256 * 1024 * 1024, max_queue=None) as ws:
        await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
        await ws.recv()  # the snapshot
        stats.open = True
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 0.5)
            except asyncio.TimeoutError:
                continue
            except websockets.ConnectionClosed:
                stats.open = False
                return
            now = time.time()
            stats.frames += 1
            stats.bytes += len(raw)
            frame = orjson.loads(raw)
            stats.deltas += frame["type"] == "delta"
            for unit in frame.get("units", []):
                stats.units += 1
                if unit.get("ts"):
                    stats.latency.record(now - _epoch(unit["ts"]))
                    if unit.get("received_at"):
                        stats.intake.record(_epoch(unit["received_at"]) - _epoch(unit["ts"]))


def _first_snapshot(url: str, token: str, tries: int = 20) -> tuple[list[float], int, int, int]:
    """Each try's time from connecting to the whole snapshot received (ms), as a new screen
    waits for it; and the last one's units, bytes on the wire and JSON bytes once inflated.
    On the wire: the websocket frame, header and all, read off a raw socket (permessage-deflate
    is off, api/app.py, so nothing else compresses it; TCP's own headers are not counted)."""
    out = []
    units = wire = inflated = 0
    for _ in range(tries):
        started = time.perf_counter()
        sock = _raw_client(url, token)
        sock.setblocking(True)
        data = b""
        while (header := _frame_header(data, 0)) is None or len(data) < header[1] + header[2]:
            chunk = sock.recv(4 * 1024 * 1024)
            if not chunk:
                raise RuntimeError("the API closed the feed before its snapshot")
            data += chunk
        out.append((time.perf_counter() - started) * 1000)
        sock.close()
        opcode, start, length = header
        assert opcode == 0x2 and data[0] & 0x80, "the snapshot is one binary frame"
        payload = data[start:start + length]
        snapshot = read_message(payload)
        assert snapshot["type"] == "snapshot"
        units, wire, inflated = len(snapshot["units"]), start + length, len(zlib.decompress(payload, -zlib.MAX_WBITS))
    return out, units, wire, inflated


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame (clients must mask); payloads under 64 KiB."""
    mask = os.urandom(4)
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _raw_client(url: str, token: str) -> socket.socket:
    """A websocket client on a raw socket: handshake and auth, then bytes are only counted.
    Parsing frames in Python would make the clients, not the server, the bottleneck."""
    host, port = url.removeprefix("ws://").split("/")[0].split(":")
    sock = socket.create_connection((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /api/v1/live HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    sock.sendall(_masked_frame(0x1, orjson.dumps({"type": "auth", "token": token})))
    sock.setblocking(False)
    return sock


def _frame_header(data: bytes, at: int) -> tuple[int, int, int] | None:
    """(opcode, payload start, payload length) of the server frame at ``at``; None if incomplete."""
    if len(data) - at < 2:
        return None
    short = data[at + 1] & 0x7F
    if short == 126:
        if len(data) - at < 4:
            return None
        return data[at] & 0x0F, at + 4, int.from_bytes(data[at + 2:at + 4], "big")
    if short == 127:
        if len(data) - at < 10:
            return None
        return data[at] & 0x0F, at + 10, int.from_bytes(data[at + 2:at + 10], "big")
    return data[at] & 0x0F, at + 2, short


class _FrameWalker:
    """Passes over a server's frames without decoding them, and answers its pings: uvicorn
    closes a client that misses a pong (20 s + 20 s), which ended runs whose 200 clients took
    longer than that to connect."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._held = b""  # an incomplete header, or a ping still arriving
        self._skip = 0  # payload bytes still to pass over

    def feed(self, data: bytes) -> None:
        if self._skip >= len(data):
            self._skip -= len(data)
            return
        data, self._skip, at = self._held + data[self._skip:], 0, 0
        while (header := _frame_header(data, at)) is not None:
            opcode, start, length = header
            end = start + length
            if opcode == 0x9:  # ping
                if end > len(data):
                    break
                self.sock.send(_masked_frame(0xA, data[start:end]))
            elif end > len(data):
                self._skip, self._held = end - len(data), b""
                return
            at = end
        self._held = data[at:]


def _bulk_clients(url: str, token: str, count: int, connected: Any, counting: Any, stop: Any,
                  results: Any) -> None:
    """``count`` clients that read everything the server sends, on one selector. They read
    while the others connect (a client that stops reading is a slow client, not this bench);
    ``connected`` is set once all have connected and read their snapshots. Bytes are counted
    while ``counting`` is set, until ``stop``."""
    selector = selectors.DefaultSelector()
    received = 0
    closed: list[socket.socket] = []

    def pump(timeout: float) -> None:
        nonlocal received
        for key, _ in selector.select(timeout):
            walker: _FrameWalker = key.data
            try:
                data = walker.sock.recv(4 * 1024 * 1024)
            except BlockingIOError:
                continue
            if not data:  # the server closed it: counted, so that a run that lost clients shows it
                selector.unregister(walker.sock)
                closed.append(walker.sock)
                continue
            walker.feed(data)
            if counting.is_set():
                received += len(data)

    for _ in range(count):
        sock = _raw_client(url, token)
        selector.register(sock, selectors.EVENT_READ, _FrameWalker(sock))
        pump(0)
    settled = time.monotonic() + 3  # the last snapshots read
    while time.monotonic() < settled:
        pump(0.2)
    connected.set()
    while not stop.is_set():
        pump(0.2)
    results.put(("bulk", received, count - len(closed)))


def _bare_subscriber(url: str, seconds: float, results: Any) -> None:
    """The baseline: a plain subscriber to the same stream, in a process of its own, over
    the same window as the clients (so under the same load)."""
    address = BrokerAddress.parse(url)
    latency = LatencyHistogram()
    client = new_client(address, client_id=f"bare-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv311)
    client.on_message = lambda c, u, m: latency.record(time.time() - _epoch(orjson.loads(m.payload)["ts"]))
    client.connect(address.host, address.port)
    client.subscribe("watchfloor/v1/devices/+/telemetry", qos=0)
    client.loop_start()
    time.sleep(seconds)
    client.disconnect()
    client.loop_stop()
    results.put(("baseline", latency.quantile(0.5), latency.quantile(0.99), latency.count))


def _calibration(url: str, seconds: float, results: Any) -> None:
    """The run's calibration, in a process of its own beside the intake window: a subscriber
    that only counts the devices' stream, and its CPU per message."""
    counter = CountingSubscriber(url)
    count0, cpu0 = counter.count, time.process_time()
    time.sleep(seconds)
    count1, cpu1 = counter.count, time.process_time()
    counter.stop()
    results.put(("calibration", cpu1 - cpu0, count1 - count0))


def seed_load_fleet(db_url: str, *, devices: int, password: str) -> None:
    """Register the load generator's device ids across the boroughs, and an operator
    ``bench`` who sees every borough."""
    boroughs = [b.name for b in load_boroughs()]
    with psycopg.connect(db_url) as conn:
        upsert_devices(conn, [DeviceRecord(f"load-{d:05d}", f"LD{d:05d}", f"PC {d}", boroughs[d % len(boroughs)],
                                           "response") for d in range(devices)])
        add_user(conn, username="bench", password=password, role=Role.OPERATOR, areas=["*"])


def _counter(url: str, sample: str) -> float:
    """One sample of a process's /metrics (``sample``: its name and labels as printed)."""
    for line in httpx.get(url, timeout=10).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[1])
    raise SystemExit(f"{url} has no {sample}")


def _unit_updates(base: str) -> float:
    """The API's count of unit states taken from ingest's frames."""
    return _counter(f"{base}/metrics", "watchfloor_live_unit_updates_total")


def _stored(metrics: str) -> float:
    """Ingest's count of reports stored."""
    return _counter(metrics, 'watchfloor_ingest_messages_stored_total{channel="telemetry"}')


def _cpu_percent(proc: psutil.Process, base: str, seconds: float) -> tuple[float, float]:
    """``proc``'s CPU over the next ``seconds`` (% of one core), and the API's unit updates a
    second over the same window."""
    updates0, cpu0, t0 = _unit_updates(base), cpu_seconds({"API": proc}), time.monotonic()
    time.sleep(seconds)
    updates1, cpu1, t1 = _unit_updates(base), cpu_seconds({"API": proc}), time.monotonic()
    return 100 * (cpu1["API"] - cpu0["API"]) / (t1 - t0), (updates1 - updates0) / (t1 - t0)


def _ms(value: float | None) -> str:
    return "none recorded" if value is None else f"{value:.0f}"


def cpu_seconds(watched: dict[str, psutil.Process | None]) -> dict[str, float]:
    """CPU seconds so far of each process (None: every PostgreSQL process, summed; the
    ingest's and API's connections are long-lived), and of the whole machine."""
    def seconds(proc: psutil.Process) -> float:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            return 0.0
        return times.user + times.system

    out = {}
    for name, proc in watched.items():
        if proc is None:
            out[name] = sum(seconds(p) for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres")
        else:
            out[name] = seconds(proc)
    machine = psutil.cpu_times()
    out["machine (all processes)"] = machine.user + machine.system + machine.nice + machine.irq + machine.softirq
    return out


def _track_latency(base: str, token: str, db_url: str, device_id: str, tries: int = 20) -> list[float]:
    end = datetime.now(timezone.utc) - timedelta(minutes=5)
    start = end - timedelta(hours=12)
    with psycopg.connect(db_url, autocommit=True) as conn:
        if "native_partitioning" in features(conn):  # written past ingest, which would create them
            ensure_partitions(conn, {start.date(), end.date()})
        conn.execute(
            "INSERT INTO telemetry (device_id, ts, seq, received_at, battery_pct, charging, lat, lon, accuracy_m,"
            " recording, live, viewers) SELECT %s, %s + make_interval(secs => g), 1000000 + g, now(), 50, false,"
            " 51.5 + g * 1e-6, -0.1, 5, 'buffering', false, 0 FROM generate_series(0, 43199) g", (device_id, start))
    out = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
        for _ in range(tries):
            t0 = time.perf_counter()
            r = http.get(f"/api/v1/devices/{device_id}/track", params={"start": start.isoformat(),
                                                                      "end": end.isoformat()})
            out.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
    print(f"12-hour track: 43,200 fixes stored, {len(r.json())} returned")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0, help="the window measured with clients")
    # 30 s: api/app.py reloads the registry every 30 s, so each of the two windows holds one
    # reload (a shorter window holds one or none, and the idle cost would swing with it).
    parser.add_argument("--intake-seconds", type=float, default=30.0,
                        help="each of the two windows measured without clients: idle, then intake")
    parser.add_argument("--devices", type=int, default=22_000)
    parser.add_argument("--offered", type=float, default=4_400.0, help="reports a second from the load generator")
    parser.add_argument("--rate", type=float, default=10.0, help="live_rate_hz of the API")
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    procs: list[subprocess.Popen[bytes]] = []
    with scratch_stack(args.database, prefix="wf-fanout") as (broker, db_url):
        workdir = broker.workdir.parent
        try:
            seed_load_fleet(db_url, devices=args.devices, password=PASSWORD)
            port, ingest_port = free_port(), free_port()
            ingest_metrics = f"http://127.0.0.1:{ingest_port}/metrics"
            env = dict(os.environ, WATCHFLOOR_DATABASE_URL=db_url, WATCHFLOOR_MQTT_URL=broker.url,
                       WATCHFLOOR_AUTH_SECRET=SECRET, WATCHFLOOR_AUDIT_KEY=SECRET,
                       WATCHFLOOR_LIVE_RATE_HZ=str(args.rate),
                       WATCHFLOOR_TIMESCALEDB="off", WATCHFLOOR_INGEST_CLIENT_ID="watchfloor-fanout-ingest",
                       # Every client is the one bench user, connecting at once: lift the feed caps.
                       WATCHFLOOR_LIVE_MAX_FEEDS_PER_USER=str(args.clients),
                       WATCHFLOOR_LIVE_MAX_UNAUTHENTICATED=str(args.clients))
            log = (workdir / "processes.log").open("ab")

            def start(*cmd: str) -> subprocess.Popen[bytes]:
                procs.append(subprocess.Popen([sys.executable, "-m", "watchfloor", *cmd], env=env, cwd=ROOT,
                                              stdout=log, stderr=log))
                return procs[-1]

            ingest = subprocess.Popen([sys.executable, "-m", "watchfloor", "ingest"], cwd=ROOT, stdout=log,
                                      stderr=log, env=dict(env, WATCHFLOOR_METRICS_PORT=str(ingest_port)))
            procs.append(ingest)
            api = start("api", "--port", str(port))
            base = f"http://127.0.0.1:{port}"
            wait_ready(base)
            api_proc = psutil.Process(api.pid)
            # The API idle: connected, no frames (the generator has not started), no clients.
            idle_cpu, idle_updates = _cpu_percent(api_proc, base, args.intake_seconds)
            # The generator runs until stopped with the rest (a day is longer than any run).
            procs.append(subprocess.Popen([sys.executable, str(ROOT / "bench" / "loadgen.py"), broker.url,
                                           str(args.offered), "86400", str(args.devices), "fanout-load"],
                                          stdout=log, stderr=log))
            loadgen = procs[-1]
            time.sleep(5)  # ingest and the API past their first batches
            token = httpx.post(f"{base}/api/v1/auth/token", json={"username": "bench", "password": PASSWORD}
                               ).json()["access_token"]
            url = base.replace("http://", "ws://") + "/api/v1/live"

            # The API's intake alone: no client, so its CPU is taking frames in (and ticking).
            spawn = multiprocessing.get_context("spawn")
            results = spawn.Queue()
            calibration = spawn.Process(target=_calibration, args=(broker.url, args.intake_seconds, results))
            calibration.start()
            intake_cpu, intake_rate = _cpu_percent(api_proc, base, args.intake_seconds)
            _, bare_cpu_s, bare_count = results.get(timeout=120)
            calibration.join(30)

            # The bulk of the clients read in another process, so that the probes' clock is not
            # held up by the reading of everyone else's frames.
            bare = spawn.Process(target=_bare_subscriber, args=(broker.url, args.seconds, results))
            connected, counting, stop_bulk = spawn.Event(), spawn.Event(), spawn.Event()
            bulk = spawn.Process(target=_bulk_clients, args=(url, token, args.clients - PROBES, connected, counting,
                                                             stop_bulk, results))
            bulk.start()
            began = time.monotonic()
            if not connected.wait(600):
                bulk.terminate()
                raise SystemExit("the bulk clients did not connect within 10 minutes")
            print(f"{args.clients - PROBES} bulk clients connected and past their snapshots in "
                  f"{time.monotonic() - began:.0f} s")

            async def run_probes() -> tuple[list[Stats], dict[str, float], float, float, float]:
                stop = asyncio.Event()
                stats = [Stats() for _ in range(PROBES)]
                tasks = [asyncio.create_task(_probe(url, token, s, stop)) for s in stats]
                await asyncio.sleep(5)  # the probes past their snapshots
                for s in stats:
                    s.frames = s.deltas = s.bytes = s.units = 0
                    s.latency.reset()
                    s.intake.reset()
                counting.set()
                bare.start()
                watched = {"API": api_proc, "ingest": psutil.Process(ingest.pid),
                           "load generator": psutil.Process(loadgen.pid), "Mosquitto": psutil.Process(broker.pid),
                           "PostgreSQL (all backends)": None, "bulk clients": psutil.Process(bulk.pid),
                           "probes (this process)": psutil.Process()}
                updates0 = await asyncio.to_thread(_unit_updates, base)
                stored0 = await asyncio.to_thread(_stored, ingest_metrics)
                cpu0, t0 = cpu_seconds(watched), time.monotonic()
                await asyncio.sleep(args.seconds)
                cpu1, t1 = cpu_seconds(watched), time.monotonic()
                updates1 = await asyncio.to_thread(_unit_updates, base)
                stored1 = await asyncio.to_thread(_stored, ingest_metrics)
                stop.set()
                stop_bulk.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                return (stats, {name: 100 * (cpu1[name] - cpu0[name]) / (t1 - t0) for name in cpu0}, t1 - t0,
                        (updates1 - updates0) / (t1 - t0), (stored1 - stored0) / (t1 - t0))

            stats, cpu, wall, fed_rate, stored_rate = asyncio.run(run_probes())
            outcome = {name: rest for name, *rest in (results.get(timeout=300) for _ in range(2))}
            bulk.join(30)
            bare.join(30)
            (bulk_bytes, bulk_open), (base_p50, base_p99, base_count) = outcome["bulk"], outcome["baseline"]
            snapshots, snapshot_units, snapshot_wire, snapshot_json = _first_snapshot(url, token)
            tracks = _track_latency(base, token, db_url, "load-00000")
        finally:
            stop_processes(procs)

    probes = stats[:PROBES]
    merged, intake = LatencyHistogram(), LatencyHistogram()
    for s in probes:
        merged.merge(s.latency)
        intake.merge(s.intake)
    probe_frames = statistics.mean(s.frames for s in probes) / wall
    mbytes = (sum(s.bytes for s in stats) + bulk_bytes) / wall / 1e6
    per_client_units = statistics.mean(s.units for s in probes) / wall
    achieved = base_count / args.seconds
    starved = []
    if achieved < ACHIEVED_MIN * args.offered:
        starved.append(f"the load generator fell behind: {achieved:.0f}/s reached a bare subscriber of "
                       f"{args.offered:.0f}/s offered")
    if stored_rate < ACHIEVED_MIN * args.offered:
        starved.append(f"ingest fell behind: it stored {stored_rate:.0f}/s of {args.offered:.0f}/s offered")
    print()
    print(f"{args.devices} devices, {args.offered:.0f} reports/s offered by bench/loadgen.py through ingest, "
          f"{args.clients} clients, live_rate_hz {args.rate}, {wall:.0f}s measured")
    print()
    print("| rate | per s |")
    print("|---|---|")
    print(f"| offered by the load generator | {args.offered:.0f} |")
    print(f"| achieved (reaching a bare subscriber) | {achieved:.0f} |")
    print(f"| stored by ingest | {stored_rate:.0f} |")
    print(f"| unit updates reaching the API (a unit's reports in one batch are one), no clients / "
          f"{args.clients} clients | {intake_rate:.0f} / {fed_rate:.0f} |")
    print()
    for line in starved:
        print(f"NOT VALID: {line}; latencies are not reported (they would measure the backlog).")
    if not starved:
        print("| path | p50 ms | p99 ms |")
        print("|---|---|---|")
        print(f"| publish → bare MQTT subscriber (baseline) | {_ms(base_p50)} | {_ms(base_p99)} |")
        print(f"| publish → ingest (its received_at) | {_ms(intake.quantile(0.5))} | {_ms(intake.quantile(0.99))} |")
        print(f"| publish → websocket client (ingest, frame, the API's hub) | {_ms(merged.quantile(0.5))} "
              f"| {_ms(merged.quantile(0.99))} |")
    print()
    print("| measure | value |")
    print("|---|---|")
    per_thousand = intake_cpu / (intake_rate / 1000) if intake_rate else float("nan")
    net = (intake_cpu - idle_cpu) / (intake_rate / 1000) if intake_rate else float("nan")
    print(f"| API CPU idle: connected, no frames, no clients ({args.intake_seconds:.0f} s, "
          f"{idle_updates:.0f} updates/s) | {idle_cpu:.2f}% of one core |")
    print(f"| API CPU intake alone (no clients), {args.intake_seconds:.0f} s | {intake_cpu:.2f}% of one core |")
    print(f"| API CPU per 1,000 unit updates/s, intake alone, as measured (fixed cost included) | "
          f"{per_thousand:.2f}% of one core |")
    print(f"| API CPU per 1,000 unit updates/s, intake alone, idle CPU subtracted (#17's target) | "
          f"{net:.2f}% of one core |")
    bare_us = 1e6 * bare_cpu_s / bare_count if bare_count else float("nan")
    print(f"| calibration: a bare subscriber's CPU per message (B), beside the intake window | {bare_us:.1f} µs "
          f"({1e6 / bare_us:,.0f} per core-second) |")
    print(f"| intake per unit update in B, as measured / idle subtracted (k_intake) | "
          f"{per_thousand * 10 / bare_us:.2f} / {net * 10 / bare_us:.2f} |")
    with_clients = cpu["API"] / (fed_rate / 1000) if fed_rate else float("nan")
    print(f"| API CPU per 1,000 unit updates/s, with {args.clients} clients | {with_clients:.2f}% of one core |")
    for name, percent in cpu.items():
        print(f"| CPU: {name} | {percent:.0f}% of one core |")
    print(f"| clients still connected at the end | {bulk_open + sum(1 for s in probes if s.open)} of {args.clients} |")
    print(f"| bytes delivered, all clients | {mbytes:.1f} MB/s |")
    print(f"| frames received per probe client: deltas (at most --rate) / all | "
          f"{statistics.mean(s.deltas for s in probes) / wall:.1f} / {probe_frames:.1f} per s |")
    print(f"| unit updates delivered per client | {per_client_units:.0f}/s |")
    print(f"| first snapshot ({snapshot_units} units): bytes on the wire (its JSON, inflated) | "
          f"{snapshot_wire / 1e6:.2f} MB ({snapshot_json / 1e6:.1f} MB) |")
    snapshots.sort()
    print(f"| first snapshot, connect → received, p50 / p99 of {len(snapshots)} | "
          f"{statistics.median(snapshots):.0f} / {snapshots[int(len(snapshots) * 0.99) - 1]:.0f} ms |")
    tracks.sort()
    print(f"| 12-hour track query, p50 / p99 of {len(tracks)} | {statistics.median(tracks):.1f} / "
          f"{tracks[int(len(tracks) * 0.99) - 1]:.1f} ms |")


if __name__ == "__main__":
    main()
