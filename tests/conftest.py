"""Real parts for the tests: PostgreSQL (machine or embedded), Mosquitto with the shipped
configuration on a spare port, and the embedded broker. Everything runs on 127.0.0.1, and
each test gets its own database so tests never see each other's rows. A missing part skips
locally and fails under CI=true (tests/helpers/environment.py)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from telemetry.embedded import EmbeddedBroker, embedded_database_url
from telemetry.schema import migrate
from tests.helpers.environment import TIMESCALE_ABSENT, missing, require_executable, timescale_absent
from watchfloor.mosquitto import MosquittoProcess

MACHINE_PG = os.environ.get("WATCHFLOOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def wait_for(condition: Callable[[], object], *, timeout: float = 30.0, interval: float = 0.1,
             what: str = "condition") -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


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


@pytest.fixture(scope="session")
def embedded_pg_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return embedded_database_url(tmp_path_factory.mktemp("pgserver"))


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


@pytest.fixture(params=["plain", "timescale", "embedded"])
def any_db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """Each storage path in turn: plain PostgreSQL, TimescaleDB, embedded pgserver."""
    yield from _database(request, request.param)


@pytest.fixture
def pg(request: pytest.FixtureRequest) -> Iterator[Database]:
    """The machine's PostgreSQL, plain path. Never the embedded server in its place: a run
    that silently tested pgserver instead would hide a PostgreSQL-only failure."""
    yield from _database(request, "plain")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A Mosquitto from deploy/mosquitto/mosquitto.conf on a spare port."""
    require_executable("mosquitto")
    broker = MosquittoProcess(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def embedded_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(tmp_path / "rumqttd").start()
    try:
        yield broker
    finally:
        broker.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say in the summary what the TimescaleDB skips leave untested, so a green run without
    the extension does not read as if the Timescale path had passed."""
    skipped = [report for report in terminalreporter.stats.get("skipped", [])
               if TIMESCALE_ABSENT in str(getattr(report, "longrepr", ""))]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} skipped ({TIMESCALE_ABSENT})", yellow=True)
