"""Migration 15: incident command. An incident gains its grade, a reference (a CAD number),
its commander, an optional drawn polygon, and on closing the outcome and who closed it.

An incident without a polygon stays a circle (lat, lon, radius_m), so every incident created
before keeps working unchanged. A polygon incident also keeps lat, lon and radius_m: its
vertices' mean and the circle that bounds it, so everything that places an incident on the
map or bounds its size goes on working. The polygon is a closed GeoJSON ring of [lon, lat]
pairs, checked by the API (telemetry/geometry.py); the CHECK here is only a last line.
"""

from __future__ import annotations

import psycopg

from telemetry.migrations.base import Retention

__all__ = ["apply"]

_COMMAND = """
ALTER TABLE incidents ADD COLUMN grade text NOT NULL DEFAULT 'standard'
    CHECK (grade IN ('immediate', 'priority', 'standard', 'scheduled'));
ALTER TABLE incidents ADD COLUMN reference text CHECK (length(reference) BETWEEN 1 AND 40);
ALTER TABLE incidents ADD COLUMN commander text;
ALTER TABLE incidents ADD COLUMN polygon jsonb
    CHECK (polygon IS NULL OR (jsonb_typeof(polygon) = 'array' AND jsonb_array_length(polygon) BETWEEN 4 AND 65));
ALTER TABLE incidents ADD COLUMN outcome text
    CHECK (outcome IN ('resolved', 'arrest', 'stood_down', 'no_trace', 'handed_over'));
ALTER TABLE incidents ADD COLUMN closed_by text;
-- The closed incidents' search: newest first within a time range, by reference.
CREATE INDEX incidents_closed ON incidents (closed_at DESC) WHERE status = 'closed';
CREATE INDEX incidents_reference ON incidents (lower(reference)) WHERE reference IS NOT NULL;
"""


def apply(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_COMMAND)
