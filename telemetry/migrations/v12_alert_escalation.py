"""Migration 12: escalation of unacknowledged alerts, each alert's history, and the geofence's
pending crossings (a unit must stay clearly across the boundary for a dwell time).

``escalated_at`` is set once, by whichever ingest worker's sweep first finds the alert still
open past its kind's deadline (a conditional UPDATE ... WHERE escalated_at IS NULL), so
several workers never escalate one alert twice. ``alert_history`` records what happened to an
alert after it was raised (escalated; acknowledged in bulk), one row per act and alert.
"""

from __future__ import annotations

import psycopg

from telemetry.migrations.base import Retention

__all__ = ["apply"]

_ESCALATION = """
ALTER TABLE alerts ADD COLUMN escalated_at timestamptz;
ALTER TABLE alerts ADD COLUMN escalation_level smallint NOT NULL DEFAULT 0 CHECK (escalation_level >= 0);
-- The sweep looks only at open, not yet escalated alerts.
CREATE INDEX alerts_escalation_due ON alerts (kind, raised_at) WHERE status = 'open' AND escalated_at IS NULL;

CREATE TABLE alert_history (
    id       bigserial PRIMARY KEY,
    alert_id bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    at       timestamptz NOT NULL DEFAULT now(),
    action   text NOT NULL CHECK (action IN ('escalated', 'acknowledged')),
    actor    text NOT NULL,
    detail   text
);
CREATE INDEX alert_history_alert ON alert_history (alert_id, at);

-- A unit seen clearly across an open incident's boundary (by more than the margin, with an
-- accurate fix), since when; it enters (or leaves) once it has stayed so for the dwell
-- time, and a fix clearly back on the other side cancels it (telemetry/alerts.py).
CREATE TABLE geofence_pending (
    incident_id bigint NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    device_id   text NOT NULL REFERENCES devices (device_id),
    toward      text NOT NULL CHECK (toward IN ('inside', 'outside')),
    since       timestamptz NOT NULL,
    PRIMARY KEY (incident_id, device_id)
);
"""


def apply(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_ESCALATION)
