"""The fleet simulator: repeatable, valid by the contract, plausible over a shift, and able
to drive a broker (and through it, ingest) for real."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from core.contract import Channel, topic_for
from core.reports import EventReport
from services.registry import DeviceRecord, upsert_devices
from simulator.camera import Watching, wearer_display
from simulator.fleet import FleetProfile, build_fleet
from simulator.geo import load_boroughs
from simulator.run import Simulator
from telemetry.decode import Decoded, PayloadLimits, StatusChange, decode
from tests.helpers.db import Database
from tests.helpers.telemetry import make_settings, running_worker
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess

START = datetime(2026, 12, 1, 7, 0, tzinfo=timezone.utc)
LIMITS = PayloadLimits(max_payload_bytes=4096, max_future_skew=timedelta(minutes=5), max_age=timedelta(days=30))
BOROUGHS = load_boroughs()


def _run(units: int, *, seed: int, hours: float, dt: float, profile: FleetProfile | None = None):  # type: ignore[no-untyped-def]
    profile = profile or FleetProfile()
    fleet = build_fleet(BOROUGHS, units, seed=seed, profile=profile)
    out = []
    steps = int(hours * 3600 / dt)
    for i in range(steps):
        now = START + timedelta(seconds=i * dt)
        for unit in fleet:
            for channel, payload in unit.step(now, dt, profile):
                out.append((unit, now, channel, payload))
    return fleet, out


def test_same_seed_same_fleet_and_messages() -> None:
    """A seed makes a run repeatable; another seed makes another fleet."""
    _, a = _run(30, seed=7, hours=0.5, dt=30)
    _, b = _run(30, seed=7, hours=0.5, dt=30)
    _, c = _run(30, seed=8, hours=0.5, dt=30)
    assert [(u.device_id, p) for u, _, _, p in a] == [(u.device_id, p) for u, _, _, p in b]
    assert [p for _, _, _, p in a] != [p for _, _, _, p in c]


def test_every_simulated_message_is_valid_by_the_contract() -> None:
    """Two hours of 120 units: every message decodes; events of every common kind occur."""
    _, out = _run(120, seed=1, hours=2, dt=10, profile=FleetProfile(emergencies_per_h=0.2))
    kinds: Counter[str] = Counter()
    no_fix = 0
    for unit, now, channel, payload in out:
        result = decode(topic_for(unit.device_id, channel), orjson.dumps(payload), now=now, limits=LIMITS)
        assert isinstance(result, (Decoded, StatusChange)), (payload, result)
        if channel is Channel.EVENTS:
            kinds[payload["type"]] += 1
        elif payload["gps"] is None:
            no_fix += 1
    assert {"recording_started", "recording_stopped", "emergency"} <= set(kinds)
    assert no_fix > 0


def test_a_docked_camera_is_checked_out_by_the_other_shift() -> None:
    """A camera docks to charge; the relief officer checks it out: the undocked event names
    them and the callsign (contract 1.2), and decodes to that checkout."""
    profile = FleetProfile()
    unit = build_fleet(BOROUGHS, 1, seed=5, profile=profile)[0]
    unit.battery = 5.0
    first = unit.officer
    docking = []
    for i in range(600):
        now = START + timedelta(minutes=i)
        for channel, payload in unit.step(now, 60, profile):
            if channel is Channel.EVENTS and payload["type"] in ("docked", "undocked"):
                docking.append(payload)
    assert [e["type"] for e in docking[:2]] == ["docked", "undocked"]
    assert docking[1]["details"] == {"officer": "PC 60000", "callsign": unit.callsign} and unit.officer == "PC 60000"
    decoded = decode(topic_for(unit.device_id, Channel.EVENTS), orjson.dumps(docking[1]), now=now, limits=LIMITS)
    assert isinstance(decoded, Decoded) and isinstance(decoded.message, EventReport)
    assert decoded.message.checkout() is not None and unit.relief == first


def test_fleet_spread_roles_and_modes() -> None:
    """Units are spread over the 32 Met boroughs, with firearms officers and vehicles among them."""
    fleet = build_fleet(BOROUGHS, 3200, seed=3, profile=FleetProfile())
    assert len(BOROUGHS) == 32 and "City of London" not in {b.name for b in BOROUGHS}
    per_borough = Counter(u.borough.name for u in fleet)
    assert set(per_borough.values()) == {100}
    firearms = sum(u.role == "firearms" for u in fleet) / len(fleet)
    assert 0.05 < firearms < 0.11
    assert {u.mode for u in fleet} == {"foot", "vehicle"}
    assert all(u.borough.contains(u.lon, u.lat) for u in fleet)
    assert len({u.device_id for u in fleet}) == 3200


def test_units_move_plausibly_and_stay_in_their_borough() -> None:
    """Over an hour, foot officers move at walking pace and vehicles faster; positions stay
    (nearly always) inside the unit's borough."""
    fleet, out = _run(64, seed=5, hours=1, dt=5)
    inside = sum(1 for u, _, ch, p in out if ch is Channel.TELEMETRY and p["gps"]
                 and u.borough.contains(p["gps"]["lon"], p["gps"]["lat"]))
    with_fix = sum(1 for _, _, ch, p in out if ch is Channel.TELEMETRY and p["gps"])
    assert inside / with_fix > 0.9
    speeds: dict[str, list[float]] = {"foot": [], "vehicle": []}
    for u, _, ch, p in out:
        if ch is Channel.TELEMETRY and p["gps"] and p["gps"]["speed_mps"] > 0:
            speeds[u.mode].append(p["gps"]["speed_mps"])
    assert max(speeds["foot"]) < 2.0
    assert sum(speeds["vehicle"]) / len(speeds["vehicle"]) > 4.0


def test_battery_drains_over_a_shift_and_charges_when_docked() -> None:
    """A 12-hour shift drains the battery (faster while recording); docked units charge."""
    profile = FleetProfile(recordings_per_h=0.0, firearms_recordings_per_h=0.0, emergencies_per_h=0.0)
    fleet, out = _run(40, seed=9, hours=12, dt=60, profile=profile)
    docked_reports = [p for _, _, ch, p in out if ch is Channel.TELEMETRY and p["docked"]]
    assert docked_reports and all(p["battery"]["charging"] for p in docked_reports)
    first = {u.device_id: None for u in fleet}
    drained = 0
    for u, _, ch, p in out:
        if ch is Channel.TELEMETRY and first[u.device_id] is None:
            first[u.device_id] = p["battery"]["pct"]
    for u in fleet:
        start = first[u.device_id]
        assert start is not None
        if not u.docked and u.battery < start - 30:
            drained += 1
    assert drained > 0
    recorder = build_fleet(BOROUGHS, 1, seed=1, profile=profile)[0]
    idle = build_fleet(BOROUGHS, 1, seed=1, profile=profile)[0]
    from core.contract import RecordingState

    recorder.recording, recorder.record_s = RecordingState.RECORDING, 10_000
    for i in range(60):
        recorder.step(START, 60, profile)
        idle.step(START, 60, profile)
    assert recorder.battery < idle.battery


def test_full_met_fleet_builds_and_reports_from_one_process() -> None:
    """22,000 units are built and each produces a valid report."""
    profile = FleetProfile()
    fleet = build_fleet(BOROUGHS, 22_000, seed=1, profile=profile)
    for unit in fleet:
        messages = unit.step(START, 1.0, profile)
        assert messages[-1][0] is Channel.TELEMETRY
    assert len({u.device_id for u in fleet}) == 22_000


@pytest.mark.parametrize("connections", [None, 5])
def test_simulator_drives_ingest_through_a_real_broker(pg: Database, mosquitto: MosquittoProcess,
                                                       connections: int | None) -> None:
    """With one connection per device (each with its Last Will) or a few shared ones, the
    simulated fleet reaches the database through the broker and ingest."""
    sim = Simulator(mqtt_url=mosquitto.url, devices=60, interval_s=0.5, seed=2, connections=connections,
                    profile=FleetProfile(drops_per_h=0.0))
    with pg.connect() as conn:
        upsert_devices(conn, [DeviceRecord(u.device_id, u.callsign, u.officer, u.borough.name, u.role)
                              for u in sim.units])
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url,
                        settings=make_settings(require_registration=True)) as worker:
        thread = threading.Thread(target=sim.run, kwargs={"duration_s": 3.0})
        thread.start()
        thread.join(30)
        wait_for(lambda: worker.stats.received >= sim.stats.published, what="ingest to catch up")
        assert worker.stats.rejected == {}
    assert sim.dedicated is (connections is None)
    assert pg.scalar("SELECT count(*) FROM device_latest WHERE ts IS NOT NULL") == 60
    assert pg.scalar("SELECT count(*) FROM telemetry") >= 60 * 4
    assert pg.scalar("SELECT count(DISTINCT d.borough) FROM device_latest l JOIN devices d USING (device_id)") == 32


def test_the_camera_shows_its_wearer_who_watches_and_why() -> None:
    """A contract 1.1 live_view_status becomes the wearer's screen (who, role, since, why, and
    the consent's basis and reason); a 1.0 one (the count alone) shows the count; malformed
    entries are left out, never guessed, and a status without a count shows nothing."""
    shown = wearer_display({"viewers": 2, "basis": "accepted_request", "reason": "officer needs support",
                            "watching": [{"name": "Anna Page", "role": "operator", "since": "2026-12-01T12:01:02Z",
                                          "reason": "officer needs support"},
                                         {"name": 7}, "not an object",
                                         {"name": "op-b\x00", "role": "operator", "since": "2026-12-01T12:03:09Z"}]})
    assert shown is not None and shown.viewers == 2
    assert shown.watching == (Watching("Anna Page", "operator", "2026-12-01T12:01:02Z", "officer needs support"),
                              Watching("op-b", "operator", "2026-12-01T12:03:09Z", None))
    assert shown.line() == ("2 watching: Anna Page (operator, since 2026-12-01T12:01:02Z, officer needs support); "
                            "op-b (operator, since 2026-12-01T12:03:09Z, no reason given)"
                            " | allowed by accepted_request: officer needs support")
    old = wearer_display({"viewers": 1})
    assert old is not None and old.viewers == 1 and old.watching == () and old.basis is None
    assert wearer_display({"viewers": True}) is None and wearer_display({}) is None
