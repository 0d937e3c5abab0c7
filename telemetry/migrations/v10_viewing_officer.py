"""Migration 10: the officer who carried the camera, kept with each viewing session."""

from __future__ import annotations

import psycopg

from telemetry.migrations.base import Retention

__all__ = ["apply"]

_VIEWING_OFFICER = """
-- Who was watched: the registry's officer for the unit when the viewing (or the refused
-- attempt) began. A unit changes hands; "who watched me" must follow the officer who wore it
-- then, not whoever has it now. NULL for sessions recorded before this migration (unknown)
-- and for a unit with no officer in the registry.
ALTER TABLE viewing_sessions ADD COLUMN officer text;
CREATE INDEX viewing_sessions_officer ON viewing_sessions (officer, started_at DESC) WHERE officer IS NOT NULL;
"""


def apply(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_VIEWING_OFFICER)
