"""Migration 7: the keyed audit chain and its checkpoints, and partition functions that a
runtime role (owning no table) may call.
"""

from __future__ import annotations

import psycopg

from telemetry.migrations.base import Retention

__all__ = ["apply"]

_KEYED_AUDIT = """
-- Entries chained with the audit key (HMAC) say so; those written before stay sha256 and
-- verify as before (services/audit.py). Adding a column fires no UPDATE trigger.
ALTER TABLE audit_log ADD COLUMN keyed boolean NOT NULL DEFAULT false;

-- Checkpoints exported by `watchfloor audit checkpoint`, MACed with the audit key: the API's
-- verify reports against the latest valid one. Append-only like the log; the copy kept
-- outside the database is the one that counts (the owner could delete rows here).
CREATE TABLE audit_checkpoints (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq      bigint NOT NULL,
    hash     bytea NOT NULL,
    at       timestamptz NOT NULL,
    mac      bytea NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now()
);
REVOKE UPDATE, DELETE, TRUNCATE ON audit_checkpoints FROM PUBLIC;
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION watchfloor_audit_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION watchfloor_audit_append_only();
"""

# Ingest keeps daily partitions ahead and drops old ones; it runs as the runtime role, which
# owns no table, so these two run with their owner's rights (and a fixed search_path, as a
# SECURITY DEFINER function must), callable only by roles granted EXECUTE (telemetry/roles.py).
_DEFINER_PARTITIONS = """
ALTER FUNCTION watchfloor_ensure_partition(text, date) SECURITY DEFINER SET search_path = public, pg_temp;
ALTER FUNCTION watchfloor_drop_partitions(text, date) SECURITY DEFINER SET search_path = public, pg_temp;
REVOKE EXECUTE ON FUNCTION watchfloor_ensure_partition(text, date), watchfloor_drop_partitions(text, date)
    FROM PUBLIC;
"""


def apply(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_KEYED_AUDIT)
    if "timescaledb" not in feats:
        conn.execute(_DEFINER_PARTITIONS)
