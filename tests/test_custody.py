"""Who carried which camera: custody windows opened and closed by dock events through the real
broker and ingest, in any order and more than once; the migration that keeps today's officer;
history attributed to the officer of the moment; an officer followed across two cameras; the
admin's assignments, audited and refused to other roles (real PostgreSQL, Mosquitto, API)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.contract import Channel, Event, EventType, topic_for
from services.registry import DeviceRecord, update_device, upsert_devices
from telemetry import queries
from telemetry.custody import apply_dock_events, assignments, attribution_join
from telemetry.schema import ensure_partitions, migrate
from telemetry.store import Batch, prepare_connection, write_batch
from tests.helpers.api import ApiWithIngest, LiveReader, add_test_users, client, running_api, token
from tests.helpers.db import Database
from tests.helpers.telemetry import event_payload, make_settings, running_worker, telemetry_payload
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess

T0 = (datetime.now(timezone.utc) - timedelta(hours=3)).replace(microsecond=0)


def _at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _windows(conn: psycopg.Connection, device_id: str) -> list[tuple[str, str | None, datetime, datetime | None]]:
    return [(w["officer"], w["callsign"], w["valid_from"], w["valid_to"])
            for w in assignments(conn, device_id, start=T0 - timedelta(days=1), end=T0 + timedelta(days=1))]


def _undocked(seq: int, minutes: float, officer: str, callsign: str) -> Event:
    return Event(seq=seq, ts=_at(minutes), type=EventType.UNDOCKED, details={"officer": officer, "callsign": callsign})


def _docked(seq: int, minutes: float) -> Event:
    return Event(seq=seq, ts=_at(minutes), type=EventType.DOCKED)


def _shift(ada: str, ben: str) -> tuple[list[Event], list[tuple[str, str | None, datetime, datetime | None]]]:
    """One shift of one camera: Ada has it, docks it; Ben has it, docks it; Ada again, still
    out. The events, and the windows they mean."""
    events = [_undocked(1, 0, ada, "WE01"), _docked(2, 60), _undocked(3, 90, ben, "WE07"), _docked(4, 150),
              _undocked(5, 180, ada, "WE01")]
    return events, [(ada, "WE01", _at(0), _at(60)), (ben, "WE07", _at(90), _at(150)), (ada, "WE01", _at(180), None)]


@pytest.fixture
def conn(pg: Database) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg.url, autocommit=True) as connection:
        prepare_connection(connection)
        with connection.transaction():
            ensure_partitions(connection, {(T0 + timedelta(days=d)).date() for d in (-1, 0, 1)})
        yield connection


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(5)), again=st.lists(st.integers(0, 4), max_size=4), seed=st.integers(0, 2**16))
def test_dock_events_in_any_order_and_twice_give_the_same_windows(conn: psycopg.Connection, order: list[int],
                                                                   again: list[int], seed: int) -> None:
    """Each dock event stored and applied in its own transaction, as ingest does, in any order
    and some of them twice (QoS 1 redelivery, a buffer sent late): the camera's windows are
    always the shift as it happened, and a redelivered event changes nothing."""
    tag = uuid.uuid4().hex[:8]  # officers of their own: an officer carries one camera at a time
    device_id, ada = f"cu-{tag}", f"PC Ada {tag}"
    shift, expected = _shift(ada, f"PC Ben {tag}")
    with conn.transaction():
        upsert_devices(conn, [DeviceRecord(device_id, None, None, "Westminster", "response")])
    deliveries = [shift[i] for i in order]
    rng = random.Random(seed)
    for i in again:
        deliveries.insert(rng.randrange(len(deliveries) + 1), shift[i])
    outcomes = []
    for event in deliveries:
        with conn.transaction():
            write_batch(conn, Batch(events=[(device_id, event.ts, event)]))
            outcomes += list(apply_dock_events(conn, [(device_id, event)]).elements())
    assert _windows(conn, device_id) == expected, (order, again)
    assert conn.execute("SELECT officer, callsign FROM devices WHERE device_id = %s", (device_id,)).fetchone() \
        == (ada, "WE01")  # the registry's officer is the latest window's
    assert outcomes.count("opened") == 3 and "stale" not in outcomes  # a second delivery opened nothing
    assert outcomes.count("opened") >= 3 and "stale" not in outcomes


def test_the_first_dock_after_a_checkout_ends_it_and_an_officer_carries_one_camera(conn: psycopg.Connection) -> None:
    """A second, later dock changes nothing; an earlier one that arrives late shortens the
    window to it. An officer who checks out another camera hands the first one in."""
    with conn.transaction():
        upsert_devices(conn, [DeviceRecord("one-1", None, None, "Westminster", "response"),
                              DeviceRecord("one-2", None, None, "Westminster", "response")])
    for event in (_undocked(1, 0, "PC Cai", "WE03"), _docked(2, 50), _docked(3, 40)):
        with conn.transaction():
            write_batch(conn, Batch(events=[("one-1", event.ts, event)]))
            apply_dock_events(conn, [("one-1", event)])
    assert _windows(conn, "one-1") == [("PC Cai", "WE03", _at(0), _at(40))]
    for device_id, event in (("one-1", _undocked(4, 60, "PC Cai", "WE03")),
                             ("one-2", _undocked(1, 70, "PC Cai", "WE03"))):
        with conn.transaction():
            write_batch(conn, Batch(events=[(device_id, event.ts, event)]))
            apply_dock_events(conn, [(device_id, event)])
    assert _windows(conn, "one-1")[-1] == ("PC Cai", "WE03", _at(60), _at(70))
    assert conn.execute("SELECT closed_by FROM device_assignments WHERE device_id = 'one-1'"
                        " ORDER BY valid_from DESC LIMIT 1").fetchone() == ("device:one-2",)
    assert _windows(conn, "one-2") == [("PC Cai", "WE03", _at(70), None)]


def test_a_refused_checkout_changes_nothing(conn: psycopg.Connection) -> None:
    """A checkout naming an officer who took another camera at that very moment is refused
    (``stale``), and the custody it would have ended stays as it was."""
    with conn.transaction():
        upsert_devices(conn, [DeviceRecord("st-1", None, None, "Westminster", "response"),
                              DeviceRecord("st-2", None, None, "Westminster", "response")])
    for device_id, event in (("st-1", _undocked(1, 0, "PC Jo", "WE08")), ("st-2", _undocked(1, 30, "PC Ivy", "WE09")),
                             ("st-1", _undocked(2, 30, "PC Ivy", "WE09"))):
        with conn.transaction():
            write_batch(conn, Batch(events=[(device_id, event.ts, event)]))
            outcomes = apply_dock_events(conn, [(device_id, event)])
    assert outcomes == {"stale": 1}
    assert _windows(conn, "st-1") == [("PC Jo", "WE08", _at(0), None)]
    assert _windows(conn, "st-2") == [("PC Ivy", "WE09", _at(30), None)]


def test_the_database_refuses_overlapping_windows_and_two_open_for_one_officer(conn: psycopg.Connection) -> None:
    """Whoever writes (a script, a bug): a camera's windows never overlap, and an officer
    never holds two open ones."""
    with conn.transaction():
        upsert_devices(conn, [DeviceRecord("ov-1", None, "PC Dee", "Westminster", "response"),
                              DeviceRecord("ov-2", None, None, "Westminster", "response")])
    insert = ("INSERT INTO device_assignments (device_id, officer, valid_from, valid_to, opened_by)"
              " VALUES (%s, %s, %s, %s, 'test')")
    with pytest.raises(psycopg.errors.ExclusionViolation):
        conn.execute(insert, ("ov-1", "PC Eve", _at(-60), _at(600)))
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(insert, ("ov-2", "PC Dee", _at(0), None))
    conn.execute(insert, ("ov-2", "PC Eve", _at(0), _at(10)))  # apart in time: fine


def test_the_migration_keeps_the_current_officer(pg: Database) -> None:
    """Today's registry becomes open windows: each unretired camera's officer from the
    registry's last change of it; one officer listed on two cameras keeps the most recently
    changed one open; a retired camera and one without an officer get none."""
    with pg.connect() as conn:  # the schema as before migration 14, with today's registry
        conn.execute("DROP TABLE device_assignments; DROP FUNCTION watchfloor_assignments_no_overlap();"
                     " DELETE FROM schema_migrations WHERE version = 14")
        conn.execute("INSERT INTO devices (device_id, callsign, officer, borough, registered_at, retired_at) VALUES"
                     " ('mg-1', 'WE01', 'PC Ada', 'Westminster', %(a)s, NULL),"
                     " ('mg-2', 'WE02', 'PC Ben', 'Westminster', %(a)s, NULL),"
                     " ('mg-3', 'WE03', 'PC Ben', 'Westminster', %(b)s, NULL),"
                     " ('mg-4', 'WE04', 'PC Cai', 'Westminster', %(a)s, %(b)s),"
                     " ('mg-5', 'WE05', NULL, 'Westminster', %(a)s, NULL)", {"a": _at(-600), "b": _at(-300)})
        conn.execute("INSERT INTO audit_log (seq, at, actor, action, device_id, details, prev_hash, hash, keyed)"
                     " VALUES (1, %s, 'admin', 'device_registered', 'mg-1', '{}', '', 'h', false)", (_at(-100),))
    with psycopg.connect(pg.url) as conn:
        migrate(conn, retention=timedelta(days=30), compress_after=timedelta(days=2), timescaledb="off")
    with pg.connect() as conn:
        assert _windows(conn, "mg-1") == [("PC Ada", "WE01", _at(-100), None)]
        assert _windows(conn, "mg-3") == [("PC Ben", "WE03", _at(-300), None)]
        [(officer, _, since, until)] = _windows(conn, "mg-2")
        assert (officer, since) == ("PC Ben", _at(-600)) and until is not None
        assert _windows(conn, "mg-4") == [] and _windows(conn, "mg-5") == []


def test_a_registry_change_of_officer_moves_custody_but_the_same_one_again_does_not(conn: psycopg.Connection) -> None:
    """devices.officer and the windows stay in step: a new officer in the registry ends the
    open window and opens theirs; writing the same officer again (a borough move, a docked
    camera re-registered) changes no window."""
    with conn.transaction():
        upsert_devices(conn, [DeviceRecord("rg-1", "WE01", "PC Ada", "Westminster", "response")])
    with conn.transaction():
        update_device(conn, record=DeviceRecord("rg-1", "WE01", "PC Ada", "Camden", "response"))
    assert [w[0] for w in _windows(conn, "rg-1")] == ["PC Ada"]
    with conn.transaction():
        update_device(conn, record=DeviceRecord("rg-1", "WE09", "PC Fox", "Camden", "response"))
    windows = _windows(conn, "rg-1")
    assert [(w[0], w[1], w[3] is None) for w in windows] == [("PC Ada", "WE01", False), ("PC Fox", "WE09", True)]


def test_alerts_and_viewings_are_attributed_to_the_officer_of_the_moment(conn: psycopg.Connection) -> None:
    """The same range join attributes any row with a unit and a time (here alerts, by when they
    were raised: the building block for replay and export); a viewing keeps the officer
    carrying the unit as it starts, which is what the join says for that moment, and nobody
    while the unit is docked."""
    from services.viewings import start_viewing

    with conn.transaction():
        upsert_devices(conn, [DeviceRecord("at-1", None, None, "Westminster", "response")])
    for event in (_undocked(1, 0, "PC Gil", "WE05"), _docked(2, 30), _undocked(3, 40, "PC Hal", "WE06")):
        with conn.transaction():
            write_batch(conn, Batch(events=[("at-1", event.ts, event)]))
            apply_dock_events(conn, [("at-1", event)])
    for minutes in (10, 35, 50):
        conn.execute("INSERT INTO alerts (device_id, kind, severity, status, detail, raised_at)"
                     " VALUES ('at-1', %s, 'high', 'resolved', 'test', %s)", (f"k{minutes}", _at(minutes)))
    attributed = conn.execute(f"SELECT x.kind, a.officer FROM alerts x"
                              f"{attribution_join(device='x.device_id', at='x.raised_at')}"
                              " WHERE x.device_id = 'at-1' ORDER BY x.raised_at").fetchall()
    assert attributed == [("k10", "PC Gil"), ("k35", None), ("k50", "PC Hal")]
    with conn.transaction():
        viewing = start_viewing(conn, session_id="s-at-1", device_id="at-1", viewer="op-all", role="operator",
                                reason="test", consent_id=None)
    now_officer = conn.execute(f"SELECT a.officer FROM (SELECT 'at-1'::text AS d, %s::timestamptz AS t) x"
                               f"{attribution_join(device='x.d', at='x.t')}", (viewing["started_at"],)).fetchone()
    assert viewing["officer"] == "PC Hal" == (now_officer or [None])[0]


@pytest.fixture
def stack(pg: Database, mosquitto: MosquittoProcess) -> Iterator[ApiWithIngest]:
    with pg.connect() as conn:
        add_test_users(conn)
        upsert_devices(conn, [DeviceRecord("sw-1", None, None, "Westminster", "response"),
                              DeviceRecord("sw-2", None, None, "Westminster", "response"),
                              DeviceRecord("ca-9", None, None, "Camden", "response")])
    settings = make_settings()
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as worker, \
            running_api(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as server:
        yield ApiWithIngest(server.base, mosquitto.url, pg, worker)


def _fixes(device_id: str, first_seq: int, minutes: range) -> list[tuple[str, bytes]]:
    return [(topic_for(device_id, Channel.TELEMETRY),
             telemetry_payload(first_seq + i, ts=_at(m), lat=51.50 + m / 1000, lon=-0.13))
            for i, m in enumerate(minutes)]


def _event(device_id: str, seq: int, kind: str, minutes: float, **details: Any) -> tuple[str, bytes]:
    return topic_for(device_id, Channel.EVENTS), event_payload(seq, kind, ts=_at(minutes), **details)


def test_a_camera_swapped_at_the_dock_attributes_each_half_of_a_track(stack: ApiWithIngest) -> None:
    """Ada checks the camera out, patrols, docks it; Ben checks it out and patrols. Through the
    broker and ingest, with the dock events sent twice and the pair's halves out of order, the
    unit's track and events name Ada for the first half and Ben for the second."""
    undock_ada = _event("sw-1", 1, "undocked", 0, officer="PC Ada", callsign="WE01")
    dock = _event("sw-1", 20, "docked", 19.5)
    undock_ben = _event("sw-1", 21, "undocked", 20, officer="PC Ben", callsign="WE07")
    stack.publish([undock_ben, dock, undock_ben])  # Ben's checkout first, then the dock before it
    stack.publish(_fixes("sw-1", 2, range(1, 19)) + _fixes("sw-1", 22, range(21, 40)))
    stack.publish([undock_ada, dock, undock_ada])  # Ada's checkout last, from the camera's buffer
    with stack.db.connect() as conn:
        assert _windows(conn, "sw-1") == [("PC Ada", "WE01", _at(0), _at(19.5)), ("PC Ben", "WE07", _at(20), None)]
        track = queries.track(conn, "sw-1", start=_at(-1), end=_at(41), max_points=1000)
        events = queries.device_events(conn, "sw-1", start=_at(-1), end=_at(41), limit=100)
    assert len(track) == 37
    assert {p["officer"] for p in track if p["ts"] < _at(19.5)} == {"PC Ada"}
    assert {(p["officer"], p["callsign"]) for p in track if p["ts"] > _at(20)} == {("PC Ben", "WE07")}
    assert [(e["type"], e["officer"]) for e in reversed(events)] == [
        ("undocked", "PC Ada"), ("docked", "PC Ada"), ("undocked", "PC Ben")]
    assert stack.worker.stats.custody["duplicate"] >= 2
    with client(stack.base, "op-all") as http:  # the unit's history over HTTP says the same
        points = http.get("/api/v1/devices/sw-1/track", params={"start": _at(-1).isoformat(),
                                                                 "end": _at(41).isoformat()}).json()
    assert [p["officer"] for p in points] == ["PC Ada"] * 18 + ["PC Ben"] * 19


def _live_alerts(reader: LiveReader) -> list[dict[str, Any]]:
    return [a for f in reader.of_type("alerts") for a in f["alerts"]]


def test_an_alert_names_the_officer_who_carried_the_camera_when_it_was_raised(stack: ApiWithIngest) -> None:
    """Ada presses the emergency button, docks the camera; Ben takes it and its battery runs
    low. Each alert names the officer of its moment, on the live feed and over REST; a fleet
    manager (who sees health, not people) sees the battery alerts without an officer."""
    every = LiveReader(stack.base, token(stack.base, "op-all"))
    fleet_feed = LiveReader(stack.base, token(stack.base, "fleet"))
    try:
        wait_for(lambda: every.of_type("snapshot") and fleet_feed.of_type("snapshot"), what="both snapshots")
        stack.publish([_event("sw-1", 1, "undocked", 0, officer="PC Ada", callsign="WE01"),
                       _event("sw-1", 2, "emergency", 5, trigger="button"),
                       _event("sw-1", 3, "docked", 19.5),
                       _event("sw-1", 4, "undocked", 20, officer="PC Ben", callsign="WE07")])
        stack.publish([(topic_for("sw-1", Channel.TELEMETRY), telemetry_payload(5, battery=8.0))])
        wait_for(lambda: {"emergency", "battery_critical"} <= {a["kind"] for a in _live_alerts(every)},
                 what="the alerts on the operator's feed")
        wait_for(lambda: "battery_critical" in {a["kind"] for a in _live_alerts(fleet_feed)},
                 what="the battery alert on the fleet manager's feed")
        live = {a["kind"]: a.get("officer") for a in _live_alerts(every) if a["status"] == "open"}
        fleet_live = _live_alerts(fleet_feed)
    finally:
        every.close()
        fleet_feed.close()
    assert live["emergency"] == "PC Ada" and live["battery_critical"] == "PC Ben"
    assert fleet_live and all("officer" not in a for a in fleet_live)
    with client(stack.base, "op-all") as operator, client(stack.base, "fleet") as fleet:
        listed = {a["kind"]: a["officer"] for a in operator.get("/api/v1/alerts").json()["items"]}
        fleet_listed = fleet.get("/api/v1/alerts").json()["items"]
        emergency_id = next(a["id"] for a in operator.get("/api/v1/alerts").json()["items"]
                            if a["kind"] == "emergency")
        acknowledged = operator.post(f"/api/v1/alerts/{emergency_id}/acknowledge").json()
    assert listed["emergency"] == "PC Ada" and listed["battery_critical"] == listed["battery_low"] == "PC Ben"
    assert acknowledged["officer"] == "PC Ada"  # still Ada's, though Ben has the camera now
    assert fleet_listed and {a["officer"] for a in fleet_listed} == {None}
    # A feed opened now gets the open alerts in its snapshot: the same rule there.
    late_fleet, late_operator = (LiveReader(stack.base, token(stack.base, name)) for name in ("fleet", "op-all"))
    try:
        wait_for(lambda: late_fleet.of_type("snapshot") and late_operator.of_type("snapshot"), what="both snapshots")
        fleet_snapshot = late_fleet.of_type("snapshot")[0]["alerts"]
        operator_snapshot = late_operator.of_type("snapshot")[0]["alerts"]
    finally:
        late_fleet.close()
        late_operator.close()
    assert fleet_snapshot and all(a.get("officer") is None for a in fleet_snapshot)
    assert {a["kind"]: a["officer"] for a in operator_snapshot}["emergency"] == "PC Ada"


def test_the_officers_track_follows_them_across_two_cameras_and_refuses_out_of_area(stack: ApiWithIngest) -> None:
    """Ada carries sw-1, swaps it at the dock for sw-2, and later carries ca-9 in Camden: her
    track is one line across the two Westminster cameras (and the Camden one for a user of
    every area); a Westminster-only operator gets no Camden point, and nothing at all for an
    officer seen only in Camden. The read is audited."""
    stack.publish([_event("sw-1", 1, "undocked", 0, officer="PC Ada", callsign="WE01"),
                   _event("sw-1", 12, "docked", 10.5),
                   _event("sw-2", 1, "undocked", 11, officer="PC Ada", callsign="WE01"),
                   _event("sw-2", 12, "docked", 21.5),
                   _event("ca-9", 1, "undocked", 22, officer="PC Ada", callsign="CA01"),
                   _event("sw-1", 13, "undocked", 11, officer="PC Ben", callsign="WE07")])
    stack.publish(_fixes("sw-1", 2, range(1, 10)) + _fixes("sw-2", 2, range(12, 21)) + _fixes("ca-9", 2, range(23, 30))
                  + _fixes("sw-1", 14, range(12, 21)))  # Ben's fixes on sw-1 are not Ada's
    span = {"start": _at(-1).isoformat(), "end": _at(31).isoformat()}
    with client(stack.base, "op-all") as every, client(stack.base, "op-west") as west, \
            client(stack.base, "fleet") as fleet:
        everywhere = every.get("/api/v1/officers/PC Ada/track", params=span).json()
        westminster = west.get("/api/v1/officers/PC Ada/track", params=span).json()
        camden_only = west.get("/api/v1/officers/PC Zed/track", params=span)
        stack.publish([_event("ca-9", 40, "undocked", 30, officer="PC Zed", callsign="CA02")])
        zed = west.get("/api/v1/officers/PC Zed/track", params=span)
        refused_role = fleet.get("/api/v1/officers/PC Ada/track", params=span)
    assert [p["device_id"] for p in everywhere] == ["sw-1"] * 9 + ["sw-2"] * 9 + ["ca-9"] * 7
    assert [p["device_id"] for p in westminster] == ["sw-1"] * 9 + ["sw-2"] * 9
    assert {p["callsign"] for p in westminster} == {"WE01"} and {p["officer"] for p in westminster} == {"PC Ada"}
    assert camden_only.status_code == 404 and zed.status_code == 404
    assert refused_role.status_code == 403
    with stack.db.connect() as conn:  # one entry per unit read: an auditor of Camden sees only ca-9's
        reads = conn.execute("SELECT actor, device_id, (details->>'rows')::int FROM audit_log"
                             " WHERE action = 'officer_track_read' AND details->>'officer' = 'PC Ada'"
                             " ORDER BY seq").fetchall()
    assert reads == [("op-all", "ca-9", 7), ("op-all", "sw-1", 9), ("op-all", "sw-2", 9),
                     ("op-west", "sw-1", 9), ("op-west", "sw-2", 9)]


def test_admin_assignments_are_audited_and_refused_to_other_roles(stack: ApiWithIngest) -> None:
    """An admin gives a camera to an officer and takes it back, each on the audit log; an
    operator or a fleet manager may not; an earlier start than the camera's latest window is a
    conflict; the unit's custody history lists both windows."""
    with client(stack.base, "admin") as admin, client(stack.base, "op-all") as operator, \
            client(stack.base, "fleet") as fleet:
        for user in (operator, fleet):
            assert user.post("/api/v1/devices/sw-2/assignments", json={"officer": "PC Kim"}).status_code == 403
            assert user.post("/api/v1/devices/sw-2/assignments/end", json={}).status_code == 403
        opened = admin.post("/api/v1/devices/sw-2/assignments",
                            json={"officer": "PC Kim", "callsign": "WE11", "at": _at(0).isoformat()})
        assert opened.status_code == 201, opened.text
        assert admin.get("/api/v1/devices/sw-2").json()["officer"] == "PC Kim"
        again = admin.post("/api/v1/devices/sw-2/assignments", json={"officer": "PC Kim", "callsign": "WE11",
                                                                     "at": _at(0).isoformat()})
        assert again.status_code == 409
        ended = admin.post("/api/v1/devices/sw-2/assignments/end", json={"at": _at(30).isoformat()})
        assert ended.status_code == 200 and ended.json()["valid_to"] is not None
        assert admin.post("/api/v1/devices/sw-2/assignments/end", json={}).status_code == 409
        lee = admin.post("/api/v1/devices/sw-2/assignments", json={"officer": "PC Lee", "at": _at(45).isoformat()})
        assert lee.status_code == 201
        history = operator.get("/api/v1/devices/sw-2/assignments",
                               params={"start": _at(-60).isoformat(), "end": _at(60).isoformat()}).json()
        assert fleet.get("/api/v1/devices/sw-2/assignments").status_code == 403
    assert [(w["officer"], w["opened_by"], w["closed_by"]) for w in history] == [
        ("PC Kim", "admin", "admin"), ("PC Lee", "admin", None)]
    with stack.db.connect() as conn:
        acts = conn.execute("SELECT action, actor, details->>'officer' FROM audit_log WHERE device_id = 'sw-2'"
                            " AND action IN ('device_assigned', 'device_unassigned') ORDER BY seq").fetchall()
    assert acts == [("device_assigned", "admin", "PC Kim"), ("device_unassigned", "admin", "PC Kim"),
                    ("device_assigned", "admin", "PC Lee")]
