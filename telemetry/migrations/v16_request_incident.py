"""Migration 16: the incident a live-view request names, and the rule ``same_incident``.

A request may name an incident (the requester sees it, the unit is assigned to it); a later
request naming the incident of the request whose acceptance created the consent in force is
covered by it (services/consent.py). Existing requests name none. Retention deletes
incidents and requests on their own clocks, so the link is let go rather than holding
either back.
"""

from __future__ import annotations

import psycopg

from telemetry.migrations.base import Retention

__all__ = ["apply"]

_REQUEST_INCIDENT = """
ALTER TABLE live_view_requests
    ADD COLUMN incident_id bigint REFERENCES incidents (id) ON DELETE SET NULL;
ALTER TABLE live_view_requests DROP CONSTRAINT live_view_requests_covered_rule_check;
ALTER TABLE live_view_requests ADD CONSTRAINT live_view_requests_covered_rule_check
    CHECK (covered_rule IN ('same_requester', 'same_incident', 'officer_asked', 'policy_recording'));
"""


def apply(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_REQUEST_INCIDENT)
