"""Replay and disclosure export through the real broker, ingest, API and PostgreSQL: an
incident's replay names every unit in its area (and no unit outside the caller's areas), its
frames carry each unit once per slice, attributed to whoever carried the camera then (across a
swap at the dock), its timeline attributes each entry the same way; the export is a zip whose
manifest hashes every file and carries the audit chain's head at export time, its CSV cells are
neutralised, and both are audited and refused to the wrong roles."""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from api.routes.live_view import EXPORT_COLUMNS
from core.contract import Channel, Telemetry, topic_for
from services.accounts import Role, add_user
from services.registry import DeviceRecord, upsert_devices
from telemetry import replay
from telemetry.schema import ensure_partitions, features
from telemetry.store import Batch, prepare_connection, write_batch
from tests.helpers.api import PASSWORD, ApiWithIngest, add_test_users, client, running_api
from tests.helpers.db import Database, _database
from tests.helpers.telemetry import event_payload, make_settings, running_worker, telemetry_payload
from watchfloor.mosquitto import MosquittoProcess

# Recent enough to fall in an incident opened now (its replay starts 10 minutes before):
# six minutes before each test starts (_recent_t0), not before the module was imported, which
# in a whole suite is longer ago than that.
T0 = datetime.now(timezone.utc)


@pytest.fixture(autouse=True)
def _recent_t0() -> None:
    global T0
    T0 = (datetime.now(timezone.utc) - timedelta(minutes=6)).replace(microsecond=0)
LAT, LON = 51.5, -0.13
SWAP_S = 120  # sw-1 docks at 115 s (Ada) and leaves at 120 s (Ben)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _fixes(device_id: str, first_seq: int, seconds: range, *, lat: float = LAT) -> list[tuple[str, bytes]]:
    return [(topic_for(device_id, Channel.TELEMETRY),
             telemetry_payload(first_seq + i, ts=_at(s), lat=lat + s / 1e6, lon=LON, recording="recording"))
            for i, s in enumerate(seconds)]


def _event(device_id: str, seq: int, kind: str, seconds: float, **details: Any) -> tuple[str, bytes]:
    return topic_for(device_id, Channel.EVENTS), event_payload(seq, kind, ts=_at(seconds), **details)


@pytest.fixture
def stack(pg: Database, mosquitto: MosquittoProcess) -> Iterator[ApiWithIngest]:
    """sw-1 (Westminster) is carried by Ada, docked, and taken by Ben; ca-9 (Camden) patrols
    the same street; far-1 (Westminster) is 5 km away. An alert and a viewing of sw-1 whose
    free text would be a spreadsheet formula."""
    with pg.connect() as conn:
        add_test_users(conn)
        upsert_devices(conn, [DeviceRecord("sw-1", "WE01", None, "Westminster", "response"),
                              DeviceRecord("ca-9", "CA09", None, "Camden", "response"),
                              DeviceRecord("far-1", "WE99", None, "Westminster", "response")])
    settings = make_settings()
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as worker, \
            running_api(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as server:
        stack = ApiWithIngest(server.base, mosquitto.url, pg, worker)
        stack.publish([_event("sw-1", 1, "undocked", 0, officer="PC Ada", callsign="WE01"),
                       _event("sw-1", 2, "recording_started", 5),
                       _event("sw-1", 40, "docked", SWAP_S - 5),
                       _event("sw-1", 41, "undocked", SWAP_S, officer="PC Ben", callsign="WE07")])
        stack.publish(_fixes("sw-1", 3, range(10, SWAP_S - 10, 10)) + _fixes("sw-1", 42, range(SWAP_S + 10, 240, 10))
                      + _fixes("ca-9", 1, range(10, 240, 10)) + _fixes("far-1", 1, range(10, 240, 10), lat=LAT + 0.05))
        with pg.connect() as conn:
            conn.execute("INSERT INTO alerts (device_id, kind, severity, status, detail, raised_at, acknowledged_at,"
                         " acknowledged_by, resolved_at, resolved_by, outcome, note) VALUES ('sw-1', 'emergency',"
                         " 'critical', 'resolved', '=HYPERLINK(\"x\")', %s, %s, 'op-all', %s, 'op-all', 'resolved',"
                         " 'officer safe')", (_at(60), _at(70), _at(100)))
            conn.execute("INSERT INTO viewing_sessions (session_id, device_id, viewer, role, reason, started_at,"
                         " ended_at, officer) VALUES ('s-r1', 'sw-1', 'op-all', 'operator', '+cmd', %s, %s,"
                         " 'PC Ben')", (_at(150), _at(180)))
        yield stack


def _incident(stack: ApiWithIngest, lat: float = LAT) -> int:
    with client(stack.base, "afo-cmd") as afo:
        made = afo.post("/api/v1/incidents", json={"title": "replay", "lat": lat, "lon": LON, "radius_m": 500,
                                                   "borough": "Westminster", "grade": "immediate",
                                                   "reference": "CAD 1234"})
        assert made.status_code == 201, made.text
        incident_id = int(made.json()["id"])
        assert afo.post(f"/api/v1/incidents/{incident_id}/close", json={"outcome": "resolved"}).status_code == 200
    return incident_id


def _frames(http: Any, plan: dict[str, Any], step_s: float) -> dict[str, Any]:
    response = http.get("/api/v1/replay/frames", params={"start": _at(0).isoformat(), "end": _at(240).isoformat(),
                                                        "step_s": step_s, "bbox": plan["bbox"]})
    assert response.status_code == 200, response.text
    frames: dict[str, Any] = response.json()
    return frames


def test_an_incident_replays_every_unit_there_attributed_across_a_dock_swap(stack: ApiWithIngest) -> None:
    """The incident's replay lists the units in its area (not far-1), the frames give each
    unit one point per 30 s slice, named for Ada before the swap and Ben after, and the
    timeline's events and viewing are attributed the same way; a Westminster operator sees no
    Camden unit; a fleet manager is refused; every read is audited."""
    incident_id = _incident(stack)
    with client(stack.base, "op-all") as every, client(stack.base, "op-west") as west, \
            client(stack.base, "fleet") as fleet:
        plan = every.get(f"/api/v1/incidents/{incident_id}/replay").json()
        frames = _frames(every, plan, 30)
        west_plan = west.get(f"/api/v1/incidents/{incident_id}/replay").json()
        west_frames = _frames(west, west_plan, 30)
        assert fleet.get(f"/api/v1/incidents/{incident_id}/replay").status_code == 403
        assert fleet.get("/api/v1/replay/frames", params={"start": _at(0).isoformat(), "end": _at(240).isoformat(),
                                                          "borough": "Westminster"}).status_code == 403
        too_many = every.get("/api/v1/replay/frames", params={"start": _at(0).isoformat(),
                                                               "end": _at(4000).isoformat(), "step_s": 1,
                                                               "borough": "Westminster"})
        assert too_many.status_code == 422
    assert [u[0] for u in plan["units"]] == ["ca-9", "sw-1"]
    assert [u[0] for u in west_plan["units"]] == ["sw-1"]
    assert {frames["units"][p[1]][0] for p in frames["points"]} == {"ca-9", "sw-1"}
    assert {west_frames["units"][p[1]][0] for p in west_frames["points"]} == {"sw-1"}
    cols = frames["columns"]
    sw1 = [u[0] for u in frames["units"]].index("sw-1")
    points = [dict(zip(cols, p, strict=True)) for p in frames["points"] if p[1] == sw1]
    slices = [p["slice"] for p in points]
    assert slices == sorted(set(slices))  # one point per unit and slice
    names = [frames["officers"][p["officer"]] for p in points]
    before = [n for p, n in zip(points, names, strict=True) if p["t_ms"] < SWAP_S * 1000]
    after = [n for p, n in zip(points, names, strict=True) if p["t_ms"] > SWAP_S * 1000]
    assert before and after
    assert {tuple(n) for n in before} == {("PC Ada", "WE01")} and {tuple(n) for n in after} == {("PC Ben", "WE07")}
    timeline = [dict(zip(plan["timeline_columns"], r, strict=True)) for r in plan["timeline"]]
    timeline = [e for e in timeline if e["kind"] != "alert" or e["what"] == "emergency"]  # not the engine's own
    assert [(e["kind"], e["what"], e["officer"]) for e in timeline if e["device_id"] == "sw-1"] == [
        ("event", "undocked", "PC Ada"), ("event", "recording_started", "PC Ada"), ("alert", "emergency", "PC Ada"),
        ("event", "docked", "PC Ada"), ("event", "undocked", "PC Ben"), ("viewing", "op-all", "PC Ben")]
    with stack.db.connect() as conn:
        reads = conn.execute("SELECT actor, details->>'read', device_id, details->'boroughs',"
                             " (details->>'shown')::int FROM audit_log WHERE action = 'replay_read'"
                             " ORDER BY seq").fetchall()
    assert reads == [("op-all", "incident", None, {"Camden": ["ca-9"], "Westminster": ["sw-1"]}, None),
                     ("op-all", "frames", None, None, 2),
                     ("op-west", "incident", None, {"Westminster": ["sw-1"]}, None),
                     ("op-west", "frames", None, None, 1)]


def test_a_replay_is_one_audit_entry_each_auditor_reads_for_their_boroughs(stack: ApiWithIngest) -> None:
    """A replay request is one audit entry naming its units by borough, not one per unit: an
    auditor of Westminster finds it and reads only the Westminster unit in it, one of Hackney
    does not find it (an entry about no unit and no borough, a page of frames, is every
    auditor's), and one of every borough reads both units."""
    incident_id = _incident(stack)
    with stack.db.connect() as conn:
        add_user(conn, username="audit-west", password=PASSWORD, role=Role.AUDITOR, areas=["Westminster"])
        add_user(conn, username="audit-hackney", password=PASSWORD, role=Role.AUDITOR, areas=["Hackney"])
    with client(stack.base, "op-all") as operator:
        plan = operator.get(f"/api/v1/incidents/{incident_id}/replay").json()
        _frames(operator, plan, 30)
    with stack.db.connect() as conn:
        written = conn.execute("SELECT count(*) FROM audit_log WHERE action = 'replay_read'").fetchone()
    assert written == (2,)  # the plan and a page of frames, for two units
    reads = {}
    for auditor in ("audit", "audit-west", "audit-hackney"):
        with client(stack.base, auditor) as http:
            page = http.get("/api/v1/audit", params={"action": "replay_read"})
            assert page.status_code == 200, page.text
            reads[auditor] = [(e["details"]["read"], e["details"].get("boroughs")) for e in page.json()["items"]]
    assert reads["audit"] == [("frames", None), ("incident", {"Camden": ["ca-9"], "Westminster": ["sw-1"]})]
    assert reads["audit-west"] == [("frames", None), ("incident", {"Westminster": ["sw-1"]})]
    assert reads["audit-hackney"] == [("frames", None)]


def _csv_rows(archive: zipfile.ZipFile, name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(archive.read(name).decode())))


def test_the_export_is_a_zip_whose_manifest_hashes_its_files_and_the_audit_head(stack: ApiWithIngest) -> None:
    """An auditor exports the incident: the manifest's hashes are the files', its audit head is
    the export's own entry (the latest and only one, naming the same hashes and the units by
    borough), the tracks split sw-1 at the swap into Ada's line and Ben's, the custody windows
    and the alert's and viewing's officers are there, free text that would be a formula is
    quoted, and an operator may not export. An auditor of Westminster reads only sw-1 in the
    export's entry; one of Hackney (no unit there, not the incident's borough) does not find it."""
    incident_id = _incident(stack)
    with client(stack.base, "audit") as auditor, client(stack.base, "op-all") as operator:
        assert operator.get(f"/api/v1/incidents/{incident_id}/export.zip").status_code == 403
        response = auditor.get(f"/api/v1/incidents/{incident_id}/export.zip")
    assert response.status_code == 200, response.text
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    manifest = orjson.loads(archive.read("manifest.json"))
    names = set(archive.namelist()) - {"manifest.json"}
    assert names == {"incident.json", "units.csv", "tracks.geojson", "events.csv", "alerts.csv",
                     "alert_handling.csv", "viewings.csv"} == set(manifest["files"])
    for name in names:
        assert hashlib.sha256(archive.read(name)).hexdigest() == manifest["files"][name]["sha256"]
    with stack.db.connect() as conn:
        head = conn.execute("SELECT seq, encode(hash, 'hex'), action, actor, details FROM audit_log"
                            " ORDER BY seq DESC LIMIT 1").fetchone()
    assert head is not None
    assert manifest["audit_head"] == {"seq": head[0], "hash": head[1]}
    assert head[2:4] == ("export", "audit") and head[4]["incident_id"] == incident_id
    with stack.db.connect() as conn:
        written = conn.execute("SELECT count(*) FROM audit_log WHERE action = 'export'").fetchone()
        add_user(conn, username="audit-west", password=PASSWORD, role=Role.AUDITOR, areas=["Westminster"])
        add_user(conn, username="audit-hackney", password=PASSWORD, role=Role.AUDITOR, areas=["Hackney"])
    assert written == (1,)  # one entry for the export, not one per unit disclosed
    assert head[4]["boroughs"] == {"Camden": ["ca-9"], "Westminster": ["sw-1"]}
    assert head[4]["sha256"] == {n: f["sha256"] for n, f in manifest["files"].items()}
    tracks = orjson.loads(archive.read("tracks.geojson"))["features"]
    sw1 = [(f["properties"]["officer"], f["properties"]["times"][0], f["properties"]["times"][-1])
           for f in tracks if f["properties"]["device_id"] == "sw-1"]
    iso = [_at(s).isoformat().replace("+00:00", "Z") for s in (10, SWAP_S - 20, SWAP_S + 10, 230)]
    assert sw1 == [("PC Ada", iso[0], iso[1]), ("PC Ben", iso[2], iso[3])]
    assert {f["properties"]["device_id"] for f in tracks} == {"sw-1", "ca-9"}
    units = _csv_rows(archive, "units.csv")
    assert [(u["device_id"], u["officer"], u["assigned_to_incident"]) for u in units if u["device_id"] == "sw-1"] == [
        ("sw-1", "PC Ada", "false"), ("sw-1", "PC Ben", "false")]
    alerts = [a for a in _csv_rows(archive, "alerts.csv") if a["kind"] == "emergency"]
    assert [(a["officer"], a["detail"]) for a in alerts] == [("PC Ada", "'=HYPERLINK(\"x\")")]
    handling = _csv_rows(archive, "alert_handling.csv")
    assert [h["action"] for h in handling if h["alert_id"] == alerts[0]["alert_id"]] == [
        "raised", "acknowledged", "resolved"]
    viewing_header = archive.read("viewings.csv").decode().splitlines()[0]
    assert viewing_header == ",".join(EXPORT_COLUMNS)
    assert [(v["officer"], v["reason"]) for v in _csv_rows(archive, "viewings.csv")] == [("PC Ben", "'+cmd")]
    events = _csv_rows(archive, "events.csv")
    assert [(e["type"], e["officer"]) for e in events if e["device_id"] == "sw-1"] == [
        ("undocked", "PC Ada"), ("recording_started", "PC Ada"), ("docked", "PC Ada"), ("undocked", "PC Ben")]
    seen = {}
    for reader in ("audit", "audit-west", "audit-hackney"):
        with client(stack.base, reader) as http:
            page = http.get("/api/v1/audit", params={"action": "export"})
            assert page.status_code == 200, page.text
            seen[reader] = [(e["seq"], e["details"]["boroughs"]) for e in page.json()["items"]]
    assert seen["audit"] == [(head[0], {"Camden": ["ca-9"], "Westminster": ["sw-1"]})]
    assert seen["audit-west"] == [(head[0], {"Westminster": ["sw-1"]})]
    assert seen["audit-hackney"] == []


def test_an_export_of_no_units_is_found_by_the_incidents_borough_auditors(stack: ApiWithIngest) -> None:
    """An incident where no unit was: its export's entry still names the incident's borough
    (with no unit), so an auditor of Westminster finds it and one of Hackney does not."""
    incident_id = _incident(stack, lat=LAT + 1)
    with stack.db.connect() as conn:
        add_user(conn, username="audit-west", password=PASSWORD, role=Role.AUDITOR, areas=["Westminster"])
        add_user(conn, username="audit-hackney", password=PASSWORD, role=Role.AUDITOR, areas=["Hackney"])
    with client(stack.base, "audit") as auditor:
        assert auditor.get(f"/api/v1/incidents/{incident_id}/export.zip").status_code == 200
    seen = {}
    for reader in ("audit-west", "audit-hackney"):
        with client(stack.base, reader) as http:
            page = http.get("/api/v1/audit", params={"action": "export"})
            assert page.status_code == 200, page.text
            seen[reader] = [(e["details"]["incident_id"], e["details"]["boroughs"], e["details"]["units"])
                            for e in page.json()["items"]]
    assert seen == {"audit-west": [(incident_id, {"Westminster": []}, 0)], "audit-hackney": []}


@pytest.fixture(params=["plain", "timescale"])
def storage(request: pytest.FixtureRequest) -> Iterator[Database]:
    """Both storage paths (TimescaleDB skips where the machine has none)."""
    yield from _database(request, request.param)


def test_frames_give_the_latest_fix_per_unit_and_slice_on_both_storage_paths(storage: Database) -> None:
    """The same frames from DISTINCT ON (plain) and time_bucket with last() (TimescaleDB): per
    unit and slice, the slice's latest fix inside the box; a unit outside it is not there."""
    with storage.connect() as conn:
        prepare_connection(conn)
        timescaledb = "timescaledb" in features(conn)
        if not timescaledb:  # hypertables make their own chunks
            ensure_partitions(conn, {_at(0).date(), _at(0).date() + timedelta(days=1)})
        upsert_devices(conn, [DeviceRecord("fr-1", None, None, "Westminster", "response"),
                              DeviceRecord("fr-2", None, None, "Westminster", "response")])
        rows = [("fr-1", s, LAT + s / 1e5) for s in range(0, 60, 7)] + [("fr-2", s, LAT + 1) for s in range(0, 60, 7)]
        with conn.transaction():  # the stage tables empty at each commit
            write_batch(conn, Batch(telemetry=[(d, _at(s), Telemetry.model_validate_json(
                telemetry_payload(i, ts=_at(s), lat=lat, lon=LON))) for i, (d, s, lat) in enumerate(rows)]))
        got = replay.frames(conn, replay.Area((LAT - 0.01, LON - 0.01, LAT + 0.01, LON + 0.01), None),
                            start=_at(0), end=_at(60), step_s=20, timescaledb=timescaledb)
    assert [(r["k"], r["device_id"], r["ts"]) for r in got] == [(0, "fr-1", _at(14)), (1, "fr-1", _at(35)),
                                                                 (2, "fr-1", _at(56))]
