"""bench/fanout: the live feed under the full fleet, beside the broker's own delivery.

    .venv/bin/python bench/fanout.py [--clients 200] [--seconds 30] [--interval 5] [--rate 10]

Starts, as separate processes: Mosquitto (deploy/ config, spare port), one ingest worker,
one API process, and the 22,000-device simulator. Then opens ``--clients`` websocket
clients on loopback. Most only count frames and bytes (as a browser tab would receive
them); a few probes parse every frame and measure publish-to-client latency from each
unit's ``ts`` (the simulator stamps it when it publishes). Measurement starts only once
every client is connected and past its snapshot (22,000 units, about 10 MB each): a
snapshot in the window would measure reconnection, not the feed. The baseline, over the
same window, is a bare MQTT subscriber's publish-to-delivery latency on the same stream,
and the CPU of every process is taken over it too. Afterwards it measures the first
snapshot (every unit) and a 12-hour track query. Prints tables.

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
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import orjson
import paho.mqtt.client as paho
import psutil
import psycopg
import websockets
from common import ROOT, scratch_stack, seed_fleet, stop_processes

from core.mqtt import BrokerAddress, new_client  # noqa: E402
from telemetry.embedded import free_port  # noqa: E402
from telemetry.latency import LatencyHistogram  # noqa: E402
from telemetry.schema import ensure_partitions, features  # noqa: E402

SECRET = "bench-" + uuid.uuid4().hex * 2
PASSWORD = "bench password " + uuid.uuid4().hex[:8]
PROBES = 5


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


async def _snapshot_latency(url: str, token: str, tries: int = 5) -> list[float]:
    out = []
    for _ in range(tries):
        async with websockets.connect(url, max_size=256 * 1024 * 1024) as ws:
            started = time.perf_counter()
            await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
            snapshot = orjson.loads(await ws.recv())
            out.append((time.perf_counter() - started) * 1000)
            assert snapshot["type"] == "snapshot"
            units = len(snapshot["units"])
    print(f"snapshot carried {units} units")
    return out


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
    results.put(("baseline", latency.quantile(0.5), latency.quantile(0.99)))


def _cpu_seconds(watched: dict[str, psutil.Process | None]) -> dict[str, float]:
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
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--devices", type=int, default=22_000)
    parser.add_argument("--interval", type=float, default=5.0, help="simulator report interval")
    parser.add_argument("--rate", type=float, default=10.0, help="live_rate_hz of the API")
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    procs: list[subprocess.Popen[bytes]] = []
    with scratch_stack(args.database, prefix="wf-fanout") as (broker, db_url):
        workdir = broker.workdir.parent
        try:
            units = seed_fleet(db_url, devices=args.devices, password=PASSWORD)
            port = free_port()
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

            ingest = start("ingest")
            api = start("api", "--port", str(port))
            base = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            simulator = start("simulate", "--devices", str(args.devices), "--interval", str(args.interval))
            time.sleep(args.interval + 5)  # the fleet connected and reporting
            token = httpx.post(f"{base}/api/v1/auth/token", json={"username": "bench", "password": PASSWORD}
                               ).json()["access_token"]
            url = base.replace("http://", "ws://") + "/api/v1/live"

            api_proc = psutil.Process(api.pid)

            # The bulk of the clients read in another process, so that the probes' clock is not
            # held up by the reading of everyone else's frames.
            spawn = multiprocessing.get_context("spawn")
            results = spawn.Queue()
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

            async def run_probes() -> tuple[list[Stats], dict[str, float], float]:
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
                           "simulator": psutil.Process(simulator.pid), "Mosquitto": psutil.Process(broker.pid),
                           "PostgreSQL (all backends)": None, "bulk clients": psutil.Process(bulk.pid),
                           "probes (this process)": psutil.Process()}
                cpu0, t0 = _cpu_seconds(watched), time.monotonic()
                await asyncio.sleep(args.seconds)
                cpu1, t1 = _cpu_seconds(watched), time.monotonic()
                stop.set()
                stop_bulk.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                return stats, {name: 100 * (cpu1[name] - cpu0[name]) / (t1 - t0) for name in cpu0}, t1 - t0

            stats, cpu, wall = asyncio.run(run_probes())
            outcome = {name: rest for name, *rest in (results.get(timeout=300) for _ in range(2))}
            bulk.join(30)
            bare.join(30)
            (bulk_bytes, bulk_open), (base_p50, base_p99) = outcome["bulk"], outcome["baseline"]
            snapshots = asyncio.run(_snapshot_latency(url, token))
            tracks = _track_latency(base, token, db_url, units[0].device_id)
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
    print()
    print(f"{args.devices} devices reporting every {args.interval}s ({args.devices / args.interval:.0f} msg/s), "
          f"{args.clients} clients, live_rate_hz {args.rate}, {wall:.0f}s measured")
    print()
    print("| path | p50 ms | p99 ms |")
    print("|---|---|---|")
    print(f"| publish → bare MQTT subscriber (baseline) | {base_p50:.0f} | {base_p99:.0f} |")
    print(f"| publish → the API's hub (its paho intake) | {intake.quantile(0.5):.0f} | {intake.quantile(0.99):.0f} |")
    print(f"| publish → websocket client (through the API's hub) | {merged.quantile(0.5):.0f} "
          f"| {merged.quantile(0.99):.0f} |")
    print()
    print("| measure | value |")
    print("|---|---|")
    for name, percent in cpu.items():
        print(f"| CPU: {name} | {percent:.0f}% of one core |")
    print(f"| clients still connected at the end | {bulk_open + sum(1 for s in probes if s.open)} of {args.clients} |")
    print(f"| bytes delivered, all clients | {mbytes:.1f} MB/s |")
    print(f"| frames received per probe client: deltas (at most --rate) / all | "
          f"{statistics.mean(s.deltas for s in probes) / wall:.1f} / {probe_frames:.1f} per s |")
    print(f"| unit updates delivered per client | {per_client_units:.0f}/s |")
    print(f"| first snapshot ({args.devices} units), p50 / max of {len(snapshots)} | "
          f"{statistics.median(snapshots):.0f} / {max(snapshots):.0f} ms |")
    tracks.sort()
    print(f"| 12-hour track query, p50 / p99 of {len(tracks)} | {statistics.median(tracks):.1f} / "
          f"{tracks[int(len(tracks) * 0.99) - 1]:.1f} ms |")


if __name__ == "__main__":
    main()
