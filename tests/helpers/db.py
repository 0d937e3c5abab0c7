"""PostgreSQL for the tests: the machine's server (WATCHFLOOR_TEST_PG), a fresh database per
test or module, migrated; the embedded server only where a test asks for that path."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import psycopg
import pytest
from psycopg import sql

from telemetry.roles import grant_runtime
from telemetry.schema import migrate
from tests.helpers.environment import missing, timescale_absent

MACHINE_PG = os.environ.get("WATCHFLOOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _machine_pg_available() -> bool:
    try:
        with psycopg.connect(MACHINE_PG, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def require_machine_pg() -> None:
    """Skip (locally) or fail (CI=true) unless the machine's PostgreSQL answers."""
    if not _machine_pg_available():
        missing(f"the machine's PostgreSQL is not reachable at WATCHFLOOR_TEST_PG ({MACHINE_PG})")


def _machine_has_timescale() -> bool:
    if not _machine_pg_available():
        return False
    with psycopg.connect(MACHINE_PG) as conn:
        avail = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
        preload = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    return bool(avail) and preload is not None and "timescaledb" in preload[0]


@dataclass
class Database:
    url: str
    kind: str  # plain | timescale | embedded

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)

    def scalar(self, sql: str, params: tuple[object, ...] = ()) -> object:
        with self.connect() as conn:
            row = conn.execute(sql, params).fetchone()
            return row[0] if row else None


def _with_database(admin_url: str, kind: str) -> Iterator[Database]:
    name = f"wf_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    with psycopg.connect(url) as conn:
        migrate(conn, retention=timedelta(days=30), compress_after=timedelta(days=2),
                timescaledb="require" if kind == "timescale" else "off")
    try:
        yield Database(url, kind)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _database(request: pytest.FixtureRequest, kind: str) -> Iterator[Database]:
    if kind == "embedded":
        yield from _with_database(request.getfixturevalue("embedded_pg_url"), kind)
        return
    require_machine_pg()
    if kind == "timescale" and not _machine_has_timescale():
        timescale_absent()
    yield from _with_database(MACHINE_PG, kind)


@contextmanager
def runtime_role(db: Database) -> Iterator[str]:
    """A fresh login role granted what the API and ingest get (``watchfloor db migrate
    --runtime-role``), owning nothing; yields a URL that connects as it. Roles are the
    cluster's, so it is dropped afterwards (its grants first)."""
    role = f"wf_runtime_{uuid.uuid4().hex[:10]}"
    with db.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        with psycopg.connect(db.url) as conn:
            grant_runtime(conn, role=role)
            conn.commit()
        yield psycopg.conninfo.make_conninfo(db.url, user=role)
    finally:
        with db.connect() as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
