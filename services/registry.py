"""The device registry: who carries which camera, in which borough, in which role."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import orjson
import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from core.contract import SERVICE_PREFIX

__all__ = ["SERVICE_ACCOUNT_PREFIX", "DeviceRecord", "change_announcement", "provision_device", "revoke_device_secret",
           "upsert_devices", "verify_device_secret"]

_SECRET_BYTES = 32
#: Broker usernames and client ids of the services: no device may take one (core.contract).
SERVICE_ACCOUNT_PREFIX = SERVICE_PREFIX
# Verified against for an unknown device (same parameters as real hashes), so a wrong id
# costs as long as a wrong secret. A constant: it protects nothing.
_DUMMY_HASH = "$argon2id$v=19$m=8192,t=1,p=1$VgsHRw/YfwKf3xd54PrNbA$ldNJmaf/U5uR9UrWDhfpR6dmv17HHXKkkdg6ePkg58A"


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


def _hasher() -> PasswordHasher:
    """argon2id with light parameters: a device secret is 256 random bits, so the hash need not
    slow down guessing (nothing can enumerate 2^256), only keep the secret out of the table.
    The defaults for passwords (64 MiB, 3 passes, 4 lanes) cost 50-1000 ms per WHIP offer here."""
    return PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


def provision_device(conn: psycopg.Connection, *, record: DeviceRecord) -> str:
    """Register (or update) a device and give it a new secret, in the caller's transaction.

    Returns the secret, which exists nowhere else afterwards: only its argon2 hash is kept.
    A device provisioned again gets a new secret and the old one stops working.
    """
    if record.device_id.startswith(SERVICE_ACCOUNT_PREFIX):
        raise ValueError(f"device ids starting with {SERVICE_ACCOUNT_PREFIX!r} are the services' broker accounts")
    upsert_devices(conn, [record])
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    conn.execute(
        "INSERT INTO device_credentials (device_id, secret_hash) VALUES (%s, %s)"
        " ON CONFLICT (device_id) DO UPDATE SET secret_hash = EXCLUDED.secret_hash, created_at = now(),"
        " revoked_at = NULL",
        (record.device_id, _hasher().hash(secret)))
    return secret


def revoke_device_secret(conn: psycopg.Connection, *, device_id: str) -> bool:
    """Revoke a device's secret (when it is retired). True if it had a live one."""
    cursor = conn.execute("UPDATE device_credentials SET revoked_at = now() WHERE device_id = %s"
                          " AND revoked_at IS NULL", (device_id,))
    return cursor.rowcount > 0


def verify_device_secret(conn: psycopg.Connection, *, device_id: str, secret: str) -> bool:
    """True if ``secret`` is the device's current secret. Unknown, revoked or retired: False.

    An unknown device costs one argon2 verification too, so timing does not tell which
    device ids exist.
    """
    row = conn.execute(
        "SELECT c.secret_hash FROM device_credentials c JOIN devices d USING (device_id)"
        " WHERE c.device_id = %s AND c.revoked_at IS NULL AND d.retired_at IS NULL", (device_id,)).fetchone()
    stored = str(row[0]) if row is not None else _DUMMY_HASH
    try:
        _hasher().verify(stored, secret)
    except (VerificationError, InvalidHashError):
        return False
    return row is not None


def change_announcement(device_id: str, change: str) -> bytes:
    """The payload announcing a registry change on ``REGISTRY_TOPIC`` (after its commit), on
    which every API process re-reads the registry for its live feed."""
    return orjson.dumps({"device_id": device_id, "change": change})
