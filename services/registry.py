"""The device registry: who carries which camera, in which borough, in which role."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson
import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from core.contract import SERVICE_PREFIX
from services import audit, viewings
from telemetry.custody import RegistryOfficer, registry_officers, sync_registry

__all__ = ["SERVICE_ACCOUNT_PREFIX", "DeviceRecord", "RegistryEntry", "RetireResult", "change_announcement",
           "create_device", "end_live_view", "lock_device", "provision_device", "reactivate_device", "retire_device",
           "revoke_device_secret", "update_device", "upsert_devices", "verify_device_secret"]

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


@dataclass(frozen=True)
class RegistryEntry:
    """A device as the registry holds it, before any area check."""

    borough: str | None
    retired: bool


def upsert_devices(conn: psycopg.Connection, devices: Iterable[DeviceRecord]) -> int:
    """Register or update devices in the caller's transaction: for trusted tools (the demo's
    and the simulator's seeding, ``watchfloor devices provision``), which check nothing. A
    retired device stays retired: bringing one back is :func:`reactivate_device`, an act of
    its own on the record, never a side effect of registering. A changed officer or callsign
    moves the camera's custody window (telemetry/custody.py) from now."""
    devices = list(devices)
    before = registry_officers(conn, [d.device_id for d in devices])
    rows = [(d.device_id, d.callsign, d.officer, d.borough, d.role) for d in devices]
    conn.cursor().executemany(
        "INSERT INTO devices (device_id, callsign, officer, borough, role) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (device_id) DO UPDATE SET callsign = EXCLUDED.callsign,"
        " officer = EXCLUDED.officer, borough = EXCLUDED.borough, role = EXCLUDED.role,"
        " auto_registered = false",
        rows,
    )
    sync_registry(conn, before=before, after=[_officer(d) for d in devices])
    return len(rows)


def _officer(record: DeviceRecord) -> RegistryOfficer:
    return RegistryOfficer(record.device_id, record.officer, record.callsign)


def lock_device(conn: psycopg.Connection, *, device_id: str) -> RegistryEntry | None:
    """The device's current registry entry, locked until the caller's transaction ends, so
    that an area check on it still holds when the write that follows runs. None if unknown."""
    row = conn.execute("SELECT borough, retired_at IS NOT NULL FROM devices WHERE device_id = %s FOR UPDATE",
                       (device_id,)).fetchone()
    return None if row is None else RegistryEntry(row[0], bool(row[1]))


def create_device(conn: psycopg.Connection, *, record: DeviceRecord) -> bool:
    """Register a new device. False (and nothing written) if the id is already registered,
    retired or not: creating never touches an existing device. Its officer's custody window
    opens now."""
    cursor = conn.execute(
        "INSERT INTO devices (device_id, callsign, officer, borough, role) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (device_id) DO NOTHING",
        (record.device_id, record.callsign, record.officer, record.borough, record.role))
    if cursor.rowcount == 0:
        return False
    sync_registry(conn, before={}, after=[_officer(record)])
    return True


def update_device(conn: psycopg.Connection, *, record: DeviceRecord) -> bool:
    """Change a registered device's callsign, officer, borough and role; whether it is retired
    does not change. False if the id is unknown. A changed officer or callsign moves the
    camera's custody window from now (telemetry/custody.py)."""
    before = registry_officers(conn, [record.device_id])
    cursor = conn.execute(
        "UPDATE devices SET callsign = %s, officer = %s, borough = %s, role = %s, auto_registered = false"
        " WHERE device_id = %s",
        (record.callsign, record.officer, record.borough, record.role, record.device_id))
    if cursor.rowcount == 0:
        return False
    sync_registry(conn, before=before, after=[_officer(record)])
    return True


@dataclass(frozen=True)
class RetireResult:
    """What retiring did: whether the device was already retired, and whether it had a live secret."""

    already_retired: bool
    credentials_revoked: bool


def retire_device(conn: psycopg.Connection, *, device_id: str, actor: str,
                  details: Mapping[str, object] | None = None) -> RetireResult | None:
    """Retire a device in the caller's transaction: mark it retired (keeping the first date),
    revoke its secret so that it may no longer connect or stream, end its live-view consent
    (:func:`end_live_view`), and record
    ``device_retired`` by ``actor`` with ``details`` added (the API and the CLI both retire
    through here, so the act and its record cannot drift apart). None if the id is unknown;
    any area check is the caller's, before this."""
    row = conn.execute("SELECT retired_at IS NOT NULL FROM devices WHERE device_id = %s FOR UPDATE",
                       (device_id,)).fetchone()
    if row is None:
        return None
    conn.execute("UPDATE devices SET retired_at = coalesce(retired_at, now()) WHERE device_id = %s", (device_id,))
    revoked = revoke_device_secret(conn, device_id=device_id)
    audit.record(conn, actor=actor, action="device_retired", device_id=device_id,
                 details={"credentials_revoked": revoked, **(details or {})})
    end_live_view(conn, device_id=device_id, reason="device_retired", actor=actor)
    return RetireResult(already_retired=bool(row[0]), credentials_revoked=revoked)


def reactivate_device(conn: psycopg.Connection, *, device_id: str) -> bool:
    """Bring a retired device back into the fleet. True if it was retired. Its revoked secret
    stays revoked: it connects again only once provisioned with a new one."""
    cursor = conn.execute("UPDATE devices SET retired_at = NULL WHERE device_id = %s AND retired_at IS NOT NULL",
                          (device_id,))
    return cursor.rowcount > 0


def _hasher() -> PasswordHasher:
    """argon2id with light parameters: a device secret is 256 random bits, so the hash need not
    slow down guessing (nothing can enumerate 2^256), only keep the secret out of the table.
    The defaults for passwords (64 MiB, 3 passes, 4 lanes) cost 50-1000 ms per WHIP offer here."""
    return PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


def provision_device(conn: psycopg.Connection, *, record: DeviceRecord) -> str:
    """Register (or update) a device and give it a new secret, in the caller's transaction.

    Returns the secret, which exists nowhere else afterwards: only its argon2 hash is kept.
    A device provisioned again gets a new secret and the old one stops working, and its
    live-view consent ends (:func:`end_live_view`).
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
    end_live_view(conn, device_id=record.device_id, reason="device_reprovisioned", actor="system")
    return secret


def end_live_view(conn: psycopg.Connection, *, device_id: str, reason: str, actor: str) -> None:
    """End the device's live-view consent in force, in the caller's transaction: a camera
    that is retired, or has a new secret, streams no more under what was agreed before. The
    API process that serves its stream closes it (and so its viewings, recorded with
    ``reason``) at its next sweep, or at once on the registry announcement that follows
    the commit (services/live_view/service.py, reconciling)."""
    ended = viewings.end_consent(conn, device_id=device_id, reason=reason)
    if ended is not None:
        audit.record(conn, actor=actor, action="live_view_ended", device_id=device_id,
                     details={"consent_id": ended["consent_id"], "basis": ended["basis"], "reason": reason})


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
