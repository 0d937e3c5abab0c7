"""Replay of 1 hour x 500 units x 1 Hz: from the request to the first frame drawn in Chromium,
beside today's single-unit 12-hour track read, from the same run, on each storage path.

Real parts: a scratch database on the machine's PostgreSQL (plain, and TimescaleDB where the
server has it: the path is skipped, and says so, where it has not), `watchfloor api` as a
process, and headless Debian Chromium (/usr/bin/chromium, 1600x900) driven by playwright.
The history is written straight into the database (no broker or ingest: they are not what is
measured): `--units` units with a fix every `1/--hz` s over `--minutes`, moving inside a 4.5 km
box in Westminster, and one unit with a fix a second over the last 12 hours.

For each path and each of `--runs` runs it times, each from the start of its request:
* **first frame drawn**: in the page, `ReplayView.openArea` for the box and the hour (the
  plan and the first page of frames asked for together, replay.js) until the first frame
  with the units is on screen (`firstFrameAt`, after the map's own animation frame);
* the same first page alone over HTTP, to the first slice decoded (`first slice`), and the
  plan (units and timeline) alone (`plan`);
* `GET /devices/{id}/track` over 12 hours (`12 h track`), to its JSON decoded.

    .venv/bin/python bench/replay.py                     # 500 units, 60 min, 1 Hz, both paths
    .venv/bin/python bench/replay.py --units 20 --minutes 2 --runs 1 --paths plain   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import psycopg
from common import (
    PASSWORD,
    SECRET,
    require_chromium,
    scratch_stack,
    seed_fleet,
    signed_in_page,
    stop_processes,
    wait_ready,
)

from telemetry.embedded import free_port  # noqa: E402
from telemetry.schema import ensure_partitions, features  # noqa: E402

LAT, LON = 51.50, -0.13
BOX = [LAT - 0.02, LON - 0.035, LAT + 0.02, LON + 0.035]  # about 4.4 km x 4.9 km
TRACK_UNIT = "bench-track-1"  # outside the box: not one of the replayed units
FIRST_PAGE_SLICES = 20  # as replay.js asks for first
SLICES = 1200  # replay.js cuts a window into this many slices of at least 1 s


def _rfc3339(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def _seed(db_url: str, *, units: int, minutes: int, hz: float, end: datetime) -> int:
    """The units' history and the 12-hour track, written by the server itself (generate_series)."""
    seed_fleet(db_url, devices=units, password=PASSWORD)
    start = end - timedelta(minutes=minutes)
    with psycopg.connect(db_url) as conn:
        if "native_partitioning" in features(conn):  # hypertables make their own chunks
            ensure_partitions(conn, {(end - timedelta(hours=h)).date() for h in (0, 12, 24)})
        conn.execute("INSERT INTO devices (device_id, callsign, borough, role) VALUES (%s, 'TRK1', 'Westminster',"
                     " 'response')", (TRACK_UNIT,))
        # Each unit walks a circle of its own inside the box, one lap an hour.
        conn.execute(
            "INSERT INTO telemetry (device_id, ts, seq, received_at, battery_pct, charging, lat, lon, accuracy_m,"
            " speed_mps, heading_deg, recording, live, viewers)"
            " SELECT d.device_id, g.ts, g.n, g.ts, 80, false,"
            "  %(lat)s + 0.015 * sin(d.k) + 0.004 * sin(g.n / 573.0 + d.k),"
            "  %(lon)s + 0.025 * cos(d.k) + 0.006 * cos(g.n / 573.0 + d.k), 5, 1.4, 90,"
            "  CASE WHEN (g.n / 600 + d.k::int) %% 3 = 0 THEN 'recording' ELSE 'buffering' END, false, 0"
            " FROM (SELECT device_id, row_number() OVER (ORDER BY device_id) AS k FROM devices"
            "       WHERE device_id <> %(track)s) d"
            " CROSS JOIN LATERAL (SELECT n, %(start)s + make_interval(secs => n / %(hz)s) AS ts"
            "   FROM generate_series(0, (%(seconds)s * %(hz)s)::int - 1) AS n) g",
            {"lat": LAT, "lon": LON, "start": start, "hz": hz, "seconds": minutes * 60, "track": TRACK_UNIT})
        conn.execute(
            "INSERT INTO telemetry (device_id, ts, seq, received_at, battery_pct, charging, lat, lon, accuracy_m,"
            " speed_mps, heading_deg, recording, live, viewers)"
            " SELECT %(track)s, ts, n, ts, 80, false, %(lat)s + 0.01 * sin(n / 3000.0), %(lon)s + 0.1, 5, 1, 0,"
            "  'buffering', false, 0 FROM generate_series(0, 43199) AS n,"
            "  LATERAL (SELECT %(end)s - make_interval(secs => 43200 - n) AS ts) t",
            {"track": TRACK_UNIT, "lat": LAT, "lon": LON, "end": end})
        conn.execute("ANALYZE telemetry")
        row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
        conn.commit()
    return int(row[0]) if row else 0



def _timed(http: httpx.Client, path: str, params: Any) -> tuple[float, Any]:
    began = time.perf_counter()
    response = http.get(path, params=params)
    body = response.json()
    if response.status_code != 200:
        raise SystemExit(f"{path}: {response.status_code} {str(body)[:300]}")
    return (time.perf_counter() - began) * 1000, body


def _http_runs(base: str, token: str, *, start: datetime, end: datetime, runs: int) -> list[dict[str, float]]:
    step_s = max(1, -(-(end - start).total_seconds() // SLICES))
    page_end = start + timedelta(seconds=step_s * FIRST_PAGE_SLICES)
    box = [("bbox", str(v)) for v in BOX]
    window = [("start", _rfc3339(start)), ("end", _rfc3339(end))]
    results = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
        for _ in range(runs):
            began = time.perf_counter()
            response = http.get("/api/v1/replay/frames", params=[("start", _rfc3339(start)),
                                                                 ("end", _rfc3339(page_end)),
                                                                 ("step_s", str(step_s)), *box])
            frames = response.json()
            first = [p for p in frames["points"] if p[0] == 0]  # slice 0, decoded
            first_ms = (time.perf_counter() - began) * 1000
            plan_ms, plan = _timed(http, "/api/v1/replay", [*window, *box])
            track_ms, track = _timed(http, f"/api/v1/devices/{TRACK_UNIT}/track",
                                     {"start": _rfc3339(end - timedelta(hours=12)), "end": _rfc3339(end)})
            results.append({"first_ms": first_ms, "first_units": len(first), "plan_ms": plan_ms,
                            "plan_units": len(plan["units"]), "track_ms": track_ms, "track_points": len(track)})
    return results


def _browser_runs(base: str, session: dict[str, Any], *, start: datetime, end: datetime,
                  runs: int) -> list[dict[str, float]]:
    from playwright.sync_api import sync_playwright

    results = []
    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="wf-bench-chromium-") as profile:
        context, page = signed_in_page(p, profile, session)
        page.on("pageerror", lambda e: print(f"page error: {e}"))
        page.goto(base + "/")
        deadline = time.monotonic() + 60
        while not page.evaluate("Boolean(window.__watchfloor && window.__watchfloor.replay)"):
            if time.monotonic() > deadline:
                raise SystemExit("the page has no replay view within 60 s")
            time.sleep(0.05)
        page.evaluate(f"window.__watchfloor.map.centreOn({LAT}, {LON}, 13)")
        for _ in range(runs):
            # Polled from here: wait_for_function evaluates a string in the page, which its CSP forbids.
            began = page.evaluate("([bbox, start, end]) => { const t = performance.now();"
                                  " window.__watchfloor.replay.openArea({ bbox, start, end }); return t; }",
                                  [BOX, _rfc3339(start), _rfc3339(end)])
            deadline = time.monotonic() + 120
            while (drawn := page.evaluate("window.__watchfloor.replay.firstFrameAt")) is None:
                if time.monotonic() > deadline:
                    raise SystemExit("no replay frame drawn within 120 s")
                time.sleep(0.01)
            units = page.evaluate("(window.__watchfloor.map.replay || []).length")
            results.append({"drawn_ms": drawn - began, "drawn_units": units})
            page.evaluate("window.__watchfloor.replay.close()")
        context.close()
    return results


def _path(args: argparse.Namespace, path: str) -> dict[str, Any] | str:
    procs: list[subprocess.Popen[bytes]] = []
    timescaledb = "require" if path == "timescale" else "off"
    try:
        stack = scratch_stack(args.database, prefix="wf-replay", timescaledb=timescaledb)
        broker, db_url = stack.__enter__()
    except RuntimeError as error:
        return f"skipped: {error}"
    try:
        end = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=1)
        start = end - timedelta(minutes=args.minutes)
        began = time.perf_counter()
        rows = _seed(db_url, units=args.units, minutes=args.minutes, hz=args.hz, end=end)
        seeded_s = time.perf_counter() - began
        port = free_port()
        env = dict(os.environ, WATCHFLOOR_DATABASE_URL=db_url, WATCHFLOOR_MQTT_URL=broker.url,
                   WATCHFLOOR_AUTH_SECRET=SECRET, WATCHFLOOR_AUDIT_KEY=SECRET, WATCHFLOOR_TIMESCALEDB=timescaledb,
                   WATCHFLOOR_RATE_LIMIT_USER_PER_S="1000", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        log = (broker.workdir.parent / "processes.log").open("ab")
        procs.append(subprocess.Popen([sys.executable, "-m", "watchfloor", "api", "--port", str(port)], env=env,
                                      stdout=log, stderr=log))
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        session = httpx.post(f"{base}/api/v1/auth/token", json={"username": "bench", "password": PASSWORD}).json()
        http = _http_runs(base, session["access_token"], start=start, end=end, runs=args.runs)
        session.update(username="bench", expires_at=(time.time() + 3600) * 1000)
        browser = _browser_runs(base, session, start=start, end=end, runs=args.runs)
        return {"rows": rows, "seeded_s": seeded_s, "http": http, "browser": browser}
    finally:
        stop_processes(procs)
        stack.__exit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=500)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--hz", type=float, default=1.0, help="fixes per second per unit")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--paths", default="plain,timescale", help="storage paths, comma-separated")
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    require_chromium()
    load_before = os.getloadavg()[0]
    results = {path: _path(args, path) for path in args.paths.split(",")}
    print()
    print(f"Replay of {args.minutes} min x {args.units} units x {args.hz:g} Hz in a 4.5 km box, headless Chromium"
          f" 1600x900; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; median of {args.runs}")
    print()
    print("| storage | fixes stored | first frame drawn (ms, Chromium) | units drawn | first slice decoded (ms, HTTP)"
          " | plan (ms) | units in plan | 12 h track, one unit (ms) | track points |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path, r in results.items():
        if isinstance(r, str):
            print(f"| {path} | {r} | | | | | | | |")
            continue
        http, browser = r["http"], r["browser"]

        def med(rows: list[dict[str, float]], key: str) -> float:
            return statistics.median(row[key] for row in rows)

        print(f"| {path} | {r['rows']:,} | {med(browser, 'drawn_ms'):.0f} | {med(browser, 'drawn_units'):.0f}"
              f" | {med(http, 'first_ms'):.0f} | {med(http, 'plan_ms'):.0f} | {med(http, 'plan_units'):.0f}"
              f" | {med(http, 'track_ms'):.0f} | {med(http, 'track_points'):.0f} |")


if __name__ == "__main__":
    main()
