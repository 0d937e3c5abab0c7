"""telemetry.store copies telemetry in PostgreSQL's binary format: the rows it stores are
the ones the text format stored, value for value, and a connection whose telemetry table
no longer has the copied column types is refused at start-up, by name, instead of every
batch failing later."""

from __future__ import annotations

from datetime import date, datetime, timezone

import msgspec
import orjson
import psycopg
import pytest

from core.reports import TelemetryReport
from telemetry.schema import ensure_partitions, features
from telemetry.store import _TELEMETRY_COLUMNS, Batch, StageMismatch, _telemetry_row, prepare_connection, write_batch
from tests.helpers.db import Database


def _report(seq: int, **body: object) -> TelemetryReport:
    report = {"seq": seq, "ts": "2026-12-01T12:59:58.123456+01:00", "battery": {"pct": 71.37, "charging": False},
              "gps": None, "recording": "recording", **body}
    return msgspec.json.decode(orjson.dumps(report), type=TelemetryReport)


def test_binary_copy_stores_what_the_text_copy_stored(pg: Database) -> None:
    """Awkward values (floats with many digits, extremes of each range, no fix, non-ASCII
    firmware, an offset timestamp) land as the text format landed them."""
    received = datetime(2026, 12, 1, 12, 0, 1, 654321, tzinfo=timezone.utc)
    reports = [
        ("dev-a", _report(1)),
        ("dev-b", _report(2**63 - 1, battery={"pct": 100, "charging": True, "temp_c": -40},
                          gps={"lat": -89.99999999999, "lon": 179.123456789012, "accuracy_m": 10_000,
                               "speed_mps": 0, "heading_deg": 359.9999999},
                          storage_pct=0.1 + 0.2, docked=True, firmware="fw-ünï ✓", live=True, viewers=1000)),
        ("dev-c", _report(3, gps={"lat": 51.5, "lon": -0.12, "accuracy_m": 6.2}, ts="2026-12-01T11:00:00Z")),
    ]
    with pg.connect() as conn:
        conn.autocommit = False
        prepare_connection(conn)
        with conn.transaction():
            if "native_partitioning" in features(conn):
                ensure_partitions(conn, {date(2026, 12, 1)})
            write_batch(conn, Batch(telemetry=[(d, received, t) for d, t in reports],
                                    new_devices={d for d, _ in reports}))
        conn.execute("CREATE TEMPORARY TABLE text_copy (LIKE telemetry)")
        with conn.cursor().copy(f"COPY text_copy ({_TELEMETRY_COLUMNS}) FROM STDIN") as copy:
            for d, t in reports:
                copy.write_row(_telemetry_row(d, received, t))
        stored = conn.execute(f"SELECT {_TELEMETRY_COLUMNS} FROM telemetry ORDER BY device_id").fetchall()
        expected = conn.execute(f"SELECT {_TELEMETRY_COLUMNS} FROM text_copy ORDER BY device_id").fetchall()
        conn.rollback()
    assert len(stored) == 3
    assert stored == expected
    assert stored[0][1] == datetime(2026, 12, 1, 11, 59, 58, 123456, tzinfo=timezone.utc)


def test_a_changed_column_type_is_refused_at_start_up(pg: Database) -> None:
    """If a migration changed a copied column's type, preparing the writer's connection
    fails with the column named, before any batch is lost to it."""
    with pg.connect() as conn:
        conn.execute("ALTER TABLE telemetry ALTER COLUMN viewers TYPE integer")
    with psycopg.connect(pg.url) as conn:
        with pytest.raises(StageMismatch, match="viewers"):
            prepare_connection(conn)
