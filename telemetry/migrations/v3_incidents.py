"""Migration 3: incidents, their units, and who was inside their geofence."""

from __future__ import annotations

import psycopg

from telemetry.migrations.base import Retention

__all__ = ["apply"]

_INCIDENTS = """
-- An incident: a place, an area around it (a circle: a cordon radius), and assigned units.
CREATE TABLE incidents (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title      text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    lat        double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
    lon        double precision NOT NULL CHECK (lon BETWEEN -180 AND 180),
    radius_m   real NOT NULL CHECK (radius_m > 0 AND radius_m <= 50000),
    borough    text,
    status     text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    closed_at  timestamptz
);
CREATE TABLE incident_units (
    incident_id bigint NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    device_id   text NOT NULL REFERENCES devices (device_id),
    assigned_by text NOT NULL,
    assigned_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (incident_id, device_id)
);
CREATE INDEX incident_units_device ON incident_units (device_id);
-- Which units are inside which open incident's area now: entering and leaving are alerts.
CREATE TABLE incident_presence (
    incident_id bigint NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    device_id   text NOT NULL REFERENCES devices (device_id),
    entered_at  timestamptz NOT NULL,
    PRIMARY KEY (incident_id, device_id)
);
"""


def apply(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_INCIDENTS)
