"""Migration 18: system alerts, about Watchfloor itself rather than a unit (a storage job
failing, telemetry/system_alerts.py).

A system alert has no device: ``device_id`` is NULL and ``subject`` names what it is about
(``storage_job:1000``); a unit's alert has a device and no subject, and the CHECK keeps the
two apart, so a query that joins devices never meets a system alert by accident. One open
system alert per kind and subject, whichever process raises it (the same guarantee as
``alerts_one_open`` for units, whose NULL device ids it does not constrain).
"""

from __future__ import annotations

import psycopg

from telemetry.migrations.base import Retention

__all__ = ["apply"]

_SYSTEM_ALERTS = """
ALTER TABLE alerts ALTER COLUMN device_id DROP NOT NULL;
ALTER TABLE alerts ADD COLUMN subject text;
ALTER TABLE alerts ADD CONSTRAINT alerts_device_or_subject CHECK ((device_id IS NULL) <> (subject IS NULL));
CREATE UNIQUE INDEX alerts_one_open_system ON alerts (kind, subject) WHERE device_id IS NULL AND status <> 'resolved';
"""


def apply(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_SYSTEM_ALERTS)
