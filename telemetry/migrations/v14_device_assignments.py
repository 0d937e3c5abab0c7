"""Migration 14: who carried which camera, when (``device_assignments``).

A window per (camera, officer, callsign): ``valid_from`` inclusive, ``valid_to`` exclusive,
NULL while the officer still has it. Two rules hold in the database, whoever writes:

* a camera's windows never overlap. An exclusion constraint would need ``btree_gist`` for
  the text ``device_id``, which the embedded server (pgserver) does not ship, so a trigger
  checks it instead. The trigger first locks the device's registry row (``FOR NO KEY UPDATE``,
  which ingest's foreign-key checks do not wait for), so two transactions cannot each add
  one of two overlapping windows unseen by the other;
* an officer holds at most one open window (a partial unique index): checking out a second
  camera ends the first (telemetry/custody.py does that before opening).

The registry's officer becomes an open window, so that attribution starts from today's data.
It opens at the registry's last recorded change of that device (the latest ``device_registered``
or ``device_provisioned`` entry of the audit log) or, without one, at its registration: the
officer was in the registry by then, and claiming earlier time for them could attribute
another officer's fixes to them. Where one officer is registered on several cameras (the
registry never forbade it), the most recently changed camera keeps the open window and the
others' windows close now. Retired cameras get none.
"""

from __future__ import annotations

import psycopg

from telemetry.migrations.base import Retention

__all__ = ["apply"]

_ASSIGNMENTS = """
CREATE TABLE device_assignments (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id  text NOT NULL REFERENCES devices (device_id),
    officer    text NOT NULL CHECK (length(officer) BETWEEN 1 AND 100),
    callsign   text CHECK (length(callsign) <= 32),
    valid_from timestamptz NOT NULL,
    valid_to   timestamptz CHECK (valid_to > valid_from),
    -- who opened and closed it: 'device' (an undocked or docked event), 'registry' (a registry
    -- change), 'migration', or the admin's name ('cli:...' at the command line)
    opened_by  text NOT NULL,
    closed_by  text
);
CREATE UNIQUE INDEX device_assignments_open_device ON device_assignments (device_id) WHERE valid_to IS NULL;
CREATE UNIQUE INDEX device_assignments_open_officer ON device_assignments (officer) WHERE valid_to IS NULL;
-- The attribution's range join probes a device's windows by start; an officer's track its windows.
CREATE INDEX device_assignments_device ON device_assignments (device_id, valid_from);
CREATE INDEX device_assignments_officer ON device_assignments (officer, valid_from);

CREATE FUNCTION watchfloor_assignments_no_overlap() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM devices WHERE device_id = NEW.device_id FOR NO KEY UPDATE;
    IF EXISTS (SELECT 1 FROM device_assignments a WHERE a.device_id = NEW.device_id AND a.id <> NEW.id
               AND tstzrange(a.valid_from, a.valid_to) && tstzrange(NEW.valid_from, NEW.valid_to)) THEN
        RAISE EXCEPTION 'assignment of % from % to % overlaps another of the same device',
            NEW.device_id, NEW.valid_from, coalesce(NEW.valid_to::text, 'open')
            USING ERRCODE = 'exclusion_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER device_assignments_no_overlap AFTER INSERT OR UPDATE OF device_id, valid_from, valid_to
    ON device_assignments FOR EACH ROW EXECUTE FUNCTION watchfloor_assignments_no_overlap();

WITH registry AS (
    SELECT d.device_id, d.officer, d.callsign,
           greatest(d.registered_at, coalesce((SELECT max(l.at) FROM audit_log l WHERE l.device_id = d.device_id
               AND l.action IN ('device_registered', 'device_provisioned')), d.registered_at)) AS since
    FROM devices d WHERE d.officer IS NOT NULL AND d.officer <> '' AND d.retired_at IS NULL
), ranked AS (
    SELECT *, row_number() OVER (PARTITION BY officer ORDER BY since DESC, device_id) AS n FROM registry
)
INSERT INTO device_assignments (device_id, officer, callsign, valid_from, valid_to, opened_by, closed_by)
SELECT device_id, left(officer, 100), left(callsign, 32), least(since, now() - interval '1 microsecond'),
       CASE WHEN n = 1 THEN NULL ELSE now() END, 'migration', CASE WHEN n = 1 THEN NULL ELSE 'migration' END
FROM ranked;
"""


def apply(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_ASSIGNMENTS)
