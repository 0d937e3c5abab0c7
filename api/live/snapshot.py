"""The snapshot message, format 2: a view's units as columns, deflated once per view. Pure.

As a JSON array of unit objects, 22,000 units were 10.9 MB: every field name 22,000
times, and a screen waited for all of it. Here each field is one array (``columns``), a
field with few distinct values (borough, role, recording state) is its distinct values
once and an index per unit, and the JSON is deflated: about 1.2 MB for the same units
(5.2 MB inflated). Values are exactly those of the deltas (times as ISO 8601, coordinates
as stored, not rounded), so a client merges deltas into what it decoded with no
conversion, and a round trip loses nothing.

On the wire (docs/api.md, "Live feed") the snapshot is the one binary websocket message:
raw DEFLATE (RFC 1951) of the JSON text::

    {"type": "snapshot", "format": 2, "alerts": [...],
     "units": {"count": N, "columns": {"device_id": [...], "borough": {"values": [...], "codes": [...]}, ...}}}

The units part is the expensive one and the same for every client of a view, the alerts
part is per client (their kinds and areas): each is deflated on its own and the pieces are
joined. That is a valid DEFLATE stream because every piece but the last ends on a byte
boundary with a sync flush and without the final-block bit, and no piece refers back into
another (each has a compressor of its own). So the units are deflated once per view, and
each client costs only its alerts'. Permessage-deflate stays off (api/app.py): it would
compress every message again for every client.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from services.accounts import Principal

__all__ = ["FORMAT", "decode_units", "deflate_units", "feed_alert", "read_message", "snapshot_message"]

FORMAT = 2
#: Few distinct values among thousands of units: each sent once, and per unit its index.
DICTIONARY_FIELDS = frozenset({"borough", "role", "recording"})
#: zlib's fastest level: for tests/test_live_snapshot.py's 22,000 units, 26 ms of CPU for
#: 1.24 MB where level 6 took 162 ms for 1.09 MB. Deflating holds the event loop, and the
#: bound (3 MB) is met either way.
_LEVEL = 1


def _column(name: str, units: list[dict[str, Any]]) -> Any:
    values = [u[name] for u in units]
    # Text only: as dictionary keys, True, 1 and 1.0 would be one value.
    if name not in DICTIONARY_FIELDS or not all(v is None or isinstance(v, str) for v in values):
        return values
    index: dict[Any, int] = {}
    codes = [index.setdefault(v, len(index)) for v in values]
    return {"values": list(index), "codes": codes}


def _deflate(data: bytes, *, last: bool) -> bytes:
    """``data`` as a piece of a raw DEFLATE stream: the last piece ends the stream, any
    other ends byte-aligned without it (a sync flush), so pieces can be joined."""
    packer = zlib.compressobj(_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def deflate_units(units: list[dict[str, Any]]) -> bytes:
    """The units part of a snapshot (``units`` all of one view: the same fields), encoded
    and deflated: the piece that :func:`snapshot_message` puts in every client's message."""
    fields = list(units[0]) if units else []
    encoded = orjson.dumps({"count": len(units), "columns": {name: _column(name, units) for name in fields}})
    return _deflate(encoded, last=False)


def snapshot_message(*, alerts: list[dict[str, Any]], units: bytes) -> bytes:
    """One client's snapshot message: its ``alerts`` around the view's ``units`` piece."""
    head = b'{"type":"snapshot","format":%d,"alerts":%s,"units":' % (FORMAT, orjson.dumps(alerts))
    return _deflate(head, last=False) + units + _deflate(b"}", last=True)


def decode_units(units: dict[str, Any]) -> list[dict[str, Any]]:
    """The unit objects of a snapshot's ``units`` part (what :func:`deflate_units` encoded)."""
    names = list(units["columns"])
    columns = [column if isinstance(column, list) else [column["values"][i] for i in column["codes"]]
               for column in units["columns"].values()]
    decoded = [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
    if len(decoded) != units["count"]:
        raise ValueError(f"{len(decoded)} units in columns of {units['count']}")
    return decoded


def read_message(raw: str | bytes) -> dict[str, Any]:
    """A live-feed message as a client reads it (tests' and benches' reference reader): a
    binary one inflated, and a snapshot's units decoded into unit objects."""
    if isinstance(raw, bytes):
        raw = zlib.decompress(raw, -zlib.MAX_WBITS)
    message: dict[str, Any] = orjson.loads(raw)
    if message.get("type") == "snapshot":
        if message.get("format") != FORMAT:
            raise ValueError(f"a snapshot of format {message.get('format')}, not {FORMAT}")
        message["units"] = decode_units(message["units"])
    return message


def feed_alert(alert: dict[str, Any], who: Principal) -> dict[str, Any]:
    """An alert as the feed sends it to ``who``, in the snapshot and after it: who carried the
    camera is for the roles that see people (a fleet manager sees the unit's health)."""
    return alert if who.sees_positions else {k: v for k, v in alert.items() if k != "officer"}
