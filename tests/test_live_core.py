"""The live feed's pure core (:mod:`api.live.state`, :mod:`api.live.deltas`) and its hand-over
(:mod:`api.live.handover`), with no broker, no database and no sockets: how a unit's state
merges, which fields each view receives per tick, and how a lagging client's deltas conflate.
The same behaviour through a real broker, PostgreSQL and websockets is in test_api.py,
test_api_scaleout.py and test_dashboard.py."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from api.live.client import FeedCounters
from api.live.deltas import Delta, Pending, View, encode_delta, for_view, unit_view
from api.live.handover import Handover
from api.live.state import POSITION_FIELDS, UNIT_FIELDS, FleetState, RegistryRow
from core.contract import ALERTS_TOPIC, LIVE_UNITS_TOPIC, TOPIC_ROOT
from core.reports import TelemetryReport
from services.accounts import Principal, Role
from telemetry.decode import Decoded, PayloadLimits, StatusChange, decode
from telemetry.live_frame import FRAME_MAX_BYTES, FrameError, decode_frame, encode_frames
from telemetry.store import Batch

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
LIMITS = PayloadLimits(max_payload_bytes=65_536, max_future_skew=timedelta(days=1), max_age=timedelta(days=3650))
ALL_SEE: View = (True, None)


def frame_of(*messages: tuple[str, bytes], now: datetime = T0) -> bytes:
    """The live-units frame ingest publishes for a batch of these device messages, each
    decoded as ingest decodes it (the payloads must be good: ingest stores nothing else)."""
    batch = Batch()
    for topic, payload in messages:
        result = decode(topic, payload, now=now, limits=LIMITS)
        if isinstance(result, StatusChange):
            batch.statuses.append((result.device_id, now, result))
        else:
            assert isinstance(result, Decoded) and isinstance(result.message, TelemetryReport), result
            batch.telemetry.append((result.device_id, now, result.message))
    [frame] = encode_frames(batch)
    return frame


def report(device_id: str, *, ts: datetime, battery: float = 80.0, lat: float | None = 51.5,
           lon: float = -0.12, seq: int = 1) -> tuple[str, bytes]:
    body: dict[str, Any] = {"seq": seq, "ts": ts.isoformat(), "battery": {"pct": battery, "charging": False},
                            "gps": None if lat is None else {"lat": lat, "lon": lon, "accuracy_m": 5.0},
                            "recording": "off"}
    return f"{TOPIC_ROOT}/{device_id}/telemetry", orjson.dumps(body)


def telemetry(device_id: str, *, ts: datetime, battery: float = 80.0, lat: float | None = 51.5,
              lon: float = -0.12) -> tuple[str, dict[str, Any]]:
    """(device_id, fields) as the hub takes them from ingest's frame of a real report."""
    [update] = decode_frame(frame_of(report(device_id, ts=ts, battery=battery, lat=lat, lon=lon), now=ts))
    return update


def status(device_id: str, online: bool) -> tuple[str, dict[str, Any]]:
    [update] = decode_frame(frame_of((f"{TOPIC_ROOT}/{device_id}/status", b"online" if online else b"offline")))
    return update


def row(device_id: str, borough: str, **state: Any) -> dict[str, Any]:
    """A registry row as ``queries.units_snapshot`` gives it (no state unless given)."""
    return {"device_id": device_id, "callsign": f"cs-{device_id}", "officer": f"PC {device_id}",
            "borough": borough, "role": "response", "ts": None, **state}


def registry(device_id: str, borough: str, *, officer: str | None = None) -> RegistryRow:
    """A registry row as ``queries.registry_snapshot`` gives it (the same names as ``row``'s)."""
    return (device_id, f"cs-{device_id}", officer or f"PC {device_id}", borough, "response")


def load_registry(state: FleetState, rows: list[RegistryRow], **stored: dict[str, Any]) -> list[str]:
    """The registry-only refresh as the API runs it: ``rows``, and the whole rows (``row``, with
    the state in ``stored`` of that device where given) of the devices it lacks; returns those."""
    new = state.unregistered(rows)
    by_id = {r[0]: r for r in rows}
    state.load_registry(rows, [row(d, by_id[d][3], officer=by_id[d][2], **stored.get(d, {})) for d in new])
    return new


def units_of(state: FleetState) -> dict[str, dict[str, Any]]:
    return {u["device_id"]: dict(u) for u in state.visible(None)}


def delta_of(state: FleetState, view: View) -> Delta:
    return for_view(state.take_changes(), view)


# the state merge


def test_telemetry_after_an_offline_status_brings_the_unit_back_online() -> None:
    """A device's last will marks it offline; its next report marks it online again, and
    the status changed nothing but ``online``."""
    state = FleetState()
    state.load([row("d1", "Camden")])
    state.apply(*telemetry("d1", ts=T0, battery=70.0))
    state.apply(*status("d1", False))
    assert units_of(state)["d1"]["online"] is False
    assert units_of(state)["d1"]["battery_pct"] == 70.0
    state.apply(*telemetry("d1", ts=T0 + timedelta(seconds=5), battery=69.0))
    assert units_of(state)["d1"]["online"] is True
    assert units_of(state)["d1"]["battery_pct"] == 69.0


def test_a_report_without_a_fix_keeps_the_last_position() -> None:
    """A report with no GPS fix says ``gps_fix`` false and leaves the last known position and
    ``last_fix_at`` as they were (the map shows where the unit was last seen)."""
    state = FleetState()
    state.load([row("d1", "Camden")])
    state.apply(*telemetry("d1", ts=T0, lat=51.5, lon=-0.1))
    state.apply(*telemetry("d1", ts=T0 + timedelta(seconds=5), lat=None))
    unit = units_of(state)["d1"]
    assert (unit["gps_fix"], unit["lat"], unit["lon"], unit["last_fix_at"]) == (False, 51.5, -0.1, T0)


def test_a_report_older_than_the_state_does_not_replace_it() -> None:
    """Reports may arrive out of order (a camera sending its backlog after a reconnect): the
    latest state follows ``ts``, as in the database (docs/mqtt-contract.md), so a late
    older report changes nothing and is not sent to clients."""
    state = FleetState()
    state.load([row("d1", "Camden")])
    state.apply(*telemetry("d1", ts=T0 + timedelta(seconds=10), battery=60.0, lat=51.6))
    state.take_changes()
    state.apply(*telemetry("d1", ts=T0, battery=90.0, lat=51.4))
    unit = units_of(state)["d1"]
    assert (unit["ts"], unit["battery_pct"], unit["lat"]) == (T0 + timedelta(seconds=10), 60.0, 51.6)
    assert not state.take_changes()


def test_a_registry_load_keeps_state_newer_than_the_database() -> None:
    """The broker subscription starts before the registry loads: a stored state older than
    what the broker already said only brings the registry fields; a newer one replaces it."""
    state = FleetState()
    state.apply(*telemetry("d1", ts=T0 + timedelta(seconds=10), battery=60.0))
    state.load([row("d1", "Camden", ts=T0, battery_pct=99.0)])
    unit = units_of(state)["d1"]
    assert (unit["borough"], unit["callsign"], unit["battery_pct"]) == ("Camden", "cs-d1", 60.0)
    state.load([row("d1", "Camden", ts=T0 + timedelta(seconds=20), battery_pct=40.0)])
    assert units_of(state)["d1"]["battery_pct"] == 40.0


def test_a_move_to_another_borough_notes_every_field_and_the_borough_left() -> None:
    """A unit moved in the registry is noted whole (clients of its new area never saw it)
    and as having left its old borough."""
    state = FleetState()
    state.load([row("d1", "Camden")])
    state.apply(*telemetry("d1", ts=T0))
    state.take_changes()
    state.load([row("d1", "Hackney")])
    changes = state.take_changes()
    [(borough, unit)] = changes.changed
    assert borough == "Hackney"
    assert set(unit) == set(UNIT_FIELDS)
    [left] = changes.left
    assert (left.device_id, left.now, left.retired) == ("d1", "Hackney", False)
    assert left.was == frozenset({"Camden", "Hackney"})


def test_a_retired_unit_is_dropped_and_what_it_still_sends_is_ignored() -> None:
    """A device missing from the next registry load is retired: it leaves the state, is
    noted as left (retired), and its later reports do not bring it back until it is
    registered again, when it comes whole."""
    state = FleetState()
    state.load([row("d1", "Camden"), row("d2", "Camden")])
    state.take_changes()
    state.load([row("d2", "Camden")])
    state.apply(*telemetry("d1", ts=T0))
    assert set(units_of(state)) == {"d2"}
    changes = state.take_changes()
    assert changes.changed == []
    [left] = changes.left
    assert (left.device_id, left.was, left.retired) == ("d1", frozenset({"Camden"}), True)
    state.load([row("d1", "Camden"), row("d2", "Camden")])
    [(_, unit)] = state.take_changes().changed
    assert set(unit) == set(UNIT_FIELDS)


def test_only_changed_fields_are_noted_and_many_updates_make_one_change() -> None:
    """Between two ticks a unit's many reports are one change with the latest values, and
    only the fields whose value differs from the last tick's (a report repeating the
    battery level does not resend it)."""
    state = FleetState()
    state.load([row("d1", "Camden")])
    state.apply(*telemetry("d1", ts=T0, battery=80.0, lat=51.50))
    state.take_changes()
    for i in range(1, 11):
        state.apply(*telemetry("d1", ts=T0 + timedelta(seconds=i), battery=80.0, lat=51.50 + i / 1000))
    [(_, unit)] = state.take_changes().changed
    assert unit["lat"] == 51.51 and unit["ts"] == T0 + timedelta(seconds=10)
    assert "battery_pct" not in unit and "callsign" not in unit
    assert set(unit) == {"device_id", "ts", "received_at", "lat", "last_fix_at"}
    assert not state.take_changes()


# the registry alone (the periodic and announced refresh)


def test_a_registry_refresh_that_changes_nothing_notes_nothing() -> None:
    """The refresh reads every device every 30 s: a unit whose registry fields are as they
    were is left as it is, and no client is sent anything, whatever its state."""
    state = FleetState()
    state.load([row("d1", "Camden"), row("d2", "Hackney")])
    state.apply(*telemetry("d1", ts=T0, battery=55.0))
    state.take_changes()
    before = units_of(state)
    assert load_registry(state, [registry("d1", "Camden"), registry("d2", "Hackney")]) == []
    assert not state.take_changes()
    assert units_of(state) == before


def test_a_registry_refresh_notes_an_officer_change_alone() -> None:
    """A new officer or callsign in the registry is the one change noted, and the state the
    frames brought stays."""
    state = FleetState()
    state.load([row("d1", "Camden")])
    state.apply(*telemetry("d1", ts=T0, battery=55.0))
    state.take_changes()
    load_registry(state, [registry("d1", "Camden", officer="PC Ben")])
    [(borough, unit)] = state.take_changes().changed
    assert (borough, unit) == ("Camden", {"device_id": "d1", "officer": "PC Ben"})
    assert units_of(state)["d1"]["battery_pct"] == 55.0


def test_a_registry_refresh_restores_the_registrys_officer_over_a_frames() -> None:
    """Two workers' frames may bring a camera's custody changes in either order: the refresh
    compares with the unit as shown, not with the registry it read last, so the database's
    officer wins even when the registry has not changed since."""
    state = FleetState()
    state.load([row("d1", "Camden")])
    state.apply("d1", {"officer": "PC Old", "callsign": "cs-d1"})
    state.take_changes()
    load_registry(state, [registry("d1", "Camden")])
    assert units_of(state)["d1"]["officer"] == "PC d1"


def test_a_registry_refresh_moves_a_unit_whole_and_notes_the_borough_left() -> None:
    """As the full load: a unit moved is noted whole, with its state, and as having left."""
    state = FleetState()
    state.load([row("d1", "Camden")])
    state.apply(*telemetry("d1", ts=T0, battery=55.0))
    state.take_changes()
    load_registry(state, [registry("d1", "Hackney")])
    changes = state.take_changes()
    [(borough, unit)] = changes.changed
    assert borough == "Hackney" and set(unit) == set(UNIT_FIELDS) and unit["battery_pct"] == 55.0
    [left] = changes.left
    assert (left.device_id, left.was, left.now, left.retired) == ("d1", frozenset({"Camden", "Hackney"}),
                                                                   "Hackney", False)


def test_a_registry_refresh_retires_a_missing_unit_and_a_new_one_comes_with_its_stored_state() -> None:
    """A device missing from the registry is retired (dropped, its frames ignored); a device
    new to the state, or registered again, is read whole from the database and comes whole
    with its stored state, or with what the frames brought when that is newer."""
    state = FleetState()
    state.load([row("d1", "Camden"), row("d2", "Camden")])
    state.take_changes()
    assert load_registry(state, [registry("d2", "Camden")]) == []
    state.apply(*telemetry("d1", ts=T0))
    assert set(units_of(state)) == {"d2"}
    changes = state.take_changes()
    assert changes.changed == []
    [left] = changes.left
    assert (left.device_id, left.was, left.retired) == ("d1", frozenset({"Camden"}), True)

    state.apply(*telemetry("d3", ts=T0 + timedelta(seconds=10), battery=30.0))  # before the refresh saw it
    new = load_registry(state, [registry("d1", "Hackney"), registry("d2", "Camden"), registry("d3", "Camden")],
                        d1={"ts": T0, "battery_pct": 12.0}, d3={"ts": T0, "battery_pct": 99.0})
    assert sorted(new) == ["d1", "d3"]
    changed = dict((u["device_id"], u) for _, u in state.take_changes().changed)
    assert set(changed) == {"d1", "d3"} and set(changed["d1"]) == set(UNIT_FIELDS)
    units = units_of(state)
    assert (units["d1"]["borough"], units["d1"]["battery_pct"]) == ("Hackney", 12.0)
    assert (units["d3"]["borough"], units["d3"]["battery_pct"]) == ("Camden", 30.0)
    assert load_registry(state, [registry("d1", "Hackney"), registry("d2", "Camden"), registry("d3", "Camden")]) == []


def test_a_new_device_without_its_stored_state_waits_for_the_next_refresh() -> None:
    """A device the registry names but whose whole row was not read (retired in between) is
    not taken in, and is asked for again by the next refresh."""
    state = FleetState()
    state.load([row("d1", "Camden")])
    state.take_changes()
    state.load_registry([registry("d1", "Camden"), registry("d2", "Camden")], [])
    assert set(units_of(state)) == {"d1"} and not state.take_changes()
    assert state.unregistered([registry("d1", "Camden"), registry("d2", "Camden")]) == ["d2"]


# per-view deltas


def test_a_fleet_manager_never_receives_positions_or_names() -> None:
    """A fleet manager's view (``sees_positions`` false) carries a unit's health but none of
    the position fields nor the officer's name, in deltas as in a whole unit."""
    fleet = Principal("f", Role.FLEET_MANAGER, None)
    assert not fleet.sees_positions
    state = FleetState()
    state.load([row("d1", "Camden")])
    delta = delta_of(state, (fleet.sees_positions, fleet.areas))
    state.apply(*telemetry("d1", ts=T0, battery=50.0))
    moving = delta_of(state, (fleet.sees_positions, fleet.areas))
    for unit in delta.units + moving.units:
        assert not set(unit) & set(POSITION_FIELDS)
    assert moving.units[0]["battery_pct"] == 50.0
    assert not set(unit_view(units_of(state)["d1"], False)) & set(POSITION_FIELDS)


def test_a_unit_moving_out_of_an_area_is_removed_and_moving_in_arrives_whole() -> None:
    """Moved from Camden to Hackney: Camden's clients get it in ``removed``, Hackney's get
    every field of it, and a client of every borough gets it whole but not removed."""
    state = FleetState()
    state.load([row("d1", "Camden")])
    state.apply(*telemetry("d1", ts=T0))
    state.take_changes()
    state.load([row("d1", "Hackney")])
    changes = state.take_changes()
    camden = for_view(changes, (True, frozenset({"Camden"})))
    hackney = for_view(changes, (True, frozenset({"Hackney"})))
    everywhere = for_view(changes, ALL_SEE)
    assert (camden.units, camden.removed) == ([], ["d1"])
    assert hackney.removed == [] and set(hackney.units[0]) == set(UNIT_FIELDS)
    assert everywhere.removed == [] and set(everywhere.units[0]) == set(UNIT_FIELDS)


def test_a_client_that_joined_between_a_move_and_a_retirement_is_told_of_the_removal() -> None:
    """Found by the property below: a unit moved into Camden, a Camden client's snapshot
    taken, then the unit retired, all within one tick. The client holds it, so the tick
    removes it for Camden even though the unit was elsewhere at the previous tick."""
    state = FleetState()
    state.load([row("d1", "Hackney")])
    state.take_changes()
    state.load([row("d1", "Camden")])
    camden: View = (True, frozenset({"Camden"}))
    picture = {u["device_id"]: dict(u) for u in state.visible(camden[1])}
    assert set(picture) == {"d1"}
    state.load([])
    _apply(picture, delta_of(state, camden))
    assert picture == {}


def test_a_retired_unit_is_removed_from_every_view_that_had_it() -> None:
    """Retirement removes the unit from its area's clients and from all-borough clients, and
    tells nothing to the clients of another area."""
    state = FleetState()
    state.load([row("d1", "Camden")])
    state.take_changes()
    state.load([])
    changes = state.take_changes()
    assert for_view(changes, (False, frozenset({"Camden"}))).removed == ["d1"]
    assert for_view(changes, ALL_SEE).removed == ["d1"]
    assert not for_view(changes, (True, frozenset({"Hackney"})))


def test_the_delta_frame_is_the_documented_wire_format() -> None:
    """``{"type": "delta", "units": [...]}``, with ``removed`` only when something was."""
    assert orjson.loads(encode_delta(Delta([{"device_id": "d1", "battery_pct": 5.0}], []))) == {
        "type": "delta", "units": [{"device_id": "d1", "battery_pct": 5.0}]}
    assert orjson.loads(encode_delta(Delta([], ["d2"]))) == {"type": "delta", "units": [], "removed": ["d2"]}


# conflation for a lagging client


def test_a_lagging_clients_deltas_conflate_to_one_with_the_latest_values() -> None:
    """Many deltas of one unit held for a slow client become one entry per unit with every
    field any of them carried, each at its latest value; the count says how many merged."""
    pending = Pending()
    assert pending.add(Delta([{"device_id": "d1", "lat": 1.0, "ts": 1}], [])) == 0
    assert pending.add(Delta([{"device_id": "d1", "lat": 2.0, "ts": 2}], [])) == 1
    assert pending.add(Delta([{"device_id": "d1", "battery_pct": 9.0, "ts": 3}], [])) == 1
    assert pending.take() == Delta([{"device_id": "d1", "lat": 2.0, "ts": 3, "battery_pct": 9.0}], [])
    assert not pending


def test_a_unit_removed_then_back_in_view_while_lagging_comes_whole_and_not_removed() -> None:
    """Removed and then back (whole) before the slow client was sent anything: it gets the
    whole unit and no removal; removed after an update: only the removal."""
    pending = Pending()
    pending.add(Delta([{"device_id": "d1", "lat": 1.0}, {"device_id": "d2", "lat": 1.0}], []))
    pending.add(Delta([], ["d1", "d2"]))
    pending.add(Delta([{"device_id": "d1", "lat": 3.0, "borough": "Camden"}], []))
    assert pending.take() == Delta([{"device_id": "d1", "lat": 3.0, "borough": "Camden"}], ["d2"])


# the hand-over from paho's thread


def test_the_handover_merges_frames_and_gives_alerts_their_units_borough() -> None:
    """What paho's thread hands over: ingest's frames merged into the state (an unreadable
    frame counted and dropped), alerts kept with the borough of their unit for the tick,
    every message counted."""
    counters = FeedCounters()
    shared = Handover(counters=counters, registry_changed=asyncio.Event(), accounts_changed=asyncio.Event())
    shared.load([row("d1", "Camden")])
    shared.take()
    shared.put(LIVE_UNITS_TOPIC, frame_of(report("d1", ts=T0, battery=33.0, lat=None)))
    shared.put(LIVE_UNITS_TOPIC, b"{not json")
    shared.put(LIVE_UNITS_TOPIC, orjson.dumps({"v": 99, "t": [], "s": []}))
    shared.put(ALERTS_TOPIC, orjson.dumps({"id": 7, "device_id": "d1", "kind": "sos"}))
    changes, alerts = shared.take()
    [(_, unit)] = changes.changed
    assert unit["battery_pct"] == 33.0
    assert alerts == [{"id": 7, "device_id": "d1", "kind": "sos", "borough": "Camden"}]
    assert counters.broker_messages == 4
    assert (counters.unit_updates, counters.bad_frames) == (1, 2)
    assert shared.borough_of("d1") == "Camden" and shared.borough_of("nope") is None
    assert shared.snapshot((False, frozenset({"Hackney"}))) == []
    assert "lat" not in shared.snapshot((False, None))[0]


def test_a_broker_reconnect_asks_the_next_refresh_for_every_units_stored_state() -> None:
    """Frames are lost with a broker session: after a reconnect (and only then) the refresher
    is woken and told, once, to read every unit's state, not the registry alone."""
    woken = asyncio.Event()
    shared = Handover(counters=FeedCounters(), registry_changed=woken, accounts_changed=asyncio.Event())
    loop = asyncio.new_event_loop()
    try:
        shared.attach(loop)
        assert not shared.take_missed()
        shared.reconnected()
        loop.run_until_complete(asyncio.wait_for(woken.wait(), 5))
        assert shared.take_missed() and not shared.take_missed()
    finally:
        loop.close()


def test_frames_from_two_workers_out_of_order_never_put_an_older_report_on_screen() -> None:
    """Two ingest workers store a unit's reports in two batches; the newer batch's frame
    arrives first. The older one leaves the unit as the newer one set it."""
    shared = Handover(counters=FeedCounters(), registry_changed=asyncio.Event(), accounts_changed=asyncio.Event())
    shared.load([row("d1", "Camden"), row("d2", "Camden")])
    shared.take()
    newer = frame_of(report("d1", ts=T0 + timedelta(seconds=2), battery=50.0, lat=51.6),
                     report("d2", ts=T0, battery=70.0))
    older = frame_of(report("d1", ts=T0 + timedelta(seconds=1), battery=60.0, lat=51.4),
                     report("d2", ts=T0 + timedelta(seconds=1), battery=69.0))
    shared.put(LIVE_UNITS_TOPIC, newer)
    shared.put(LIVE_UNITS_TOPIC, older)
    units = {u["device_id"]: u for u in shared.snapshot(ALL_SEE)}
    assert (units["d1"]["battery_pct"], units["d1"]["lat"]) == (50.0, 51.6)
    assert units["d2"]["battery_pct"] == 69.0  # d2's newer report was in the "older" frame


def test_a_frame_holds_each_units_newest_report_of_the_batch_and_a_later_status() -> None:
    """Newest per unit within a batch (by ts, then seq); a status that came after the unit's
    newest report wins, one that came before it does not (a report is proof of life)."""
    batch = Batch()
    for device_id, seq, ts in (("d1", 1, T0), ("d1", 3, T0 + timedelta(seconds=1)), ("d1", 2, T0)):
        _, payload = report(device_id, ts=ts, seq=seq, battery=float(seq))
        decoded = decode(f"{TOPIC_ROOT}/{device_id}/telemetry", payload, now=T0, limits=LIMITS)
        assert isinstance(decoded, Decoded) and isinstance(decoded.message, TelemetryReport)
        batch.telemetry.append((device_id, T0 + timedelta(seconds=seq), decoded.message))
    batch.statuses.append(("d1", T0, StatusChange("d1", False)))  # before the newest report arrived
    batch.statuses.append(("d2", T0, StatusChange("d2", False)))
    [frame] = encode_frames(batch)
    updates = decode_frame(frame)
    assert [(d, f.get("battery_pct"), f["online"]) for d, f in updates] == [("d1", 3.0, True), ("d2", None, False)]
    assert encode_frames(Batch()) == []


def test_a_large_batch_goes_out_in_frames_the_broker_accepts() -> None:
    """Mosquitto drops a publisher whose message exceeds message_size_limit (64 KiB): a batch
    of 5,000 units (ingest_batch_max) becomes several frames under FRAME_MAX_BYTES, each whole
    units, together every unit once."""
    _, payload = report("x", ts=T0)
    decoded = decode(f"{TOPIC_ROOT}/x/telemetry", payload, now=T0, limits=LIMITS)
    assert isinstance(decoded, Decoded) and isinstance(decoded.message, TelemetryReport)
    long_id = "u" * 60
    batch = Batch(telemetry=[(f"{long_id}{n:04d}", T0, decoded.message) for n in range(5_000)],
                  statuses=[(f"s{n}", T0, StatusChange(f"s{n}", True)) for n in range(2_000)])
    frames = encode_frames(batch)
    assert len(frames) > 1 and all(len(f) <= FRAME_MAX_BYTES for f in frames)
    updates = [u for f in frames for u in decode_frame(f)]
    assert sorted(d for d, _ in updates) == sorted([f"{long_id}{n:04d}" for n in range(5_000)]
                                                   + [f"s{n}" for n in range(2_000)])


def test_a_frame_carries_the_officer_a_batch_s_undocking_gave_a_camera() -> None:
    """A batch whose only change is a camera taken by another officer is still a frame, which
    sets that unit's officer and callsign (a reader that predates ``o`` reads the same frame
    without it); many of them split like reports, each whole."""
    [frame] = encode_frames(Batch(carried=[("d1", "PC Ben", "WE07"), ("d2", None, None)]))
    assert decode_frame(frame) == [("d1", {"officer": "PC Ben", "callsign": "WE07"}),
                                   ("d2", {"officer": None, "callsign": None})]
    assert orjson.loads(frame)["t"] == [] and orjson.loads(frame)["s"] == []
    frames = encode_frames(Batch(carried=[(f"d{n}", "P" * 200, "C") for n in range(1_000)]))
    assert len(frames) > 1 and all(len(f) <= FRAME_MAX_BYTES for f in frames)
    assert sorted(d for f in frames for d, _ in decode_frame(f)) == sorted(f"d{n}" for n in range(1_000))


def test_an_unreadable_frame_is_a_frame_error() -> None:
    """What the hub counts and drops rather than crash paho's thread."""
    for payload in (b"", b"[]", b'{"v": 1}', b'{"v": 1, "t": [["d1"]], "s": []}',
                    b'{"v": 1, "t": [], "s": [["d1"]]}', b'{"v": 2, "t": [], "s": []}',
                    b'{"v": 1, "t": [], "s": [], "o": [["d1", 7, null]]}', b'{"v": 1, "t": [], "s": [], "o": [["d1"]]}',
                    orjson.dumps({"v": 1, "t": [["d1", "not a time", *[None] * 13]], "s": []})):
        try:
            decode_frame(payload)
        except FrameError:
            continue
        raise AssertionError(f"{payload!r} was read")


# the property: a client's picture is the truth of its view


DEVICES = ["d0", "d1", "d2", "d3"]
BOROUGHS = ["Camden", "Hackney", "Islington"]
VIEWS: list[View] = [(True, None), (False, None), (True, frozenset({"Camden"})),
                     (False, frozenset({"Camden", "Hackney"})), (True, frozenset({"Islington"}))]

_op = st.one_of(
    st.tuples(st.just("report"), st.sampled_from(DEVICES), st.integers(0, 100), st.integers(-50, 50),
              st.booleans()),
    st.tuples(st.just("status"), st.sampled_from(DEVICES), st.booleans()),
    st.tuples(st.just("registry"), st.dictionaries(st.sampled_from(DEVICES), st.sampled_from(BOROUGHS))),
    st.tuples(st.just("registry_only"), st.dictionaries(st.sampled_from(DEVICES),
                                                        st.tuples(st.sampled_from(BOROUGHS),
                                                                  st.sampled_from(["PC a", "PC b"])))),
    st.tuples(st.just("tick")),
)


def _shown(unit: dict[str, Any]) -> dict[str, Any]:
    """A unit as a client holding it compares: a field never sent and one sent as null are
    the same to it (docs/api.md: merge a new unit into an empty record)."""
    return {k: v for k, v in unit.items() if v is not None}


def _apply(picture: dict[str, dict[str, Any]], delta: Delta) -> None:
    """What docs/api.md tells a client to do with a delta: drop ``removed``, then merge."""
    for device_id in delta.removed:
        picture.pop(device_id, None)
    for unit in delta.units:
        picture.setdefault(unit["device_id"], {}).update(unit)


@settings(max_examples=300, deadline=None)
@given(before=st.lists(_op, max_size=15), after=st.lists(_op, max_size=40))
def test_every_delta_applied_to_the_snapshot_gives_the_views_units_at_their_latest(
        before: list[tuple[Any, ...]], after: list[tuple[Any, ...]]) -> None:
    """For every view, a client that took its snapshot at any point and applied every delta
    sent since holds exactly the units of its area, each with its latest visible fields; a
    client that lagged the whole time (all its deltas conflated into one) holds the same."""
    state = FleetState()
    clock = [0]

    def run(op: tuple[Any, ...]) -> list[Delta] | None:
        kind = op[0]
        if kind == "report":
            _, device_id, battery, lat, fix = op
            clock[0] += 1
            state.apply(*telemetry(device_id, ts=T0 + timedelta(seconds=clock[0]), battery=float(battery),
                                   lat=51.5 + lat / 1000 if fix else None))
        elif kind == "status":
            state.apply(*status(op[1], op[2]))
        elif kind == "registry":
            state.load([row(d, b) for d, b in op[1].items()])
        elif kind == "registry_only":
            load_registry(state, [registry(d, b, officer=o) for d, (b, o) in op[1].items()])
        else:
            changes = state.take_changes()
            return [for_view(changes, view) for view in VIEWS]
        return None

    for op in before:
        run(op)
    pictures = [{u["device_id"]: dict(u) for u in (unit_view(dict(u), sees) for u in state.visible(areas))}
                for sees, areas in VIEWS]
    lagging = [{k: dict(v) for k, v in p.items()} for p in pictures]
    pendings = [Pending() for _ in VIEWS]
    for op in [*after, ("tick",)]:
        deltas = run(op)
        for picture, pending, delta in zip(pictures, pendings, deltas or []):
            _apply(picture, delta)
            pending.add(delta)
    for (sees, areas), picture, late, pending in zip(VIEWS, pictures, lagging, pendings):
        _apply(late, pending.take())
        truth = {u["device_id"]: _shown(unit_view(u, sees)) for u in state.visible(areas)}
        assert {d: _shown(u) for d, u in picture.items()} == truth
        assert {d: _shown(u) for d, u in late.items()} == truth
