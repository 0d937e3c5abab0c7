"""The control-room API against the real database, broker and ingest: authentication on
every endpoint, role and area filtering, history, alerts, and the live feed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from fastapi import FastAPI

from core.contract import Channel, topic_for
from services.registry import DeviceRecord, upsert_devices
from telemetry import queries
from telemetry.schema import ensure_partitions, features
from tests.helpers.api import ApiWithIngest, LiveReader, StalledClient, add_test_users, client, running_api, token
from tests.helpers.db import Database
from tests.helpers.telemetry import event_payload, make_settings, running_worker, telemetry_payload
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess

DEVICES = [DeviceRecord("we-1", "WE001", "PC Ada", "Westminster", "response"),
           DeviceRecord("we-afo", "WETRJ01", "PC Bo", "Westminster", "firearms"),
           DeviceRecord("ca-1", "CA001", "PC Cy", "Camden", "response")]


@dataclass
class Api(ApiWithIngest):
    app: FastAPI


@pytest.fixture
def api(pg: Database, mosquitto: MosquittoProcess) -> Iterator[Api]:
    with pg.connect() as conn:
        add_test_users(conn)
        upsert_devices(conn, DEVICES)
    settings = make_settings(live_rate_hz=10.0, alert_geofence_dwell_s=0)  # geofence dwell: test_alerts.py
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as worker, \
            running_api(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as server:
        api = Api(server.base, mosquitto.url, pg, worker, server.app)
        api.publish([(topic_for("we-1", Channel.TELEMETRY), telemetry_payload(1, battery=80.0, lat=51.50)),
                     (topic_for("we-afo", Channel.TELEMETRY),
                      telemetry_payload(1, battery=15.0, recording="recording")),
                     (topic_for("ca-1", Channel.TELEMETRY), telemetry_payload(1, battery=60.0, lat=51.54))])
        yield api


def test_health_needs_no_token_and_checks_dependencies(api: Api) -> None:
    assert httpx.get(f"{api.base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api.base}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_routing_refusals_have_the_one_error_shape(api: Api) -> None:
    """No such path and a method the path does not take answer with the hierarchy's codes."""
    missing = httpx.get(f"{api.base}/api/v1/no-such-thing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.patch(f"{api.base}/healthz")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


# Every endpoint's refusal without a valid token, and each role and area against every
# endpoint: tests/test_access_matrix.py.


def test_sign_in_with_a_wrong_password_is_refused(api: Api) -> None:
    response = httpx.post(f"{api.base}/api/v1/auth/token", json={"username": "op-all", "password": "wrong"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "not_authenticated"
    unknown = httpx.post(f"{api.base}/api/v1/auth/token", json={"username": "nobody", "password": "wrong"})
    assert unknown.status_code == 401


def test_devices_are_filtered_by_area_role_and_state(api: Api) -> None:
    with client(api.base, "op-all") as everyone, client(api.base, "op-west") as west:
        page = everyone.get("/api/v1/devices").json()
        assert [d["device_id"] for d in page["items"]] == ["ca-1", "we-1", "we-afo"] and page["total"] == 3
        assert [d["device_id"] for d in west.get("/api/v1/devices").json()["items"]] == ["we-1", "we-afo"]
        assert west.get("/api/v1/devices/ca-1").status_code == 404  # out of area looks like absent
        firearms = everyone.get("/api/v1/devices", params={"role": "firearms"}).json()["items"]
        assert [d["device_id"] for d in firearms] == ["we-afo"]
        recording = everyone.get("/api/v1/devices", params={"state": "recording"}).json()["items"]
        assert [d["device_id"] for d in recording] == ["we-afo"]
        low = everyone.get("/api/v1/devices", params={"low_battery_below": 20}).json()["items"]
        assert [d["device_id"] for d in low] == ["we-afo"]
        found = everyone.get("/api/v1/devices", params={"q": "WETRJ"}).json()["items"]
        assert [d["device_id"] for d in found] == ["we-afo"]
        paged = everyone.get("/api/v1/devices", params={"limit": 2, "offset": 2}).json()
        assert [d["device_id"] for d in paged["items"]] == ["we-afo"] and paged["total"] == 3
        too_big = everyone.get("/api/v1/devices", params={"limit": 5000})
        assert too_big.status_code == 422 and too_big.json()["error"]["code"] == "invalid_request"
        detail = everyone.get("/api/v1/devices/we-1").json()
        assert detail["lat"] == 51.5 and detail["battery_pct"] == 80.0 and detail["state"] == "buffering"


def test_fleet_manager_sees_health_not_positions_and_auditor_sees_no_devices(api: Api) -> None:
    with client(api.base, "fleet") as fleet, client(api.base, "audit") as audit:
        unit = fleet.get("/api/v1/devices/we-1").json()
        assert unit["battery_pct"] == 80.0 and unit["lat"] is None and unit["officer"] is None
        assert fleet.get("/api/v1/devices/we-1/track").status_code == 403
        assert fleet.get("/api/v1/fleet/summary").status_code == 200
        assert audit.get("/api/v1/devices").status_code == 403
        assert audit.get("/api/v1/alerts").status_code == 403


def test_registry_is_for_admins(api: Api) -> None:
    body = {"device_id": "ca-2", "callsign": "CA002", "officer": "PC Di", "borough": "Camden", "role": "response"}
    with client(api.base, "op-all") as op, client(api.base, "admin") as admin:
        assert op.post("/api/v1/devices", json=body).status_code == 403
        created = admin.post("/api/v1/devices", json=body)
        assert created.status_code == 201 and created.json()["callsign"] == "CA002"
        moved = admin.put("/api/v1/devices/ca-2", json={**body, "borough": "Westminster"}).json()
        assert moved["borough"] == "Westminster"
        assert admin.post("/api/v1/devices/ca-2/retire").json()["retired_at"] is not None
        assert "ca-2" not in [d["device_id"] for d in op.get("/api/v1/devices").json()["items"]]
        assert admin.post("/api/v1/devices", json={**body, "device_id": "bad id"}).status_code == 422


def test_twelve_hour_track_is_simplified_in_time_order(api: Api) -> None:
    end = datetime.now(timezone.utc).replace(microsecond=0)
    start = end - timedelta(hours=12)
    with api.db.connect() as conn:
        # Written straight to the table, not through ingest, so the days' partitions (which
        # ingest would create) must exist first: 12 hours back is often yesterday.
        if "native_partitioning" in features(conn):
            ensure_partitions(conn, {start.date(), end.date()})
        conn.execute(
            "INSERT INTO telemetry (device_id, ts, seq, received_at, battery_pct, charging, lat, lon, accuracy_m,"
            " recording, live, viewers) SELECT 'ca-1', %s + make_interval(secs => g * 5), 1000 + g, now(), 50,"
            " false, 51.5 + g * 1e-5, -0.1, 5, 'buffering', false, 0 FROM generate_series(0, 8639) g", (start,))
    with client(api.base, "op-all") as op:
        points = op.get("/api/v1/devices/ca-1/track", params={"start": start.isoformat(), "end": end.isoformat(),
                                                               "max_points": 500}).json()
    assert 400 <= len(points) <= 500
    stamps = [p["ts"] for p in points]
    assert stamps == sorted(stamps)
    with client(api.base, "op-all") as op:
        wide = op.get("/api/v1/devices/ca-1/track", params={"start": (end - timedelta(days=9)).isoformat(),
                                                             "end": end.isoformat()})
    assert wide.status_code == 422


def test_events_and_health_history(api: Api) -> None:
    api.publish([(topic_for("we-1", Channel.EVENTS), event_payload(2, "recording_started", trigger="button"))])
    with client(api.base, "op-all") as op, client(api.base, "fleet") as fleet:
        events = op.get("/api/v1/devices/we-1/events").json()
        assert [(e["type"], e["details"]) for e in events] == [("recording_started", {"trigger": "button"})]
        health = fleet.get("/api/v1/devices/we-1/health").json()
        assert health and health[-1]["battery_min"] == 80.0 and health[-1]["samples"] == 1


def test_fleet_summary_counts(api: Api) -> None:
    with client(api.base, "op-all") as op, client(api.base, "op-west") as west:
        summary = op.get("/api/v1/fleet/summary").json()
        assert summary["total"] == 3
        assert summary["by_state"] == {"buffering": 2, "recording": 1}
        assert summary["by_borough"] == {"Camden": 1, "Westminster": 2}
        assert summary["by_role"] == {"firearms": 1, "response": 2}
        assert summary["low_battery"] == 1 and summary["not_seen"] == []
        assert west.get("/api/v1/fleet/summary").json()["total"] == 2


def test_alert_lifecycle_through_the_api(api: Api) -> None:
    """open -> acknowledged (by whom) -> resolved (how, by whom); wrong steps are refused."""
    with client(api.base, "op-all") as op, client(api.base, "fleet") as fleet:
        alerts = op.get("/api/v1/alerts", params={"status": "open"}).json()["items"]
        low = next(a for a in alerts if a["kind"] == "battery_low" and a["device_id"] == "we-afo")
        assert low["borough"] == "Westminster" and low["callsign"] == "WETRJ01"
        assert fleet.post(f"/api/v1/alerts/{low['id']}/acknowledge").status_code == 403
        acked = op.post(f"/api/v1/alerts/{low['id']}/acknowledge").json()
        assert acked["status"] == "acknowledged" and acked["acknowledged_by"] == "op-all"
        assert op.post(f"/api/v1/alerts/{low['id']}/acknowledge").status_code == 409
        bad = op.post(f"/api/v1/alerts/{low['id']}/resolve", json={"outcome": "maybe"})
        assert bad.status_code == 422
        done = op.post(f"/api/v1/alerts/{low['id']}/resolve", json={"outcome": "false_alarm", "note": "spare"})
        assert done.json()["status"] == "resolved" and done.json()["outcome"] == "false_alarm"
        assert op.post(f"/api/v1/alerts/{low['id']}/resolve", json={"outcome": "resolved"}).status_code == 409
        assert op.post("/api/v1/alerts/999999/acknowledge").status_code == 404
        # A fleet manager sees health alerts only.
        kinds = {a["kind"] for a in fleet.get("/api/v1/alerts").json()["items"]}
        assert kinds <= {"battery_low", "battery_critical", "storage_full", "offline"}
        assert fleet.get("/api/v1/alerts", params={"kind": "recording"}).status_code == 403


def test_live_feed_snapshot_then_deltas_and_alerts(api: Api) -> None:
    """After auth: a snapshot of every visible unit with open alerts, then deltas and alerts."""
    west = LiveReader(api.base, token(api.base, "op-west"))
    try:
        wait_for(lambda: west.of_type("snapshot"), what="snapshot")
        snapshot = west.of_type("snapshot")[0]
        assert sorted(u["device_id"] for u in snapshot["units"]) == ["we-1", "we-afo"]
        assert {a["kind"] for a in snapshot["alerts"]} == {"battery_low"}
        api.publish([(topic_for("we-1", Channel.TELEMETRY), telemetry_payload(2, battery=70.0)),
                     (topic_for("ca-1", Channel.TELEMETRY), telemetry_payload(2, battery=50.0)),
                     (topic_for("we-1", Channel.EVENTS), event_payload(3, "emergency"))])
        wait_for(lambda: (west.latest_unit("we-1") or {}).get("battery_pct") == 70.0, what="delta")
        wait_for(lambda: any(a["kind"] == "emergency" for f in west.of_type("alerts") for a in f["alerts"]),
                 what="alert")
        # A sentinel after ca-1's report: once west has it, ca-1's would have come before it.
        api.publish([(topic_for("we-1", Channel.TELEMETRY), telemetry_payload(3, battery=70.0, lat=51.53))])
        wait_for(lambda: (west.latest_unit("we-1") or {}).get("lat") == 51.53, what="the sentinel report")
        assert all(u["device_id"] != "ca-1" for f in west.of_type("delta") for u in f["units"])
    finally:
        west.close()
    again = LiveReader(api.base, token(api.base, "op-west"))
    try:
        wait_for(lambda: again.of_type("snapshot"), what="a fresh snapshot")
        unit = next(u for u in again.of_type("snapshot")[0]["units"] if u["device_id"] == "we-1")
        assert unit["battery_pct"] == 70.0
    finally:
        again.close()


def test_live_feed_deltas_carry_only_changed_fields(api: Api) -> None:
    """A unit that moved is sent its id, position and times; its battery and recording state,
    unchanged, are not repeated; a later change of recording state is sent on its own."""
    reader = LiveReader(api.base, token(api.base, "op-all"))
    try:
        wait_for(lambda: reader.of_type("snapshot"), what="snapshot")
        api.publish([(topic_for("we-1", Channel.TELEMETRY), telemetry_payload(40, battery=61.0, lat=51.51))])
        wait_for(lambda: (reader.latest_unit("we-1") or {}).get("lat") == 51.51, what="the first state")
        frames = len(reader.frames)
        api.publish([(topic_for("we-1", Channel.TELEMETRY), telemetry_payload(41, battery=61.0, lat=51.52))])
        wait_for(lambda: (reader.latest_unit("we-1") or {}).get("lat") == 51.52, what="the move")
        moved = [u for f in reader.frames[frames:] if f["type"] == "delta" for u in f["units"]
                 if u["device_id"] == "we-1"]
        assert len(moved) == 1
        assert {"lat", "ts", "received_at", "last_fix_at"} <= moved[0].keys()
        assert not moved[0].keys() & {"battery_pct", "recording", "lon", "borough", "callsign", "online"}
        api.publish([(topic_for("we-1", Channel.TELEMETRY),
                      telemetry_payload(42, battery=61.0, lat=51.52, recording="recording"))])
        wait_for(lambda: (reader.latest_unit("we-1") or {}).get("recording") == "recording", what="recording")
        held = reader.latest_unit("we-1") or {}
        assert (held["lat"], held["lon"], held["battery_pct"], held["borough"]) == (51.52, -0.12, 61.0, "Westminster")
    finally:
        reader.close()


def _move(api: Api, device_id: str, callsign: str, officer: str, borough: str) -> None:
    with client(api.base, "admin") as admin:
        body = {"device_id": device_id, "callsign": callsign, "officer": officer, "borough": borough,
                "role": "response"}
        assert admin.put(f"/api/v1/devices/{device_id}", json=body).status_code == 200


def test_a_unit_moved_into_an_area_reaches_its_clients_whole(api: Api) -> None:
    """A unit moved to another borough by an admin (the API announces the change and
    re-reads the registry at once, not at its 30 s refresh) is new to the clients of that
    area: they get all of it, not only the changed borough."""
    west = LiveReader(api.base, token(api.base, "op-west"))
    try:
        wait_for(lambda: west.of_type("snapshot"), what="snapshot")
        assert west.latest_unit("ca-1") is None
        _move(api, "ca-1", "CA001", "PC Cy", "Westminster")
        wait_for(lambda: west.latest_unit("ca-1") is not None, timeout=10, what="the moved unit")
        unit = west.latest_unit("ca-1") or {}
        held = (unit["borough"], unit["callsign"], unit["battery_pct"], unit["lat"])
        assert held == ("Westminster", "CA001", 60.0, 51.54)
    finally:
        west.close()


def test_units_moved_out_of_an_area_or_retired_leave_its_clients(api: Api) -> None:
    """A unit moved out of a client's area is removed from that client's picture (it keeps
    it in an all-London one); a retired unit leaves every picture, and what it still sends
    is not shown."""
    west = LiveReader(api.base, token(api.base, "op-west"))
    everyone = LiveReader(api.base, token(api.base, "op-all"))
    try:
        wait_for(lambda: west.of_type("snapshot") and everyone.of_type("snapshot"), what="snapshots")
        assert west.latest_unit("we-1") is not None
        _move(api, "we-1", "WE001", "PC Ada", "Camden")
        wait_for(lambda: west.latest_unit("we-1") is None, timeout=10, what="we-1 to leave Westminster's picture")
        wait_for(lambda: (everyone.latest_unit("we-1") or {}).get("borough") == "Camden", what="the move")
        with client(api.base, "admin") as admin:
            assert admin.post("/api/v1/devices/we-afo/retire").status_code == 200
        wait_for(lambda: west.latest_unit("we-afo") is None and everyone.latest_unit("we-afo") is None,
                 timeout=10, what="the retired unit to leave every picture")
        api.publish([(topic_for("we-afo", Channel.TELEMETRY), telemetry_payload(50, battery=44.0))])
        # A sentinel after the retired unit's report: once it is here, that one would be too.
        api.publish([(topic_for("we-1", Channel.TELEMETRY), telemetry_payload(60, lat=51.54))])
        wait_for(lambda: (everyone.latest_unit("we-1") or {}).get("lat") == 51.54, what="the sentinel report")
        assert everyone.latest_unit("we-afo") is None
    finally:
        west.close()
        everyone.close()
    again = LiveReader(api.base, token(api.base, "op-all"))
    try:
        wait_for(lambda: again.of_type("snapshot"), what="a fresh snapshot")
        assert "we-afo" not in {u["device_id"] for u in again.of_type("snapshot")[0]["units"]}
    finally:
        again.close()


def test_live_feed_refuses_without_auth_and_for_auditors(api: Api) -> None:
    """No auth message or a role not on the feed: 1008; a token that is not valid: 4401 (the
    client signs in again)."""
    for bearer, code in ((None, 1008), ("garbage", 4401), (token(api.base, "audit"), 1008)):
        reader = LiveReader(api.base, bearer)
        try:
            wait_for(lambda: reader.closed is not None, timeout=10, what="the server to close")
            assert reader.closed is not None and reader.closed[0] == code
            assert not reader.of_type("snapshot")
        finally:
            reader.close()


def test_live_feed_strips_positions_for_fleet_managers(api: Api) -> None:
    fleet = LiveReader(api.base, token(api.base, "fleet"))
    try:
        wait_for(lambda: fleet.of_type("snapshot"), what="snapshot")
        units = fleet.of_type("snapshot")[0]["units"]
        assert units and all("lat" not in u and "officer" not in u for u in units)
    finally:
        fleet.close()


def test_live_feed_conflates_to_the_latest_state(api: Api) -> None:
    """Fifty reports of one unit within a tick reach the client as few deltas, ending on the last."""
    reader = LiveReader(api.base, token(api.base, "op-all"))
    try:
        wait_for(lambda: reader.of_type("snapshot"), what="snapshot")
        api.publish([(topic_for("we-1", Channel.TELEMETRY), telemetry_payload(10 + i, battery=float(90 - i)))
                     for i in range(50)])
        wait_for(lambda: (reader.latest_unit("we-1") or {}).get("battery_pct") == 41.0, what="the last state")
        deltas = [f for f in reader.of_type("delta") if any(u["device_id"] == "we-1" for u in f["units"])]
        assert len(deltas) < 25
    finally:
        reader.close()


def test_a_stalled_client_does_not_delay_a_healthy_one(api: Api) -> None:
    """A client that stops reading is left behind (conflated); the healthy one keeps pace."""
    stalled = StalledClient(api.base, token(api.base, "op-all"))
    healthy = LiveReader(api.base, token(api.base, "op-all"))
    try:
        wait_for(lambda: healthy.of_type("snapshot"), what="snapshot")
        wait_for(lambda: api.app.state.hub.client_count == 2, what="both registered")
        # Enough bytes (about 12 MB) to fill the kernel's buffers towards the stalled client.
        many = [DeviceRecord(f"bulk-{i:04d}", None, None, "Camden", "response") for i in range(1500)]
        with api.db.connect() as conn:
            upsert_devices(conn, many)
            api.app.state.hub.load(queries.units_snapshot(conn))
        lags = []
        for round_ in range(1, 21):
            sent = time.time()
            api.publish([(topic_for(d.device_id, Channel.TELEMETRY), telemetry_payload(round_, battery=float(round_)))
                         for d in many])
            wait_for(lambda: (healthy.latest_unit("bulk-1499") or {}).get("battery_pct") == float(round_),
                     timeout=10, what=f"the healthy client to see round {round_}")
            lags.append(time.time() - sent)
        slow, fast = sorted(api.app.state.hub._clients, key=lambda c: c.sent_frames)
        assert slow.sent_frames < fast.sent_frames
        assert slow.conflated_units > 0  # the stalled one was left behind, its deltas conflated
        assert max(lags) < 3.0
    finally:
        stalled.close()
        healthy.close()


def test_openapi_documents_every_route(api: Api) -> None:
    spec = httpx.get(f"{api.base}/openapi.json").json()
    assert {"/api/v1/devices", "/api/v1/devices/{device_id}/track", "/api/v1/alerts/{alert_id}/resolve",
            "/api/v1/fleet/summary", "/api/v1/auth/token", "/healthz", "/readyz"} <= set(spec["paths"])
    assert httpx.get(f"{api.base}/docs").status_code == 200


def test_incident_units_geofence_and_unrecorded_firearms(api: Api) -> None:
    """An incident lists its assigned units with position, battery and recording; an assigned
    firearms unit that stops recording raises a high alert; a unit entering the area raises
    a geofence alert, resolved when it leaves. The incident has no borough (its creator
    covers every one), so its geofence is every borough's: a Camden unit enters it."""
    def open_alerts(op: httpx.Client, kind: str) -> list[dict[str, object]]:
        return [a for a in op.get("/api/v1/alerts", params={"kind": kind}).json()["items"]
                if a["status"] != "resolved"]

    with client(api.base, "afo-cmd") as cmd, client(api.base, "fleet") as fleet:
        body = {"title": "Firearms deployment", "lat": 51.5, "lon": -0.12, "radius_m": 300, "borough": None}
        assert fleet.post("/api/v1/incidents", json=body).status_code == 403
        incident = cmd.post("/api/v1/incidents", json=body).json()
        detail = cmd.post(f"/api/v1/incidents/{incident['id']}/units", json={"device_ids": ["we-afo", "we-1"]}).json()
        units = {u["device_id"]: u for u in detail["units"]}
        assert units["we-afo"]["recording"] == "recording" and units["we-afo"]["not_recording"] is False
        assert units["we-afo"]["battery_pct"] == 15.0 and units["we-1"]["lat"] == 51.5
        assert open_alerts(cmd, "assigned_not_recording") == []

        api.publish([(topic_for("we-afo", Channel.TELEMETRY), telemetry_payload(5, battery=14.0))])
        wait_for(lambda: [a["device_id"] for a in open_alerts(cmd, "assigned_not_recording")] == ["we-afo"],
                 what="the not-recording alert")
        assert cmd.get(f"/api/v1/incidents/{incident['id']}").json()["units"][1]["not_recording"] is True

        api.publish([(topic_for("ca-1", Channel.TELEMETRY), telemetry_payload(5, lat=51.501, lon=-0.12))])
        wait_for(lambda: "ca-1" in [a["device_id"] for a in open_alerts(cmd, "geofence")], what="geofence entered")
        api.publish([(topic_for("ca-1", Channel.TELEMETRY), telemetry_payload(6, lat=51.54, lon=-0.12))])
        wait_for(lambda: "ca-1" not in [a["device_id"] for a in open_alerts(cmd, "geofence")], what="geofence left")
        assert {a["device_id"] for a in open_alerts(cmd, "geofence")} == {"we-afo", "we-1"}  # inside the area

        cmd.post(f"/api/v1/incidents/{incident['id']}/close", json={"outcome": "resolved"})
        wait_for(lambda: open_alerts(cmd, "assigned_not_recording") == [], what="cleared on close")
        assert cmd.get("/api/v1/incidents").json() == []
