"""Migration 9: what a consent covers, and which camera event granted it."""

from __future__ import annotations

import psycopg

from telemetry.migrations.base import Retention

__all__ = ["apply"]

_ACCOUNTABLE_CONSENT = """
-- The consent a request was accepted under (granted by its answer, or already in force),
-- and, when the camera was not asked, the force's rule that covered it. NULL rule with a
-- consent: the camera (its officer) or the policy accepted it. Retention deletes consents
-- before requests, so the link is let go rather than holding either back.
ALTER TABLE live_view_requests
    ADD COLUMN consent_id bigint REFERENCES live_view_consents (id) ON DELETE SET NULL,
    ADD COLUMN covered_rule text CHECK (covered_rule IN ('same_requester', 'officer_asked', 'policy_recording'));
CREATE INDEX live_view_requests_consent ON live_view_requests (consent_id) WHERE consent_id IS NOT NULL;
-- A request that granted a consent (before this migration) was accepted under it: a stream
-- running through the upgrade keeps its requester.
UPDATE live_view_requests r SET consent_id = c.id FROM live_view_consents c WHERE c.request_id = r.id;

-- The camera event (ts, seq) that granted an officer_request consent: a copy of it (a QoS 1
-- duplicate) or an older one (from the camera's buffer) grants nothing again.
ALTER TABLE live_view_consents ADD COLUMN event_ts timestamptz, ADD COLUMN event_seq bigint;
CREATE INDEX live_view_consents_event ON live_view_consents (device_id, event_ts DESC, event_seq DESC)
    WHERE event_ts IS NOT NULL;
"""


def apply(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_ACCOUNTABLE_CONSENT)
