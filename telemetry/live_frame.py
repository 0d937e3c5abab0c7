"""The live-units frame: what ingest tells the API processes of a committed batch. Pure.

Ingest has already decoded, validated, rate-limited and stored every message; the API
processes take the live picture from these frames instead of decoding the devices' topics
again (one decode per message in the whole system, and the API's intake costs one
``orjson.loads`` per batch). Only what a batch stored goes in, so a rejected or
rate-limited message never reaches a screen.

Wire format (docs/mqtt-contract.md, "Internal topics"), orjson of arrays to keep it small::

    {"v": 1,
     "t": [[device_id, ts, received_at, battery_pct, charging, recording, storage_pct,
            docked, live, viewers, lat, lon, accuracy_m, speed_mps, heading_deg], ...],
     "s": [[device_id, online], ...],
     "o": [[device_id, officer, callsign], ...]}

A batch larger than one frame may carry (``FRAME_MAX_BYTES``, under the broker's 64 KiB
``message_size_limit``, past which Mosquitto drops the publisher's connection) goes out as
several frames, each whole units: a few at full rate, most batches one.

``t`` holds each unit's newest report of the batch (by ``ts``, then ``seq``), ``lat`` to
``heading_deg`` null without a fix; ``s`` a unit's online status where a status message
came after its newest report in the batch (a report is proof of life, as in the database).
``o`` the officer and callsign the registry holds for a unit after an ``undocked`` event of
the batch (a camera taken by another officer reaches the screens with the batch, not at the
API's next registry refresh); absent when none, and ignored by a reader that predates it.
Times are ISO 8601. The receiver compares ``ts`` per unit, so frames of several workers may
arrive in any order (``o`` has no time: two workers' custody changes of one camera within a
moment may show in either order until the API's registry refresh, which reads the database).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from core.reports import TelemetryReport
from telemetry.store import Batch

__all__ = ["FRAME_MAX_BYTES", "FRAME_VERSION", "FrameError", "UnitUpdate", "decode_frame", "encode_frames"]

FRAME_VERSION = 1
#: A frame's largest payload: under deploy/mosquitto's message_size_limit (65,536), with room to spare.
FRAME_MAX_BYTES = 60_000

#: (device_id, the unit fields it sets): what api.live.state.FleetState.apply takes.
UnitUpdate = tuple[str, dict[str, Any]]

_ROW_LENGTH = 15


class FrameError(ValueError):
    """A frame this version cannot read (malformed, or of another version)."""


def encode_frames(batch: Batch, *, max_bytes: int = FRAME_MAX_BYTES) -> list[bytes]:
    """The frames of a committed ``batch``: none when it changed no unit's live state or
    officer (other events reach the screens as alerts), more than one when one would exceed
    ``max_bytes``."""
    newest: dict[str, tuple[datetime, TelemetryReport]] = {}
    for device_id, received, t in batch.telemetry:
        kept = newest.get(device_id)
        if kept is None or (t.ts, t.seq) > (kept[1].ts, kept[1].seq):
            newest[device_id] = (received, t)
    statuses: dict[str, tuple[datetime, bool]] = {}
    for device_id, received, status in batch.statuses:
        statuses[device_id] = (received, status.online)
    reports: list[tuple[object, ...]] = []
    for device_id, (received, t) in newest.items():
        gps = t.gps
        battery = t.battery
        if gps is None:
            reports.append((device_id, t.ts, received, battery.pct, battery.charging, str(t.recording),
                            t.storage_pct, t.docked, t.live, t.viewers, None, None, None, None, None))
        else:
            reports.append((device_id, t.ts, received, battery.pct, battery.charging, str(t.recording),
                            t.storage_pct, t.docked, t.live, t.viewers,
                            gps.lat, gps.lon, gps.accuracy_m, gps.speed_mps, gps.heading_deg))
    online = [(device_id, up) for device_id, (received, up) in statuses.items()
              if device_id not in newest or received >= newest[device_id][0]]
    carried = [(device_id, officer, callsign) for device_id, officer, callsign in batch.carried]
    if not reports and not online and not carried:
        return []
    # Most batches fit one frame: encoded in one call, the same bytes as _pack() would join.
    # _pack() counts a comma per row and room for "o" always: one frame there iff this holds.
    frame: dict[str, object] = {"v": FRAME_VERSION, "t": reports, "s": online}
    if carried:
        frame["o"] = carried
    whole = orjson.dumps(frame)
    if len(whole) + bool(reports) + bool(online) + (1 if carried else 7) <= max_bytes:
        return [whole]
    return _pack([orjson.dumps(row) for row in reports], [orjson.dumps(row) for row in online],
                 [orjson.dumps(row) for row in carried], max_bytes)


def _pack(reports: list[bytes], online: list[bytes], carried: list[bytes], max_bytes: int) -> list[bytes]:
    """Rows (each already encoded) into as few frames of at most ``max_bytes`` as they fill."""
    head = b'{"v":%d,"t":[' % FRAME_VERSION
    empty = len(head) + len(b'],"s":[],"o":[]}')
    frames: list[bytes] = []
    rows: dict[str, list[bytes]] = {"t": [], "s": [], "o": []}
    size = empty

    def flush() -> None:
        nonlocal size
        t, s, o = rows["t"], rows["s"], rows["o"]
        if t or s or o:
            tail = b'],"o":[' + b",".join(o) + b"]}" if o else b"]}"
            frames.append(head + b",".join(t) + b'],"s":[' + b",".join(s) + tail)
        for kept in rows.values():
            kept.clear()
        size = empty

    for key, encoded in (("t", reports), ("s", online), ("o", carried)):
        for row in encoded:
            if size + len(row) + 1 > max_bytes:
                flush()
            rows[key].append(row)
            size += len(row) + 1
    flush()
    return frames


def decode_frame(payload: bytes) -> list[UnitUpdate]:
    """The unit updates of a frame, reports first, then statuses, then officers (FrameError
    if unreadable)."""
    try:
        frame = orjson.loads(payload)
        if not isinstance(frame, dict) or frame.get("v") != FRAME_VERSION:
            raise FrameError(f"not a version {FRAME_VERSION} frame")
        updates = [_report(row) for row in frame["t"]]
        updates += [(str(device_id), {"online": bool(up)}) for device_id, up in frame["s"]]
        updates += [(str(device_id), {"officer": _text(officer), "callsign": _text(callsign)})
                    for device_id, officer, callsign in frame.get("o", [])]
    except FrameError:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise FrameError(f"malformed frame: {error}") from error
    return updates


def _text(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise FrameError("an officer or callsign that is not text")
    return value


def _report(row: list[Any]) -> UnitUpdate:
    if len(row) != _ROW_LENGTH:
        raise FrameError(f"a report row has {len(row)} fields, not {_ROW_LENGTH}")
    (device_id, ts, received, battery_pct, charging, recording, storage_pct, docked, live, viewers,
     lat, lon, accuracy_m, speed_mps, heading_deg) = row
    at = datetime.fromisoformat(ts)
    # One dict literal per case: this runs for every unit update the API takes in.
    if lat is None:  # without a fix the unit keeps its last known position
        return str(device_id), {
            "ts": at, "received_at": datetime.fromisoformat(received), "battery_pct": battery_pct,
            "charging": charging, "recording": recording, "storage_pct": storage_pct, "docked": docked,
            "live": live, "viewers": viewers, "gps_fix": False, "online": True}
    return str(device_id), {
        "ts": at, "received_at": datetime.fromisoformat(received), "battery_pct": battery_pct,
        "charging": charging, "recording": recording, "storage_pct": storage_pct, "docked": docked,
        "live": live, "viewers": viewers, "gps_fix": True, "online": True, "lat": lat, "lon": lon,
        "accuracy_m": accuracy_m, "speed_mps": speed_mps, "heading_deg": heading_deg, "last_fix_at": at}
