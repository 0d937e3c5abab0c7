"""The control-room page with the full fleet: how long from page load until every unit is on
the map, and how smoothly the map runs while the live feed streams updates.

Real parts: Mosquitto (shipped configuration) and a scratch database on the machine's
PostgreSQL, `watchfloor ingest`, `watchfloor api` and `watchfloor simulate` as processes, and
headless Debian Chromium (/usr/bin/chromium, software raster, 1600×900) driven by playwright.
The page exposes its own timings (`window.__watchfloor`): when the snapshot arrived and when
the unit layer holding every unit was first drawn (both from navigation start), and a frame
counter (requestAnimationFrame gaps) that runs while the page does its normal work.

    .venv/bin/python bench/dashboard.py                      # 22,000 devices every 2 s
    .venv/bin/python bench/dashboard.py --devices 2000 --interval 1 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from common import ROOT, scratch_stack

from api.auth import Role, add_user  # noqa: E402
from telemetry.embedded import free_port  # noqa: E402
from telemetry.registry import DeviceRecord, upsert_devices  # noqa: E402
from telemetry.simulator.fleet import FleetProfile, build_fleet  # noqa: E402
from telemetry.simulator.geo import load_boroughs  # noqa: E402

SECRET = "bench-secret-" + "x" * 40
PASSWORD = "bench password, long enough"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _wait_ready(base: str) -> None:
    for _ in range(600):
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("the API did not become ready")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=22_000)
    parser.add_argument("--interval", type=float, default=2.0, help="simulator report interval (s)")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each frame-rate measurement")
    parser.add_argument("--loads", type=int, default=3, help="page loads timed")
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium")
    from playwright.sync_api import sync_playwright

    procs: list[subprocess.Popen[bytes]] = []
    with scratch_stack(args.database, prefix="wf-dashboard") as (broker, db_url):
        workdir = broker.workdir.parent
        try:
            with psycopg.connect(db_url) as conn:
                units = build_fleet(load_boroughs(), args.devices, seed=1, profile=FleetProfile())
                upsert_devices(conn, [DeviceRecord(u.device_id, u.callsign, u.officer, u.borough.name, u.role)
                                      for u in units])
                add_user(conn, username="bench", password=PASSWORD, role=Role.OPERATOR, areas=["*"])
            port = free_port()
            env = dict(os.environ, WATCHFLOOR_DATABASE_URL=db_url, WATCHFLOOR_MQTT_URL=broker.url,
                       WATCHFLOOR_AUTH_SECRET=SECRET, WATCHFLOOR_TIMESCALEDB="off",
                       WATCHFLOOR_INGEST_CLIENT_ID="dashboard-bench-ingest", WATCHFLOOR_INGEST_SHARE_GROUP="",
                       PYTHONPATH=str(ROOT))
            log = (workdir / "processes.log").open("ab")

            def start(*cmd: str) -> subprocess.Popen[bytes]:
                procs.append(subprocess.Popen([sys.executable, "-m", "watchfloor", *cmd], env=env, cwd=ROOT,
                                              stdout=log, stderr=log))
                return procs[-1]

            start("ingest")
            start("api", "--port", str(port))
            base = f"http://127.0.0.1:{port}"
            _wait_ready(base)
            start("simulate", "--devices", str(args.devices), "--interval", str(args.interval))
            time.sleep(args.interval + 5)  # every camera connected and reporting
            session = httpx.post(f"{base}/api/v1/auth/token", json={"username": "bench", "password": PASSWORD}).json()
            session.update(username="bench", expires_at=(time.time() + 3600) * 1000)

            with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="wf-bench-chromium-") as profile:
                context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=ARGS,
                                                               viewport={"width": 1600, "height": 900})
                # Signed in before the page's scripts run, as after a reload: the load is timed
                # from navigation, not from someone typing a password.
                saved = json.dumps(json.dumps(session))
                context.add_init_script(f"sessionStorage.setItem('watchfloor.session', {saved})")
                page = context.new_page()
                loads = _load_times(page, base, args.devices, 1)
                page.wait_for_timeout(2000)
                frames = {
                    "grouped, still": _frames(page, args.seconds, grouping=True, pan=False),
                    "every unit drawn, still": _frames(page, args.seconds, grouping=False, pan=False),
                    "grouped, panning every frame": _frames(page, args.seconds, grouping=True, pan=True),
                    "every unit drawn, panning every frame": _frames(page, args.seconds, grouping=False, pan=True),
                }
                loads += _load_times(page, base, args.devices, args.loads - 1)
                context.close()
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()

    print()
    print(f"{args.devices} devices reporting every {args.interval}s ({args.devices / args.interval:.0f} msg/s) "
          f"through Mosquitto, ingest and the API (live feed at 4 deltas/s); headless Chromium, 1600×900")
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
