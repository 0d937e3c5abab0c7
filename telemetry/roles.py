"""The runtime role: what the API and ingest may do to the database, granted by the owner.

Migrations run as the owner of every table (``WATCHFLOOR_MIGRATE_DATABASE_URL``). The API and
ingest connect as a role that owns nothing (``WATCHFLOOR_DATABASE_URL``): it reads and writes
the operational tables, but may only INSERT into and SELECT from the audit log and its
checkpoints, so it can neither change an entry nor switch the append-only trigger off (ALTER
TABLE needs ownership). :func:`grant_runtime` is idempotent and runs after every migration, so
tables added later are covered.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

__all__ = ["APPEND_ONLY", "grant_runtime"]

#: Tables the runtime role may only append to and read.
APPEND_ONLY = ("audit_log", "audit_checkpoints")
_OWNER_ONLY = ("schema_migrations",)  # read, never written, by the runtime role
_DEFINER_FUNCTIONS = ("watchfloor_ensure_partition(text, date)", "watchfloor_drop_partitions(text, date)")


def grant_runtime(conn: psycopg.Connection, *, role: str) -> None:
    """Grant ``role`` (an existing role, created by the DBA with its own password) what the
    runtime processes need, in the caller's transaction. Refuses a role that owns a table or
    is a superuser: its grants would mean nothing."""
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if row is None:
        raise ValueError(f"no database role {role!r}: create it first (CREATE ROLE {role} LOGIN PASSWORD ...)")
    if row[0]:
        raise ValueError(f"role {role!r} is a superuser: the runtime role must be an ordinary one")
    owned = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = %s",
                         (role,)).fetchone()
    if owned and owned[0]:
        raise ValueError(f"role {role!r} owns tables: the runtime role must own none (run migrations as another)")
    who = sql.Identifier(role)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(who))
    conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(who))
    conn.execute(sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(who))
    for table in (*APPEND_ONLY, *_OWNER_ONLY):
        conn.execute(sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON {} FROM {}")
                     .format(sql.Identifier(table), who))
    conn.execute(sql.SQL("REVOKE INSERT ON schema_migrations FROM {}").format(who))
    for function in _DEFINER_FUNCTIONS:
        if conn.execute("SELECT to_regprocedure(%s)", (function,)).fetchone() != (None,):
            conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(function), who))
