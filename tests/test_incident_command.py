"""Incident command through the real API on the real database: an incident drawn as a
polygon (a bad one is a clear 422, nothing stored), with its grade, reference and commander;
"every armed unit within N km" picks exactly the firearms units of the caller's area within
the distance; closing needs an outcome and a firearms commander or admin of the area; closed
incidents are found by time, borough and reference; a commander of another area can neither
see, assign to nor close an incident (the attack), and a polygon's geofence follows its edges,
not its bounding circle."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from services.accounts import Role, add_user
from services.registry import DeviceRecord, upsert_devices
from telemetry.geometry import METRES_PER_DEGREE
from tests.helpers.api import PASSWORD, api_on_machine, client
from tests.helpers.db import Database
from tests.helpers.telemetry import make_settings

LAT, LON = 51.5, -0.13
USERS: dict[str, tuple[Role, list[str]]] = {
    "ic-afo-west": (Role.FIREARMS_COMMANDER, ["Westminster"]),
    "ic-afo-camden": (Role.FIREARMS_COMMANDER, ["Camden"]),
    "ic-op-west": (Role.OPERATOR, ["Westminster"]),
    "ic-admin-west": (Role.ADMIN, ["Westminster"]),
}
# A small square around (LAT, LON): about 139 m east-west and 222 m north-south.
SQUARE = [[-0.131, 51.499], [-0.129, 51.499], [-0.129, 51.501], [-0.131, 51.501], [-0.131, 51.499]]


def _east(metres: float) -> float:
    return LON + metres / (METRES_PER_DEGREE * math.cos(math.radians(LAT)))


# device, borough, role, metres east of (LAT, LON)
UNITS = [("ic-afo-near", "Westminster", "firearms", 500.0), ("ic-afo-edge", "Westminster", "firearms", 1900.0),
         ("ic-afo-far", "Westminster", "firearms", 2600.0), ("ic-resp-near", "Westminster", "response", 300.0),
         ("ic-afo-camden", "Camden", "firearms", 400.0), ("ic-afo-retired", "Westminster", "firearms", 200.0)]

SILENT = ["ic-afo-silent", "ic-afo-status-only"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Database, str]]:
    def seed(conn: psycopg.Connection) -> None:
        for name, (role, areas) in USERS.items():
            add_user(conn, username=name, password=PASSWORD, role=role, areas=areas)
        upsert_devices(conn, [DeviceRecord(d, d.upper(), None, b, r) for d, b, r, _ in UNITS])
        conn.execute("UPDATE devices SET retired_at = now() WHERE device_id = 'ic-afo-retired'")
        for device, _, _, east in UNITS:
            conn.execute("INSERT INTO device_latest (device_id, ts, lat, lon, gps_fix, accuracy_m, recording, online)"
                         " VALUES (%s, now(), %s, %s, true, 5, 'off', true)", (device, LAT, _east(east)))
        # Firearms units with no recording state: one never heard from, one with only its connection status.
        upsert_devices(conn, [DeviceRecord(d, d.upper(), None, "Westminster", "firearms") for d in SILENT])
        conn.execute("INSERT INTO device_latest (device_id, online) VALUES (%s, true)", (SILENT[1],))

    settings = make_settings(rate_limit_user_per_s=10_000.0, rate_limit_user_burst=100_000)
    with api_on_machine(tmp_path_factory, settings=settings, seed=seed) as (db, server):
        yield db, server.base


def _rows(db: Database, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return conn.execute(query, params).fetchall()


def _polygon_incident(base: str, **extra: Any) -> dict[str, Any]:
    body = {"title": "Armed man, Strand", "polygon": SQUARE, "borough": "Westminster", "grade": "immediate",
            "reference": "CAD 4411/06DEC", **extra}
    with client(base, "ic-afo-west") as afo:
        created = afo.post("/api/v1/incidents", json=body)
    assert created.status_code == 201, created.text
    return dict(created.json())


def test_a_polygon_incident_keeps_its_shape_grade_reference_and_commander(world: tuple[Database, str]) -> None:
    """The polygon is stored as drawn, centred on its corners' mean with a bounding radius;
    the commander defaults to the firearms commander who created it; the act is audited."""
    db, base = world
    incident = _polygon_incident(base)
    assert incident["polygon"] == SQUARE and incident["grade"] == "immediate"
    assert incident["reference"] == "CAD 4411/06DEC" and incident["commander"] == "ic-afo-west"
    assert incident["lat"] == pytest.approx(LAT) and incident["lon"] == pytest.approx(LON)
    assert 100 < incident["radius_m"] < 150
    audited = _rows(db, "SELECT details FROM audit_log WHERE action = 'incident_created'"
                        " AND (details->>'incident_id')::bigint = %s", (incident["id"],))
    assert audited[0][0]["polygon"] == SQUARE and audited[0][0]["reference"] == "CAD 4411/06DEC"


@pytest.mark.parametrize(("change", "says"), [
    pytest.param({"polygon": SQUARE[:-1]}, "not closed", id="open-ring"),
    pytest.param({"polygon": [[-0.131, 51.499], [-0.129, 51.501], [-0.129, 51.499], [-0.131, 51.501],
                              [-0.131, 51.499]]}, "intersects itself", id="bow-tie"),
    pytest.param({"polygon": [[-0.2, 51.4], [-0.1, 51.4], [-0.1, 51.5], [-0.2, 51.4]]}, "over the limit",
                 id="too-big"),
    pytest.param({"polygon": SQUARE, "radius_m": 100}, "not both", id="polygon-and-circle"),
    pytest.param({"polygon": None}, "give a circle", id="neither"),
    pytest.param({"commander": "ic-op-west"}, "not a firearms commander", id="commander-not-afo"),
    pytest.param({"commander": "ic-afo-camden"}, "does not cover Westminster", id="commander-other-area"),
])
def test_a_bad_incident_is_a_clear_422_and_stores_nothing(world: tuple[Database, str], change: dict[str, Any],
                                                          says: str) -> None:
    db, base = world
    body = {"title": "bad shape", "polygon": SQUARE, "borough": "Westminster", **change}
    with client(base, "ic-afo-west") as afo:
        refused = afo.post("/api/v1/incidents", json=body)
    assert refused.status_code == 422 and says in refused.json()["error"]["message"], refused.text
    assert _rows(db, "SELECT count(*) FROM incidents WHERE title = 'bad shape'") == [(0,)]


def test_a_polygon_of_too_many_corners_is_refused_by_the_schema(world: tuple[Database, str]) -> None:
    _, base = world
    ring = [[LON + 0.01 * math.cos(k / 20), LAT + 0.01 * math.sin(k / 20)] for k in range(100)]
    with client(base, "ic-afo-west") as afo:
        refused = afo.post("/api/v1/incidents", json={"title": "many", "polygon": [*ring, ring[0]],
                                                      "borough": "Westminster"})
    assert refused.status_code == 422


def test_armed_units_within_n_km_are_exactly_the_firearms_units_of_the_area_within(
        world: tuple[Database, str]) -> None:
    """Within 2 km: the two Westminster firearms units at 0.5 and 1.9 km; not the one at
    2.6 km, not the response unit, not the retired one, not Camden's (outside the caller's
    area though it stands nearest). Each assignment is audited with the distance asked."""
    db, base = world
    incident = _polygon_incident(base)
    with client(base, "ic-afo-west") as afo:
        detail = afo.post(f"/api/v1/incidents/{incident['id']}/units/armed-within", json={"within_km": 2})
        assert detail.status_code == 200, detail.text
        assert [u["device_id"] for u in detail.json()["units"]] == ["ic-afo-edge", "ic-afo-near"]
        assert all(u["not_recording"] for u in detail.json()["units"])
        again = afo.post(f"/api/v1/incidents/{incident['id']}/units/armed-within", json={"within_km": 2})
        assert len(again.json()["units"]) == 2
        assert afo.post(f"/api/v1/incidents/{incident['id']}/units/armed-within",
                        json={"within_km": 0}).status_code == 422
    audited = _rows(db, "SELECT device_id, details->>'within_km' FROM audit_log WHERE action = 'incident_unit_assigned'"
                        " AND (details->>'incident_id')::bigint = %s ORDER BY device_id", (incident["id"],))
    assert audited == [("ic-afo-edge", "2.0"), ("ic-afo-near", "2.0")]


def test_an_assigned_firearms_unit_with_no_report_is_shown_as_no_report_not_as_not_recording(
        world: tuple[Database, str]) -> None:
    """As the assigned-not-recording alert, which waits for a report: a firearms unit that has
    reported no recording state (none at all, or only its connection status) is "no report",
    not "not recording"; one whose report says off is "not recording"."""
    _, base = world
    incident = _polygon_incident(base)
    with client(base, "ic-afo-west") as afo:
        detail = afo.post(f"/api/v1/incidents/{incident['id']}/units", json={"device_ids": [*SILENT, "ic-afo-near"]})
        assert detail.status_code == 200, detail.text
        units = {u["device_id"]: (u["recording"], u["not_recording"], u["no_report"]) for u in detail.json()["units"]}
    assert units == {"ic-afo-silent": (None, False, True), "ic-afo-status-only": (None, False, True),
                     "ic-afo-near": ("off", True, False)}


def test_an_out_of_area_commander_cannot_see_assign_to_or_close_an_incident(world: tuple[Database, str]) -> None:
    """The attack: Camden's firearms commander, holding a Westminster incident's id, tries to
    read it, assign its armed units within 50 km, assign a unit, and close it. Every attempt
    is a 404 (as if it did not exist); nothing changes and no incident act is audited in their name.
    An operator may not close at all (403)."""
    db, base = world
    incident = _polygon_incident(base)
    path = f"/api/v1/incidents/{incident['id']}"
    with client(base, "ic-afo-camden") as camden, client(base, "ic-op-west") as op:
        assert camden.get(path).status_code == 404
        assert camden.post(f"{path}/units/armed-within", json={"within_km": 50}).status_code == 404
        assert camden.post(f"{path}/units", json={"device_ids": ["ic-afo-camden"]}).status_code == 404
        assert camden.post(f"{path}/close", json={"outcome": "stood_down"}).status_code == 404
        assert incident["id"] not in [i["id"] for i in camden.get("/api/v1/incidents").json()]
        assert op.post(f"{path}/close", json={"outcome": "stood_down"}).status_code == 403
    assert _rows(db, "SELECT status, count(u.device_id) FROM incidents i LEFT JOIN incident_units u"
                     " ON u.incident_id = i.id WHERE i.id = %s GROUP BY status", (incident["id"],)) == [("open", 0)]
    assert _rows(db, "SELECT count(*) FROM audit_log WHERE actor = 'ic-afo-camden'"
                     " AND action LIKE 'incident%%'") == [(0,)]


def test_closing_needs_an_outcome_and_closed_incidents_are_searchable(world: tuple[Database, str]) -> None:
    """Closing without an outcome is refused; with one it records the outcome and who closed
    it, once; a closed incident takes no more units. The closed list finds it by reference
    (any case, part of it), by time range and borough, pages, and Camden's commander never
    sees it."""
    db, base = world
    incident = _polygon_incident(base, reference="CAD 9001/CLOSE")
    path = f"/api/v1/incidents/{incident['id']}"
    with client(base, "ic-admin-west") as admin, client(base, "ic-afo-west") as afo, \
            client(base, "ic-afo-camden") as camden:
        assert admin.post(f"{path}/close", json={}).status_code == 422
        assert admin.post(f"{path}/close", json={"outcome": "unknown"}).status_code == 422
        closed = admin.post(f"{path}/close", json={"outcome": "arrest"}).json()
        assert (closed["status"], closed["outcome"], closed["closed_by"]) == ("closed", "arrest", "ic-admin-west")
        again = afo.post(f"{path}/close", json={"outcome": "no_trace"}).json()
        assert again["outcome"] == "arrest"
        assert afo.post(f"{path}/units", json={"device_ids": ["ic-afo-near"]}).status_code == 409

        def found(who: Any, **params: Any) -> list[int]:
            page = who.get("/api/v1/incidents/closed", params=params)
            assert page.status_code == 200, page.text
            return [i["id"] for i in page.json()["items"]]

        now = datetime.now(UTC)
        assert found(afo, reference="9001/close") == [incident["id"]]
        assert found(afo, reference="cad 9001", borough="Westminster",
                     **{"from": (now - timedelta(hours=1)).isoformat(), "to": (now + timedelta(hours=1)).isoformat()}
                     ) == [incident["id"]]
        assert found(afo, reference="9001", **{"to": (now - timedelta(hours=1)).isoformat()}) == []
        assert found(afo, reference="9001", borough="Camden") == []
        assert found(afo, reference="%") == []  # a wildcard is only a character
        assert found(camden, reference="9001") == []
        assert afo.get("/api/v1/incidents/closed", params={"borough": "Westminstr"}).status_code == 422
        assert afo.get("/api/v1/incidents/closed", params={"from": "yesterday"}).status_code == 422
        assert len(found(afo, limit=1)) == 1
    assert _rows(db, "SELECT details->>'outcome' FROM audit_log WHERE action = 'incident_closed'"
                     " AND (details->>'incident_id')::bigint = %s", (incident["id"],)) == [("arrest",)]


def test_a_polygon_geofence_follows_its_edges(world: tuple[Database, str]) -> None:
    """An L-shaped incident: a unit in the L enters its area; one in the missing corner, inside
    the bounding circle but outside the polygon, does not; nor does one inside by less than
    the margin (10 m of 25)."""
    from telemetry.alert_policy_store import load_policy
    from telemetry.alerts import Geofence, evaluate_incidents

    db, base = world
    d = 0.004
    ell = [[LON, LAT + 0.1], [LON + d, LAT + 0.1], [LON + d, LAT + 0.1 + d / 2], [LON + d / 2, LAT + 0.1 + d / 2],
           [LON + d / 2, LAT + 0.1 + d], [LON, LAT + 0.1 + d], [LON, LAT + 0.1]]
    with db.connect() as conn:
        upsert_devices(conn, [DeviceRecord("ic-geo-in", None, None, "Westminster", "response"),
                              DeviceRecord("ic-geo-notch", None, None, "Westminster", "response"),
                              DeviceRecord("ic-geo-edge", None, None, "Westminster", "response")])
        conn.execute("INSERT INTO device_latest (device_id, ts, lat, lon, gps_fix, accuracy_m, recording, online)"
                     " VALUES ('ic-geo-in', now(), %s, %s, true, 5, 'recording', true),"
                     " ('ic-geo-notch', now(), %s, %s, true, 5, 'recording', true),"
                     " ('ic-geo-edge', now(), %s, %s, true, 5, 'recording', true)",
                     (LAT + 0.1 + d / 8, LON + d / 4, LAT + 0.1 + d * 0.8, LON + d * 0.8,
                      LAT + 0.1 + 10 / METRES_PER_DEGREE, LON + d / 4))
    _polygon_incident(base, polygon=ell, reference="CAD L")
    with db.connect() as conn:
        evaluate_incidents(conn, ["ic-geo-in", "ic-geo-notch", "ic-geo-edge"], load_policy(conn),
                           Geofence(margin_m=25, dwell_s=0))
    assert _rows(db, "SELECT device_id FROM incident_presence WHERE device_id LIKE 'ic-geo-%%'") == [("ic-geo-in",)]


def test_the_demo_opens_with_one_incident_in_progress(pg: Database) -> None:
    """The demo's incident: an immediate polygon incident, commanded by the demo's firearms
    commander, with four firearms units assigned (the nearest by where they start, whichever
    borough: a small fleet has one or two in a borough), audited; a second start of the demo
    on the same database opens no second one."""
    from simulator.run import Simulator
    from watchfloor.demo_incident import open_demo_incident
    from watchfloor.running import register_fleet

    sim = Simulator(mqtt_url="mqtt://127.0.0.1:1", devices=80, interval_s=1.0, seed=3)
    register_fleet(pg.url, sim)
    first = open_demo_incident(pg.url, sim, audit_key=None)
    assert first is not None and open_demo_incident(pg.url, sim, audit_key=None) == first
    rows = _rows(pg, "SELECT i.grade, i.commander, jsonb_array_length(i.polygon), d.role"
                     " FROM incidents i JOIN incident_units u ON u.incident_id = i.id JOIN devices d USING (device_id)"
                     " WHERE i.status = 'open'")
    assert len(rows) == 4 and all(r == ("immediate", "firearms", 5, "firearms") for r in rows), rows
    armed = [u for u in sim.units if u.role == "firearms"]
    assert len(armed) > 4 and len({u.borough.name for u in armed}) > 1  # the fleet it chose from
    assert _rows(pg, "SELECT count(*) FROM incidents") == [(1,)]
    assert _rows(pg, "SELECT count(*) FROM audit_log WHERE action = 'incident_unit_assigned'") == [(len(rows),)]
