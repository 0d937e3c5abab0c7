"""Migration 6: the OIDC tokens accepted, until they expire."""

from __future__ import annotations

import psycopg

from telemetry.migrations.base import Retention

__all__ = ["apply"]

_OIDC_SIGN_INS = """
-- One row per OIDC token Watchfloor has accepted, until it expires: its first use is the
-- sign-in, recorded once in the audit log whichever API process sees it first.
CREATE TABLE oidc_sign_ins (
    token_sha256 bytea PRIMARY KEY,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX oidc_sign_ins_expires ON oidc_sign_ins (expires_at);
"""


def apply(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_OIDC_SIGN_INS)
