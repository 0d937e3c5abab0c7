"""Migration 13: offline per profile, and a second escalation level.

- ``on_duty`` (contract 1.2): whether the camera's officer is on duty, per report and in the
  latest state; a unit whose last report says off duty, like a docked one, is never offline.
- ``alert_policy.after_s``: for ``offline``, how long a unit of the rule's role may be quiet
  before it is offline (NULL: ``WATCHFLOOR_ALERT_OFFLINE_AFTER_S``). Firearms units get 60 s,
  where the rule is still the one migration 11 wrote (a rule an admin changed is theirs).
- A firearms unit's lost GPS: high only when it is assigned to an open incident, a warning
  otherwise (again only where migration 11's rule is unchanged).
- The escalation sweep looks at open alerts below the top level (2), not only unescalated ones.

Existing rows keep their values; the new columns start NULL (unknown), which changes nothing.
"""

from __future__ import annotations

import psycopg

from telemetry.migrations.base import Retention

__all__ = ["apply"]

_OFFLINE_PROFILE = """
ALTER TABLE telemetry ADD COLUMN on_duty boolean;
ALTER TABLE device_latest ADD COLUMN on_duty boolean;

ALTER TABLE alert_policy ADD COLUMN after_s double precision
    CHECK (after_s IS NULL OR (after_s >= 5 AND after_s <= 86400));
UPDATE alert_policy SET after_s = 60, updated_by = 'migration 13'
    WHERE kind = 'offline' AND role = 'firearms' AND updated_by = 'migration 11';
-- A firearms unit without a fix is high when it is deployed (assigned to an open incident), a
-- warning on patrol, as its recording is: indoors is routine, and high alerts must stay rare
-- (tests/test_alert_noise.py).
UPDATE alert_policy SET outcome = 'warning', assigned_outcome = 'high', updated_by = 'migration 13'
    WHERE kind = 'gps_lost' AND role = 'firearms' AND updated_by = 'migration 11';

DROP INDEX alerts_escalation_due;
CREATE INDEX alerts_escalation_due ON alerts (kind, raised_at) WHERE status = 'open' AND escalation_level < 2;
"""


def apply(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_OFFLINE_PROFILE)
