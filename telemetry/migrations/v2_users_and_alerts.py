"""Migration 2: local users and alerts."""

from __future__ import annotations

import psycopg

from telemetry.migrations.base import Retention

__all__ = ["apply"]

_USERS_AND_ALERTS = """
CREATE TABLE users (
    username      text PRIMARY KEY CHECK (username ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    password_hash text NOT NULL,
    role          text NOT NULL
                  CHECK (role IN ('operator', 'firearms_commander', 'fleet_manager', 'auditor', 'admin')),
    areas         text[] NOT NULL DEFAULT '{}',  -- borough names; '{*}' means every borough
    display_name  text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz
);

CREATE TABLE alerts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id       text NOT NULL REFERENCES devices (device_id),
    kind            text NOT NULL,
    severity        text NOT NULL CHECK (severity IN ('info', 'warning', 'high', 'critical')),
    status          text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'acknowledged', 'resolved')),
    detail          text NOT NULL,
    raised_at       timestamptz NOT NULL DEFAULT now(),
    acknowledged_at timestamptz,
    acknowledged_by text,
    resolved_at     timestamptz,
    resolved_by     text,
    outcome         text CHECK (outcome IN ('resolved', 'false_alarm', 'cleared')),
    note            text
);
-- One open alert per device and kind, whichever ingest worker raises it.
CREATE UNIQUE INDEX alerts_one_open ON alerts (device_id, kind) WHERE status <> 'resolved';
CREATE INDEX alerts_status_raised ON alerts (status, raised_at DESC);
"""


def apply(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_USERS_AND_ALERTS)
