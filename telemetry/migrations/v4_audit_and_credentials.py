"""Migration 4: the append-only audit log and the devices' credentials."""

from __future__ import annotations

import psycopg

from telemetry.migrations.base import Retention

__all__ = ["apply"]

_AUDIT_AND_CREDENTIALS = """
-- The audit log: append-only and hash-chained (services/audit.py writes and verifies it).
-- seq numbers the chain without gaps (the identity may skip a value when a transaction
-- rolls back), so a removed entry shows as a missing number.
CREATE TABLE audit_log (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq       bigint NOT NULL UNIQUE,
    at        timestamptz NOT NULL,
    actor     text NOT NULL,
    action    text NOT NULL,
    device_id text,
    details   jsonb,
    prev_hash bytea NOT NULL,
    hash      bytea NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor_at ON audit_log (actor, at);
CREATE INDEX audit_log_device_at ON audit_log (device_id, at) WHERE device_id IS NOT NULL;

-- Revoking privileges does not bind the owner or a superuser; the trigger does, until a
-- superuser disables it on purpose, and then the hash chain shows what was changed.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;
CREATE FUNCTION watchfloor_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION watchfloor_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION watchfloor_audit_append_only();

-- One secret per device (MQTT password and WHIP token); only its argon2 hash is kept.
CREATE TABLE device_credentials (
    device_id   text PRIMARY KEY REFERENCES devices (device_id),
    secret_hash text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
"""


def apply(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_AUDIT_AND_CREDENTIALS)
