"""Migration 11: the force's alert policy, per alert kind and device role, with the defaults
for a large force (telemetry/alert_policy.py says what the outcomes mean).

Self-contained: the kinds, roles and defaults are written out here, as they were when this
migration was released, and never change with the code.
"""

from __future__ import annotations

import psycopg

from telemetry.migrations.base import Retention

__all__ = ["apply"]

_ALERT_POLICY = """
CREATE TABLE alert_policy (
    kind             text NOT NULL CHECK (kind ~ '^[a-z_]{1,40}$'),
    role             text NOT NULL CHECK (role ~ '^([a-z_]{1,40}|[*])$'),  -- a device role, or * for any
    outcome          text NOT NULL
                     CHECK (outcome IN ('critical', 'high', 'warning', 'info', 'activity', 'off')),
    -- for a unit assigned to an open incident; NULL: the same as outcome
    assigned_outcome text CHECK (assigned_outcome IN ('critical', 'high', 'warning', 'info', 'activity', 'off')),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    updated_by       text NOT NULL DEFAULT 'migration 11',
    PRIMARY KEY (kind, role)
);

-- One row: bumped by every change (which also serialises two admins' changes), so that a
-- worker can say which policy it applies.
CREATE TABLE alert_policy_version (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    version bigint NOT NULL
);
INSERT INTO alert_policy_version (version) VALUES (1);

-- "Activity only": recorded as an alert resolved at once, never raised.
ALTER TABLE alerts DROP CONSTRAINT alerts_outcome_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_outcome_check
    CHECK (outcome IN ('resolved', 'false_alarm', 'cleared', 'activity'));

-- The defaults: what ingest raised before this migration, except that recording is activity
-- only for most units and information for a firearms unit unless it is assigned to an open
-- incident (then high, as before): a 300-camera fleet no longer fills the panel with
-- "recording started".
INSERT INTO alert_policy (kind, role, outcome, assigned_outcome) VALUES
    ('emergency',              '*',        'critical', NULL),
    ('recording',              '*',        'activity', NULL),
    ('recording',              'firearms', 'info',     'high'),
    ('watch_me',               '*',        'high',     NULL),
    ('geofence',               '*',        'warning',  NULL),
    ('battery_critical',       '*',        'critical', NULL),
    ('battery_low',            '*',        'warning',  NULL),
    ('storage_full',           '*',        'warning',  NULL),
    ('gps_lost',               '*',        'warning',  NULL),
    ('gps_lost',               'firearms', 'high',     NULL),
    ('offline',                '*',        'warning',  NULL),
    ('offline',                'firearms', 'high',     NULL),
    ('assigned_not_recording', '*',        'high',     NULL);
"""


def apply(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_ALERT_POLICY)
