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
     "s": [[device_id, online], ...]}

A batch larger than one frame may carry (``FRAME_MAX_BYTES``, under the broker's 64 KiB
``message_size_limit``, past which Mosquitto drops the publisher's connection) goes out as
several frames, each whole units: a few at full rate, most batches one.

``t`` holds each unit's newest report of the batch (by ``ts``, then ``seq``), ``lat`` to
``heading_deg`` null without a fix; ``s`` a unit's online status where a status message
came after its newest report in the batch (a report is proof of life, as in the database).
Times are ISO 8601. The receiver compares ``ts`` per unit, so frames of several workers may
arrive in any order.
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
    """The frames of a committed ``batch``: none when it changed no unit's live state
    (events reach the screens as alerts), more than one when one would exceed ``max_bytes``."""
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
    if not reports and not online:
        return []
    # Most batches fit one frame: encoded in one call, the same bytes as _pack() would join.
    whole = orjson.dumps({"v": FRAME_VERSION, "t": reports, "s": online})
    if len(whole) <= max_bytes:
        return [whole]
    return _pack([orjson.dumps(row) for row in reports], [orjson.dumps(row) for row in online], max_bytes)


def _pack(reports: list[bytes], online: list[bytes], max_bytes: int) -> list[bytes]:
    """Rows (each already encoded) into as few frames of at most ``max_bytes`` as they fill."""
    head = b'{"v":%d,"t":[' % FRAME_VERSION
    frames: list[bytes] = []
    t: list[bytes] = []
    s: list[bytes] = []
    size = len(head) + len(b'],"s":[]}')

    def flush() -> None:
        nonlocal t, s, size
        if t or s:
            frames.append(head + b",".join(t) + b'],"s":[' + b",".join(s) + b"]}")
        t, s, size = [], [], len(head) + len(b'],"s":[]}')

    for rows, into in ((reports, "t"), (online, "s")):
        for row in rows:
            if size + len(row) + 1 > max_bytes:
                flush()
            (t if into == "t" else s).append(row)
            size += len(row) + 1
    flush()
    return frames


def decode_frame(payload: bytes) -> list[UnitUpdate]:
    """The unit updates of a frame, reports first, then statuses (FrameError if unreadable)."""
    try:
        frame = orjson.loads(payload)
        if not isinstance(frame, dict) or frame.get("v") != FRAME_VERSION:
            raise FrameError(f"not a version {FRAME_VERSION} frame")
        updates = [_report(row) for row in frame["t"]]
        updates += [(str(device_id), {"online": bool(up)}) for device_id, up in frame["s"]]
    except FrameError:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise FrameError(f"malformed frame: {error}") from error
    return updates


def _report(row: list[Any]) -> UnitUpdate:
    if len(row) != _ROW_LENGTH:
        raise FrameError(f"a report row has {len(row)} fields, not {_ROW_LENGTH}")
    (device_id, ts, received, battery_pct, charging, recording, storage_pct, docked, live, viewers,
     lat, lon, accuracy_m, speed_mps, heading_deg) = row
    at = datetime.fromisoformat(ts)
    fields = {"ts": at, "received_at": datetime.fromisoformat(received), "battery_pct": battery_pct,
              "charging": charging, "recording": recording, "storage_pct": storage_pct, "docked": docked,
              "live": live, "viewers": viewers, "gps_fix": lat is not None, "online": True}
    if lat is not None:  # without a fix the unit keeps its last known position
        fields.update(lat=lat, lon=lon, accuracy_m=accuracy_m, speed_mps=speed_mps, heading_deg=heading_deg,
                      last_fix_at=at)
    return str(device_id), fields
