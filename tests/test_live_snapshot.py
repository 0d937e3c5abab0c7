"""The snapshot message, format 2 (:mod:`api.live.snapshot`): the full fleet's first picture
fits under 3 MB as the wire carries it and decodes back to exactly the units a client of
the old JSON form held. Pure, no sockets; the same message through a real API and
websocket is read in test_api.py and the others that use tests.helpers.api.LiveReader, and
drawn by Chromium in test_dashboard.py."""

from __future__ import annotations

import asyncio
import random
import zlib
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from api.live.client import FeedCounters
from api.live.deltas import View
from api.live.handover import Handover
from api.live.snapshot import FORMAT, deflate_units, read_message, snapshot_message
from api.live.state import UNIT_FIELDS
from simulator.geo import load_boroughs

FLEET = 22_000
#: docs/api.md's bound for the full fleet's first snapshot, on the wire.
WIRE_BYTES_MAX = 3_000_000


def _fleet_rows(count: int, *, seed: int) -> list[dict[str, Any]]:
    """Registry rows with their latest state as ``queries.units_snapshot`` gives them (times
    as datetimes with microseconds), coordinates at full double precision: the most a device
    may send, and the hardest to compress."""
    rng = random.Random(seed)
    boroughs = [b.name for b in load_boroughs()]
    now = datetime(2026, 12, 6, 19, 0, tzinfo=timezone.utc)
    rows = []
    for n in range(count):
        ts = now - timedelta(seconds=rng.uniform(0, 5))
        fix = rng.random() > 0.05
        rows.append({
            "device_id": f"met-{n:05d}", "callsign": f"CS{n:05d}", "officer": f"PC {rng.randrange(100_000, 999_999)}",
            "borough": boroughs[n % len(boroughs)], "role": rng.choice(["response", "firearms", "neighbourhood"]),
            "ts": ts, "received_at": ts + timedelta(microseconds=rng.randrange(2_000, 50_000)),
            "battery_pct": round(rng.uniform(5, 100), 1), "charging": rng.random() < 0.1, "gps_fix": fix,
            "lat": rng.uniform(51.3, 51.7) if fix else None, "lon": rng.uniform(-0.5, 0.3) if fix else None,
            "accuracy_m": round(rng.uniform(3, 30), 1) if fix else None,
            "speed_mps": round(rng.uniform(0, 15), 1) if fix else None,
            "heading_deg": round(rng.uniform(0, 360), 1) if fix else None, "last_fix_at": ts if fix else None,
            "recording": rng.choice(["off", "buffering", "recording"]), "storage_pct": round(rng.uniform(0, 100), 1),
            "docked": rng.random() < 0.05, "live": rng.random() < 0.01, "viewers": rng.choice([0, 0, 0, 1, 2]),
            "online": rng.random() > 0.02})
    return rows


def _shared(rows: list[dict[str, Any]]) -> Handover:
    shared = Handover(counters=FeedCounters(), registry_changed=asyncio.Event(), accounts_changed=asyncio.Event())
    shared.load(rows)
    return shared


def _as_json(value: Any) -> Any:
    """What a client of the JSON form held: the value through orjson (times as ISO 8601)."""
    return orjson.loads(orjson.dumps(value))


def test_the_full_fleets_snapshot_is_under_3_mb_on_the_wire_and_decodes_to_the_same_units() -> None:
    """22,000 units, every field, as the hub builds the message: its bytes (the websocket
    message's payload; nothing compresses it again, permessage-deflate is off) are under
    3 MB, and reading it gives back every unit, field and value, and the alerts."""
    shared = _shared(_fleet_rows(FLEET, seed=17))
    units = shared.snapshot((True, None))
    alerts = [{"id": 7, "device_id": "met-00001", "kind": "battery_low", "raised_at": datetime.now(timezone.utc)}]
    message = snapshot_message(alerts=alerts, units=deflate_units(units))
    assert len(message) < WIRE_BYTES_MAX, f"{len(message):,} bytes"
    assert len(zlib.decompress(message, -zlib.MAX_WBITS)) < len(orjson.dumps(units)) / 2  # the columns
    read = read_message(message)
    assert (read["type"], read["format"]) == ("snapshot", FORMAT)
    assert read["units"] == _as_json(units)
    assert read["alerts"] == _as_json(alerts)


def test_each_view_decodes_to_its_own_units() -> None:
    """A health-only view (no positions, no officer) and an area: each view's message holds
    exactly what the view may see; an empty view is an empty snapshot."""
    shared = _shared(_fleet_rows(300, seed=3))
    views: list[View] = [(False, None), (True, frozenset({"Camden", "Hackney"})), (True, frozenset({"Nowhere"}))]
    for view in views:
        units = shared.snapshot(view)
        read = read_message(snapshot_message(alerts=[], units=deflate_units(units)))
        assert read["units"] == _as_json(units), view
    health = read_message(snapshot_message(alerts=[], units=deflate_units(shared.snapshot((False, None)))))
    assert health["units"] and all("lat" not in u and "officer" not in u for u in health["units"])


def test_one_views_units_serve_every_clients_alerts() -> None:
    """The units piece is deflated once per view and joined to each client's own alerts:
    every such message is a whole stream that reads back to its alerts and the same units."""
    units = _shared(_fleet_rows(50, seed=5)).snapshot((True, None))
    piece = deflate_units(units)
    for alerts in ([], [{"id": 1, "kind": "emergency"}], [{"id": n, "kind": "offline"} for n in range(500)]):
        read = read_message(snapshot_message(alerts=alerts, units=piece))
        assert read["alerts"] == alerts and read["units"] == _as_json(units)


_values = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=12),
                    st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.fixed_dictionaries({name: _values for name in UNIT_FIELDS}), max_size=30))
def test_any_units_round_trip(units: list[dict[str, Any]]) -> None:
    """Whatever the values (nulls, repeats and text in the columns sent as distinct values
    and codes too), reading the message gives back the units."""
    assert read_message(snapshot_message(alerts=[], units=deflate_units(units)))["units"] == units
