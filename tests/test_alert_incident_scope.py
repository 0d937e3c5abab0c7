"""The incident rules look only at the units of a batch that one statement finds concerned
(near an open incident, present in one, crossing, assigned, or with an open incident alert:
telemetry/alerts.py ``_concerned``) and skip the statements none of them can change. Here a
seeded fleet wanders around a circle and a polygon incident (units assigned, an incident
closed, units moved to another borough on the way), and every batch is evaluated
twice on the real database: by a twin fleet through the rules as they run, and by another
through the rules with nothing skipped (every statement over the whole batch). Both must
raise, clear and record exactly the same things."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import orjson
import pytest

from core.reports import TelemetryReport
from services.registry import DeviceRecord, upsert_devices
from telemetry import alerts, incidents
from telemetry.alert_policy_store import load_policy
from telemetry.alerts import AlertRules, Geofence, evaluate_incidents
from telemetry.ingest_stats import IngestStats
from telemetry.store import Batch
from telemetry.writer import BatchWriter
from tests.helpers.db import Database
from tests.helpers.telemetry import hours_ago, make_settings, telemetry_payload

LAT, LON = 51.5, -0.12
_M_LAT = 1 / 111_320.0
_M_LON = 1 / (111_320.0 * math.cos(math.radians(LAT)))
GEOFENCE = Geofence(margin_m=25, dwell_s=3)
UNITS = [(f"u{i}", "firearms" if i % 2 else "response", "Westminster" if i < 6 else "Camden") for i in range(8)]
TWINS = ("as-run", "unskipped")


def _at(north_m: float, east_m: float) -> tuple[float, float]:
    return LAT + north_m * _M_LAT, LON + east_m * _M_LON


@pytest.fixture
def fleet(pg: Database) -> Iterator[BatchWriter]:
    with pg.connect() as conn:
        upsert_devices(conn, [DeviceRecord(f"{twin}-{unit}", None, None, borough, role)
                              for twin in TWINS for unit, role, borough in UNITS])
    writer = BatchWriter(settings=make_settings(), database_url=pg.url, rules=AlertRules(geofence=GEOFENCE),
                         stats=IngestStats(), stopping=threading.Event(), clock=lambda: datetime.now(timezone.utc))
    writer.open()
    yield writer
    writer.close()


def _walks(steps: int) -> list[list[tuple[float | None, float, float, str]]]:
    """Per step, per unit: (north m or None without a fix, east m, accuracy m, recording),
    a seeded random walk about one of the incidents, with jumps away, 20 m of GPS noise and
    inaccurate fixes."""
    noise = random.Random(17)
    where = [[noise.uniform(-700, 700), noise.uniform(-700, 1100)] for _ in UNITS]
    recording = ["buffering"] * len(UNITS)
    walks = []
    for _ in range(steps):
        step: list[tuple[float | None, float, float, str]] = []
        for i, spot in enumerate(where):
            if noise.random() < 0.01:  # a jump: to the other incident, or far off
                spot[:] = [noise.uniform(-900, 900), noise.uniform(-900, 1300)]
            home = 0.0 if i % 2 == 0 else 900.0  # each unit drifts back to one of the incidents
            spot[0] += -0.1 * spot[0] + noise.gauss(0, 25)
            spot[1] += 0.1 * (home - spot[1]) + noise.gauss(0, 25)
            if noise.random() < 0.1:
                recording[i] = "recording" if recording[i] != "recording" else "buffering"
            roll = noise.random()
            if roll < 0.05:
                step.append((None, 0.0, 0.0, recording[i]))
            else:
                step.append((spot[0] + noise.gauss(0, 20), spot[1] + noise.gauss(0, 20),
                             80.0 if roll > 0.93 else 8.0, recording[i]))
        walks.append(step)
    return walks


def _batch(twin: str, step: int, at: datetime, fixes: list[tuple[float | None, float, float, str]]) -> Batch:
    rows = []
    for (unit, _, _), (north, east, accuracy, recording) in zip(UNITS, fixes, strict=True):
        if north is None:
            payload = orjson.loads(telemetry_payload(step, ts=at, lat=None, recording=recording))
        else:
            lat, lon = _at(north, east)
            payload = orjson.loads(telemetry_payload(step, ts=at, lat=lat, lon=lon, recording=recording))
            payload["gps"]["accuracy_m"] = accuracy
        rows.append((f"{twin}-{unit}", at, msgspec.json.decode(orjson.dumps(payload), type=TelemetryReport)))
    return Batch(telemetry=rows)


def _seen(changes: list[dict[str, Any]], twin: str) -> list[tuple[object, ...]]:
    return sorted((str(a["device_id"]).removeprefix(f"{twin}-"), a["kind"], a["status"], a["severity"],
                   a["detail"]) for a in changes)


def _state(pg: Database, twin: str) -> dict[str, list[tuple[object, ...]]]:
    strip = f"substr(device_id, {len(twin) + 2})"
    with pg.connect() as conn:
        return {
            "presence": conn.execute(f"SELECT incident_id, {strip} FROM incident_presence WHERE device_id LIKE %s"
                                     " ORDER BY 1, 2", (f"{twin}-%",)).fetchall(),
            "pending": conn.execute(f"SELECT incident_id, {strip}, toward, since FROM geofence_pending"
                                    " WHERE device_id LIKE %s ORDER BY 1, 2", (f"{twin}-%",)).fetchall(),
            "alerts": conn.execute(f"SELECT {strip}, kind, severity, status, outcome, detail FROM alerts"
                                   " WHERE device_id LIKE %s ORDER BY id", (f"{twin}-%",)).fetchall(),
        }


def test_skipping_units_and_statements_changes_nothing_the_rules_do(
        pg: Database, fleet: BatchWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    concerned = alerts._concerned

    def unskipped(cur: object, device_ids: list[str], geofence: Geofence) -> alerts._Concern:
        return alerts._Concern(list(device_ids))  # every unit, every statement

    ring = [[lon, lat] for lat, lon in (_at(-200, 700), _at(-200, 1100), _at(0, 1100), _at(0, 900),
                                        _at(200, 900), _at(200, 700), _at(-200, 700))]
    with pg.connect() as conn:
        circle = incidents.create(conn, incidents.NewIncident(title="circle", lat=LAT, lon=LON, radius_m=300,
                                                              borough="Westminster"), by="afo-cmd")["id"]
        centre = _at(0, 900)
        polygon = incidents.create(conn, incidents.NewIncident(
            title="polygon", lat=centre[0], lon=centre[1], radius_m=290, borough=None, polygon=ring),
            by="afo-cmd")["id"]
    start = hours_ago(1)
    raised: dict[str, list[list[tuple[object, ...]]]] = {twin: [] for twin in TWINS}
    for step, fixes in enumerate(_walks(160), start=1):
        at = start + timedelta(seconds=step)
        for twin in TWINS:
            monkeypatch.setattr(alerts, "_concerned", concerned if twin == "as-run" else unskipped)
            raised[twin].append(_seen(fleet.write(_batch(twin, step, at, fixes)), twin))
        if step == 130:  # moved to another borough: out of the circle's area at their next report
            moved = [f"{twin}-{unit}" for twin in TWINS for unit, _, _ in UNITS[:6]]
            with pg.connect() as conn:
                present_before = conn.execute("SELECT count(*) FROM incident_presence WHERE incident_id = %s"
                                              " AND device_id = ANY(%s)", (circle, moved)).fetchone()
                upsert_devices(conn, [DeviceRecord(d, None, None, "Camden", "response") for d in moved])
        if step in (50, 110):  # as the API does after an assignment or a closing: every unit
            with pg.connect() as conn:
                if step == 50:
                    incidents.assign(conn, circle, [f"{twin}-u{i}" for twin in TWINS for i in (1, 3, 7)],
                                     by="afo-cmd")
                else:
                    incidents.close(conn, polygon, outcome="resolved", by="afo-cmd")
                changes = evaluate_incidents(conn, None, load_policy(conn), GEOFENCE)
                conn.commit()
            for twin in TWINS:
                raised[twin].append(_seen([a for a in changes if str(a["device_id"]).startswith(f"{twin}-")], twin))
    monkeypatch.setattr(alerts, "_concerned", concerned)

    assert present_before is not None and present_before[0] > 0, "no moved unit was in the circle"
    assert raised["as-run"] == raised["unskipped"]
    assert _state(pg, "as-run") == _state(pg, "unskipped")
    # The walk does reach what is compared: crossings both ways, and an assigned unit not recording.
    kinds = [(seen[1], seen[2]) for step in raised["as-run"] for seen in step]
    assert kinds.count(("geofence", "open")) >= 2 and ("geofence", "resolved") in kinds
    assert ("assigned_not_recording", "open") in kinds and ("assigned_not_recording", "resolved") in kinds
