"""The control-room page with the full fleet: how long from page load until every unit is on
the map, and how smoothly the map runs while the live feed streams updates.

Real parts: Mosquitto (shipped configuration) and a scratch database on the machine's
PostgreSQL, `watchfloor ingest`, `watchfloor api` and `watchfloor simulate` as processes, and
headless Debian Chromium (/usr/bin/chromium, software raster, 1600×900) driven by playwright.
The page exposes its own timings (`window.__watchfloor`): when the snapshot arrived and when
the unit layer holding every unit was first drawn (both from navigation start), and a frame
counter (requestAnimationFrame gaps) that runs while the page does its normal work.

    .venv/bin/python bench/dashboard.py                      # 22,000 devices every 2 s
    .venv/bin/python bench/dashboard.py --source replay      # the page alone, fed at the same rate
    .venv/bin/python bench/dashboard.py --devices 2000 --interval 1 --seconds 5

`--source replay` takes the broker, ingest, the database and the simulator out of the
measurement (on a loaded 2-core box they starve each other and the stream stutters): a small
server in this process serves the real page and a live feed speaking the API's protocol, with
a snapshot of the fleet and then, 4 times a second, a delta of the units the simulator's own
model moved in that quarter second (devices / interval / 4 units per delta), precomputed and
replayed in a loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import orjson
import uvicorn
from common import (
    PASSWORD,
    ROOT,
    SECRET,
    require_chromium,
    scratch_stack,
    seed_fleet,
    signed_in_page,
    stop_processes,
    wait_ready,
)
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from api.live.snapshot import deflate_units, snapshot_message  # noqa: E402
from api.routes import dashboard  # noqa: E402
from core.settings import Settings  # noqa: E402
from simulator.fleet import FleetProfile, build_fleet  # noqa: E402
from simulator.geo import load_boroughs  # noqa: E402
from telemetry.embedded import free_port  # noqa: E402

ARTIFACTS = ROOT / "test-artifacts"  # screenshots of the map at full scale (gitignored)



def _load_times(page: Any, base: str, devices: int, loads: int) -> list[dict[str, float]]:
    """Navigate `loads` times (signed in already: the session is in sessionStorage); each time,
    the ms from navigation start to the snapshot and to the first unit layer with every unit."""
    results = []
    for _ in range(loads):
        page.goto(base + "/")
        # Polled from here: wait_for_function evaluates a string in the page, which its CSP forbids.
        deadline = time.monotonic() + 60
        while not page.evaluate("(n) => Boolean(window.__watchfloor && window.__watchfloor.perf.firstDrawAt !== null"
                                " && window.__watchfloor.map.stats.total >= n)", devices):
            if time.monotonic() > deadline:
                raise SystemExit("the page did not draw the fleet within 60 s")
            time.sleep(0.05)
        perf = page.evaluate("({...window.__watchfloor.perf, stats: window.__watchfloor.map.stats})")
        results.append({"snapshot_ms": perf["snapshotAt"], "drawn_ms": perf["firstDrawAt"],
                        "units": perf["stats"]["total"], "drawn": perf["firstDrawUnits"]})
    return results


def _frames(page: Any, seconds: float, *, grouping: bool, pan: bool) -> dict[str, Any]:
    page.evaluate(f"(() => {{ const m = window.__watchfloor.map; m.grouping = {str(grouping).lower()};"
                  " m.fitLondon(); })()")
    page.wait_for_timeout(1500)
    result: dict[str, Any] = page.evaluate(
        f"window.__watchfloor.measureFrames({int(seconds * 1000)}, {{pan: {str(pan).lower()}}})")
    return result


def _measure(base: str, session: dict[str, Any], *, devices: int, seconds: float,
             loads: int) -> tuple[list[dict[str, float]], dict[str, dict[str, Any]]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="wf-bench-chromium-") as profile:
        context, page = signed_in_page(p, profile, session)
        page.on("console", lambda m: print(f"page: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: print(f"page error: {e}"))
        times = _load_times(page, base, devices, 1)
        page.wait_for_timeout(2000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"bench-dashboard-{devices}-grouped.png"))
        frames = {
            "grouped, still": _frames(page, seconds, grouping=True, pan=False),
            "every unit drawn, still": _frames(page, seconds, grouping=False, pan=False),
            "_shot": page.screenshot(path=str(ARTIFACTS / f"bench-dashboard-{devices}-every-unit.png")),
            "grouped, panning every frame": _frames(page, seconds, grouping=True, pan=True),
            "every unit drawn, panning every frame": _frames(page, seconds, grouping=False, pan=True),
        }
        frames.pop("_shot")
        times += _load_times(page, base, devices, loads - 1)
        context.close()
    return times, frames


def _pipeline(args: argparse.Namespace) -> tuple[list[dict[str, float]], dict[str, dict[str, Any]]]:
    """The real thing: broker, ingest, database, API and simulator as processes."""
    procs: list[subprocess.Popen[bytes]] = []
    with scratch_stack(args.database, prefix="wf-dashboard") as (broker, db_url):
        workdir = broker.workdir.parent
        try:
            seed_fleet(db_url, devices=args.devices, password=PASSWORD)
            port = free_port()
            env = dict(os.environ, WATCHFLOOR_DATABASE_URL=db_url, WATCHFLOOR_MQTT_URL=broker.url,
                       WATCHFLOOR_AUTH_SECRET=SECRET, WATCHFLOOR_AUDIT_KEY=SECRET, WATCHFLOOR_TIMESCALEDB="off",
                       WATCHFLOOR_INGEST_CLIENT_ID="watchfloor-dashboard-bench", WATCHFLOOR_INGEST_SHARE_GROUP="",
                       PYTHONPATH=str(ROOT))
            log = (workdir / "processes.log").open("ab")

            def start(*cmd: str) -> subprocess.Popen[bytes]:
                procs.append(subprocess.Popen([sys.executable, "-m", "watchfloor", *cmd], env=env, cwd=ROOT,
                                              stdout=log, stderr=log))
                return procs[-1]

            start("ingest")
            start("api", "--port", str(port))
            base = f"http://127.0.0.1:{port}"
            wait_ready(base)
            start("simulate", "--devices", str(args.devices), "--interval", str(args.interval))
            time.sleep(args.interval + 5)  # every camera connected and reporting
            session = httpx.post(f"{base}/api/v1/auth/token", json={"username": "bench", "password": PASSWORD}).json()
            session.update(username="bench", expires_at=(time.time() + 3600) * 1000)
            print(f"(processes' output: {workdir / 'processes.log'})")
            return _measure(base, session, devices=args.devices, seconds=args.seconds, loads=args.loads)
        finally:
            stop_processes(procs)


def _rfc3339(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def _replay_frames(devices: int, interval: float, seconds: float) -> tuple[bytes, list[str]]:
    """The snapshot (format 2, api/live/snapshot.py), and `seconds` worth of delta frames as
    the API would send them: each quarter second, the latest state of the units the
    simulator's model stepped in it."""
    units = build_fleet(load_boroughs(), devices, seed=1, profile=FleetProfile())
    profile = FleetProfile()
    now = datetime.now(timezone.utc)

    def state(u: Any, report: dict[str, Any], at: datetime) -> dict[str, Any]:
        gps = report["gps"]
        return {"device_id": u.device_id, "ts": report["ts"], "received_at": _rfc3339(at),
                "battery_pct": report["battery"]["pct"], "charging": report["battery"]["charging"],
                "gps_fix": gps is not None, "lat": gps["lat"] if gps else u.lat, "lon": gps["lon"] if gps else u.lon,
                "accuracy_m": gps["accuracy_m"] if gps else None, "speed_mps": gps["speed_mps"] if gps else None,
                "heading_deg": gps["heading_deg"] if gps else None, "last_fix_at": report["ts"],
                "recording": report["recording"], "storage_pct": report["storage_pct"], "docked": report["docked"],
                "live": report["live"], "viewers": report["viewers"], "online": u.offline_s <= 0}

    snapshot = []
    for u in units:
        report = dict(u._report(now))
        snapshot.append({**state(u, report, now), "callsign": u.callsign, "officer": u.officer,
                         "borough": u.borough.name, "role": u.role})
    per_tick = max(1, round(devices / interval / 4))
    frames, cursor = [], 0
    for tick in range(int(seconds * 4)):
        at = now + timedelta(seconds=tick / 4)
        changed = []
        for _ in range(per_tick):
            u = units[cursor % devices]
            cursor += 1
            report = next((body for channel, body in u.step(at, interval, profile) if "battery" in body), None)
            if report is not None:
                changed.append(state(u, report, at))
        frames.append(orjson.dumps({"type": "delta", "units": changed}).decode())
    return snapshot_message(alerts=[], units=deflate_units(snapshot)), frames


def _replay(args: argparse.Namespace) -> tuple[list[dict[str, float]], dict[str, dict[str, Any]]]:
    """The page alone: its files and a replayed live feed, from a server in this process."""
    snapshot, deltas = _replay_frames(args.devices, args.interval, 20.0)
    app = FastAPI()

    @app.websocket("/api/v1/live")
    async def live(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()  # the auth message (any token will do here)
        await websocket.send_bytes(snapshot)
        tick = 0
        try:
            while True:
                await asyncio.sleep(0.25)
                await websocket.send_text(deltas[tick % len(deltas)])
                tick += 1
        except (WebSocketDisconnect, RuntimeError, OSError):
            return

    @app.get("/api/v1/incidents")
    def incidents() -> list[object]:
        return []

    dashboard.install(app, settings=Settings())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        session = {"access_token": "replay", "role": "operator", "areas": ["*"], "username": "bench",
                   "expires_in": 3600, "expires_at": (time.time() + 3600) * 1000}
        return _measure(f"http://127.0.0.1:{port}", session, devices=args.devices, seconds=args.seconds,
                        loads=args.loads)
    finally:
        server.should_exit = True
        thread.join(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["pipeline", "replay"], default="pipeline")
    parser.add_argument("--devices", type=int, default=22_000)
    parser.add_argument("--interval", type=float, default=2.0, help="simulator report interval (s)")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each frame-rate measurement")
    parser.add_argument("--loads", type=int, default=3, help="page loads timed")
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    require_chromium()
    load_before = os.getloadavg()[0]
    loads, frames = (_replay if args.source == "replay" else _pipeline)(args)
    load_after = os.getloadavg()[0]

    source = ("through Mosquitto, ingest and the API (live feed at 4 deltas/s)" if args.source == "pipeline"
              else "replayed (the page alone, 4 deltas/s)")
    print()
    print(f"{args.devices} devices reporting every {args.interval}s ({args.devices / args.interval:.0f} msg/s) "
          f"{source}; headless Chromium, 1600×900; load average {load_before:.1f} before, {load_after:.1f} after")
    print()
    print("| page load | snapshot received (ms) | every unit drawn (ms) | units |")
    print("|---|---|---|---|")
    for i, r in enumerate(loads, 1):
        print(f"| {i} | {r['snapshot_ms']:.0f} | {r['drawn_ms']:.0f} | {r['units']:.0f} |")
    print(f"| median | {statistics.median(r['snapshot_ms'] for r in loads):.0f} "
          f"| {statistics.median(r['drawn_ms'] for r in loads):.0f} | |")
    print()
    print("| map while updates stream | fps | p95 frame (ms) | worst frame (ms) | unit-layer redraws/s "
          "| slowest redraw (ms) | groups | deltas/s | unit updates/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, f in frames.items():
        print(f"| {name} | {f['fps']:.1f} | {f['p95FrameMs']:.1f} | {f['maxFrameMs']:.0f} "
              f"| {f['unitRenders'] / f['seconds']:.1f} | {f['maxUnitRenderMs']:.1f} | {f['clusters']} "
              f"| {f['deltas'] / f['seconds']:.1f} | {f['deltaUnits'] / f['seconds']:.0f} |")


if __name__ == "__main__":
    main()
