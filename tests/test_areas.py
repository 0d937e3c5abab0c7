"""Least privilege by area, through the real API on the real database: a caller limited to
Westminster can neither read nor change anything of Camden's, whether the route is a list,
a detail, a registry write, an incident or a geofence alert; and an area is one of the
force's, never free text."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from services.accounts import Role, add_user
from services.registry import DeviceRecord, upsert_devices
from tests.helpers.api import PASSWORD, api_on_machine, client
from tests.helpers.db import Database
from tests.helpers.telemetry import make_settings

USERS: dict[str, tuple[Role, list[str]]] = {
    "admin-west": (Role.ADMIN, ["Westminster"]),
    "op-west": (Role.OPERATOR, ["Westminster"]),
    "afo-west": (Role.FIREARMS_COMMANDER, ["Westminster"]),
    "audit-west": (Role.AUDITOR, ["Westminster"]),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Database, str]]:
    def seed(conn: psycopg.Connection) -> None:
        for name, (role, areas) in USERS.items():
            add_user(conn, username=name, password=PASSWORD, role=role, areas=areas)

    settings = make_settings(rate_limit_user_per_s=10_000.0, rate_limit_user_burst=100_000)
    with api_on_machine(tmp_path_factory, settings=settings, seed=seed) as (db, server):
        yield db, server.base


def _register(db: Database, *records: DeviceRecord) -> None:
    with db.connect() as conn:
        upsert_devices(conn, records)


def _row(db: Database, query: str, params: tuple[Any, ...]) -> Any:
    with db.connect() as conn:
        return conn.execute(query, params).fetchone()


def _body(device_id: str, borough: str, officer: str = "PC Moved") -> dict[str, Any]:
    return {"device_id": device_id, "callsign": "ZZ9", "officer": officer, "borough": borough, "role": "response"}


def test_a_westminster_admin_cannot_take_a_camden_device(world: tuple[Database, str]) -> None:
    """POST with a Camden device's id no longer moves it into Westminster (409: the id is
    taken, nothing written); PUT on it is a 404, as is a move of one's own device to Camden;
    nothing of the Camden device changes."""
    db, base = world
    _register(db, DeviceRecord("ar-ca-1", "CA1", "PC Camden", "Camden", "response"),
              DeviceRecord("ar-we-1", "WE1", "PC West", "Westminster", "response"))
    with client(base, "admin-west") as admin:
        assert admin.post("/api/v1/devices", json=_body("ar-ca-1", "Westminster")).status_code == 409
        assert admin.put("/api/v1/devices/ar-ca-1", json=_body("ar-ca-1", "Westminster")).status_code == 404
        assert admin.put("/api/v1/devices/ar-we-1", json=_body("ar-we-1", "Camden")).status_code == 404
        assert admin.post("/api/v1/devices", json=_body("ar-new-1", "Camden")).status_code == 404
        assert admin.get("/api/v1/devices/ar-ca-1").status_code == 404
    assert _row(db, "SELECT borough, officer FROM devices WHERE device_id = 'ar-ca-1'", ()) == ("Camden", "PC Camden")
    assert _row(db, "SELECT borough FROM devices WHERE device_id = 'ar-we-1'", ()) == ("Westminster",)
    assert _row(db, "SELECT count(*) FROM devices WHERE device_id = 'ar-new-1'", ()) == (0,)


def test_registering_or_updating_never_unretires(world: tuple[Database, str]) -> None:
    """A retired device stays retired through POST (409) and PUT; only POST .../reactivate
    brings it back, for an admin whose area covers it, and that act is in the audit log."""
    db, base = world
    _register(db, DeviceRecord("ar-we-ret", "WE2", "PC Gone", "Westminster", "response"),
              DeviceRecord("ar-ca-ret", "CA2", "PC Gone", "Camden", "response"))
    with db.connect() as conn:
        conn.execute("UPDATE devices SET retired_at = now() WHERE device_id IN ('ar-we-ret', 'ar-ca-ret')")
    with client(base, "admin-west") as admin:
        assert admin.post("/api/v1/devices", json=_body("ar-we-ret", "Westminster")).status_code == 409
        assert admin.put("/api/v1/devices/ar-we-ret", json=_body("ar-we-ret", "Westminster")).status_code == 200
        assert _row(db, "SELECT retired_at IS NOT NULL FROM devices WHERE device_id = 'ar-we-ret'", ()) == (True,)
        assert admin.post("/api/v1/devices/ar-ca-ret/reactivate").status_code == 404
        back = admin.post("/api/v1/devices/ar-we-ret/reactivate")
        assert back.status_code == 200 and back.json()["retired_at"] is None
        assert admin.post("/api/v1/devices/ar-we-ret/reactivate").status_code == 409  # not retired any more
    assert _row(db, "SELECT retired_at IS NOT NULL FROM devices WHERE device_id = 'ar-ca-ret'", ()) == (True,)
    assert _row(db, "SELECT actor, details->>'borough' FROM audit_log WHERE action = 'device_reactivated'"
                    " AND device_id = 'ar-we-ret'", ()) == ("admin-west", "Westminster")


def test_provisioning_a_retired_device_needs_reactivate(world: tuple[Database, str]) -> None:
    """`watchfloor devices provision` keeps its meaning (register or update, and a new secret),
    but a retired device comes back only with --reactivate, and that is in the audit log."""
    import os
    import subprocess
    import sys

    db, _ = world
    _register(db, DeviceRecord("ar-cli-ret", None, None, "Westminster", "response"))
    with db.connect() as conn:
        conn.execute("UPDATE devices SET retired_at = now() WHERE device_id = 'ar-cli-ret'")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WATCHFLOOR_")},
           "WATCHFLOOR_DATABASE_URL": db.url}

    def provision(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "watchfloor", "devices", "provision", "ar-cli-ret",
                               "--borough", "Westminster", *extra], env=env, capture_output=True, text=True,
                              timeout=60)

    refused = provision()
    assert refused.returncode != 0 and "--reactivate" in refused.stderr
    assert _row(db, "SELECT retired_at IS NOT NULL FROM devices WHERE device_id = 'ar-cli-ret'", ()) == (True,)
    assert provision("--reactivate").returncode == 0
    assert _row(db, "SELECT retired_at IS NULL FROM devices WHERE device_id = 'ar-cli-ret'", ()) == (True,)
    assert _row(db, "SELECT count(*) FROM audit_log WHERE action = 'device_reactivated'"
                    " AND device_id = 'ar-cli-ret'", ()) == (1,)


def _incident_with(db: Database, borough: str, devices: list[str]) -> int:
    with db.connect() as conn:
        row = conn.execute("INSERT INTO incidents (title, lat, lon, radius_m, borough, created_by)"
                           " VALUES ('areas', 51.5, -0.13, 200, %s, 'setup') RETURNING id", (borough,)).fetchone()
        assert row is not None
        for device in devices:
            conn.execute("INSERT INTO incident_units (incident_id, device_id, assigned_by) VALUES (%s, %s, 'setup')",
                         (row[0], device))
        conn.execute("INSERT INTO device_latest (device_id, ts, lat, lon, recording, online)"
                     " SELECT device_id, now(), 51.5, -0.13, 'recording', true FROM unnest(%s::text[]) AS device_id"
                     " ON CONFLICT DO NOTHING", (devices,))
    return int(row[0])


def test_an_incident_shows_out_of_area_units_only_as_a_count(world: tuple[Database, str]) -> None:
    """A Westminster incident with a Camden unit assigned: a Westminster-only operator sees its
    own unit in full and the Camden one only in ``units_outside_area`` (no officer, position or
    recording state), and cannot unassign it (404); a Westminster-only firearms commander, who
    may already watch that unit live (the documented rule), sees it, but cannot unassign it either."""
    db, base = world
    _register(db, DeviceRecord("ar-inc-we", "WE5", "PC West", "Westminster", "response"),
              DeviceRecord("ar-inc-ca", "CA5", "PC Camden Five", "Camden", "firearms"))
    incident = _incident_with(db, "Westminster", ["ar-inc-we", "ar-inc-ca"])
    with client(base, "op-west") as op, client(base, "afo-west") as afo:
        seen = op.get(f"/api/v1/incidents/{incident}")
        assert seen.status_code == 200
        assert [u["device_id"] for u in seen.json()["units"]] == ["ar-inc-we"]
        assert seen.json()["units_outside_area"] == 1
        assert "ar-inc-ca" not in seen.text and "PC Camden Five" not in seen.text and "Camden" not in seen.text
        assert op.delete(f"/api/v1/incidents/{incident}/units/ar-inc-ca").status_code == 404
        commander = afo.get(f"/api/v1/incidents/{incident}").json()
        assert sorted(u["device_id"] for u in commander["units"]) == ["ar-inc-ca", "ar-inc-we"]
        assert commander["units_outside_area"] == 0
        assert afo.delete(f"/api/v1/incidents/{incident}/units/ar-inc-ca").status_code == 404
    assert _row(db, "SELECT count(*) FROM incident_units WHERE incident_id = %s", (incident,)) == (2,)


def test_an_incident_circle_is_bounded_and_alerts_only_its_area(world: tuple[Database, str]) -> None:
    """A Westminster-only operator cannot draw a 50 km incident (422 naming the limit, nothing
    stored); the incident it may draw raises geofence alerts for Westminster's units inside
    its circle only, not for a Camden unit standing next to them."""
    from telemetry.alert_policy_store import load_policy
    from telemetry.alerts import Geofence, evaluate_incidents

    db, base = world
    _register(db, DeviceRecord("ar-geo-we", None, None, "Westminster", "response"),
              DeviceRecord("ar-geo-ca", None, None, "Camden", "response"))
    with db.connect() as conn:
        conn.execute("INSERT INTO device_latest (device_id, ts, lat, lon, gps_fix, recording, online)"
                     " VALUES ('ar-geo-we', now(), 51.6001, -0.2, true, 'recording', true),"
                     " ('ar-geo-ca', now(), 51.6002, -0.2, true, 'recording', true)")
    body = {"title": "areas", "lat": 51.6, "lon": -0.2, "borough": "Westminster"}
    with client(base, "op-west") as op:
        huge = op.post("/api/v1/incidents", json={**body, "radius_m": 50_000})
        assert huge.status_code == 422 and "2000" in huge.json()["error"]["message"]
        assert op.post("/api/v1/incidents", json={**body, "radius_m": 300}).status_code == 201
    with db.connect() as conn:
        assert _row(db, "SELECT count(*) FROM incidents WHERE radius_m > 2000", ()) == (0,)
        evaluate_incidents(conn, ["ar-geo-we", "ar-geo-ca"], load_policy(conn), Geofence(dwell_s=0))
    geofenced = _row(db, "SELECT array_agg(device_id ORDER BY device_id) FROM alerts WHERE kind = 'geofence'"
                         " AND device_id LIKE 'ar-geo-%%'", ())
    assert geofenced == (["ar-geo-we"],)


def _cli(db: Database, *args: str, stdin: str | None = None) -> Any:
    import os
    import subprocess
    import sys

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WATCHFLOOR_")},
           "WATCHFLOOR_DATABASE_URL": db.url}
    return subprocess.run([sys.executable, "-m", "watchfloor", *args], env=env, capture_output=True, text=True,
                          input=stdin, timeout=60)


def test_an_unknown_area_is_refused_everywhere_it_is_written(world: tuple[Database, str]) -> None:
    """"Westminstr" is no borough: registering or moving a device there, an incident there, a
    user with that area (CLI) and provisioning a device there (CLI) are refused with the name,
    and nothing is written."""
    db, base = world
    _register(db, DeviceRecord("ar-typo-1", None, None, "Westminster", "response"))
    with client(base, "admin-west") as admin, client(base, "op-west") as op:
        for response in (admin.post("/api/v1/devices", json=_body("ar-typo-2", "Westminstr")),
                         admin.put("/api/v1/devices/ar-typo-1", json=_body("ar-typo-1", "Westminstr")),
                         op.post("/api/v1/incidents", json={"title": "typo", "lat": 51.5, "lon": -0.13,
                                                            "radius_m": 100, "borough": "Westminstr"})):
            assert response.status_code == 422, response.text
            assert "'Westminstr'" in response.json()["error"]["message"]
    users = _cli(db, "users", "add", "typo-user", "--role", "operator", "--areas", "Camden,Westminstr",
                 stdin="a long enough password\n")
    assert users.returncode != 0 and "'Westminstr'" in users.stderr
    provisioned = _cli(db, "devices", "provision", "ar-typo-3", "--borough", "Westminstr")
    assert provisioned.returncode != 0 and "'Westminstr'" in provisioned.stderr
    assert _row(db, "SELECT count(*) FROM devices WHERE borough = 'Westminstr'", ()) == (0,)
    assert _row(db, "SELECT count(*) FROM incidents WHERE borough = 'Westminstr'", ()) == (0,)
    assert _row(db, "SELECT count(*) FROM users WHERE username = 'typo-user'", ()) == (0,)
    assert _cli(db, "users", "add", "fine-user", "--role", "operator", "--areas", "Camden, City of London",
                stdin="a long enough password\n").returncode == 0


def test_the_force_areas_are_londons_boroughs_and_the_city() -> None:
    """The default list is the 33 names of the borough outlines the map and the simulator use."""
    import json
    from importlib import resources

    from core.areas import LONDON_AREAS

    outlines = json.loads(resources.files("simulator").joinpath("london-boroughs.geojson").read_text())
    assert {f["properties"]["name"] for f in outlines["features"]} == LONDON_AREAS
    assert len(LONDON_AREAS) == 33


def test_bulk_acknowledge_touches_only_the_callers_area(world: tuple[Database, str]) -> None:
    """A Westminster operator's bulk acknowledge, by filter (a kind, a borough) or by a
    selection holding Camden's ids, acknowledges only Westminster's open alerts: Camden's stay
    open. Each call is one audit entry with its count; each alert's history records it; a
    request that chooses nothing is refused."""
    db, base = world
    _register(db, DeviceRecord("bk-we-1", "WB1", "PC West", "Westminster", "response"),
              DeviceRecord("bk-ca-1", "CB1", "PC Camden", "Camden", "response"))

    def alert(device_id: str, kind: str, severity: str) -> int:
        return int(_row(db, "INSERT INTO alerts (device_id, kind, severity, detail) VALUES (%s, %s, %s, 'bulk')"
                        " RETURNING id", (device_id, kind, severity))[0])

    west_sos, camden_sos = alert("bk-we-1", "emergency", "critical"), alert("bk-ca-1", "emergency", "critical")
    west_low, camden_low = alert("bk-we-1", "battery_low", "warning"), alert("bk-ca-1", "battery_low", "warning")
    camden_watch = alert("bk-ca-1", "watch_me", "high")
    with client(base, "op-west") as op:
        assert op.post("/api/v1/alerts/acknowledge", json={}).status_code == 422
        by_kind = op.post("/api/v1/alerts/acknowledge", json={"kind": "emergency"}).json()
        by_ids = op.post("/api/v1/alerts/acknowledge", json={"ids": [camden_low, west_low, camden_watch]}).json()
        by_borough = op.post("/api/v1/alerts/acknowledge", json={"borough": "Camden"}).json()
    assert west_sos in [a["id"] for a in by_kind["items"]]
    assert {a["borough"] for a in by_kind["items"]} == {"Westminster"}
    assert by_kind["count"] == len(by_kind["items"])
    assert (by_ids["count"], [a["id"] for a in by_ids["items"]]) == (1, [west_low])
    assert by_borough == {"count": 0, "items": []}
    statuses = {i: _row(db, "SELECT status FROM alerts WHERE id = %s", (i,))[0]
                for i in (west_sos, camden_sos, west_low, camden_low, camden_watch)}
    assert statuses == {west_sos: "acknowledged", west_low: "acknowledged", camden_sos: "open",
                        camden_low: "open", camden_watch: "open"}
    with db.connect() as conn:
        entries = conn.execute("SELECT actor, device_id, details FROM audit_log WHERE action = 'alerts_acknowledged'"
                               " ORDER BY id").fetchall()
        history = conn.execute("SELECT alert_id, action, actor FROM alert_history WHERE alert_id = ANY(%s)"
                               " ORDER BY alert_id", ([west_sos, camden_sos, west_low, camden_low],)).fetchall()
    assert [(e[0], e[1], e[2]["count"]) for e in entries[-3:]] == [
        ("op-west", None, by_kind["count"]), ("op-west", None, 1), ("op-west", None, 0)]
    assert entries[-2][2]["alert_ids"] == [west_low]
    assert history == [(west_sos, "acknowledged", "op-west"), (west_low, "acknowledged", "op-west")]
