"""Migration 8: a token version per user, to revoke tokens."""

from __future__ import annotations

import psycopg

from telemetry.migrations.base import Retention

__all__ = ["apply"]

_TOKEN_VERSIONS = """
-- A user's tokens carry the version they were issued at; bumping it (sign-out, a change of
-- role or areas, disabling) ends every token issued before.
ALTER TABLE users ADD COLUMN token_version integer NOT NULL DEFAULT 0;
"""


def apply(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_TOKEN_VERSIONS)
