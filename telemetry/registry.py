"""The device registry: who carries which camera, in which borough, in which role."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg

__all__ = ["DeviceRecord", "upsert_devices"]


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    callsign: str | None
    officer: str | None
    borough: str | None
    role: str


def upsert_devices(conn: psycopg.Connection, devices: Iterable[DeviceRecord]) -> int:
    """Register or update devices (un-retiring them) in the caller's transaction."""
    rows = [(d.device_id, d.callsign, d.officer, d.borough, d.role) for d in devices]
    conn.cursor().executemany(
        "INSERT INTO devices (device_id, callsign, officer, borough, role) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (device_id) DO UPDATE SET callsign = EXCLUDED.callsign,"
        " officer = EXCLUDED.officer, borough = EXCLUDED.borough, role = EXCLUDED.role,"
        " auto_registered = false, retired_at = NULL",
        rows,
    )
    return len(rows)
