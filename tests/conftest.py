"""Real parts for the tests: PostgreSQL (machine or embedded), Mosquitto with the shipped
configuration on a spare port, and the embedded broker. Everything runs on 127.0.0.1, and
each test gets its own database so tests never see each other's rows. A missing part skips
locally and fails under CI=true (tests/helpers/environment.py)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from telemetry.embedded import EmbeddedBroker, embedded_database_url
from tests.helpers.db import Database, _database
from tests.helpers.environment import TIMESCALE_ABSENT, require_executable
from watchfloor.mosquitto import MosquittoProcess


@pytest.fixture(scope="session")
def embedded_pg_url() -> str:
    """The embedded server, for the whole session, outside pytest's temporary root: as root,
    pgserver runs PostgreSQL as a user of its own, and any other pytest session starting on
    the machine resets /tmp/pytest-of-<user> to 0700, which locked the server out of its
    data directory mid-run (a PANIC on pg_control, then "server closed the connection")."""
    root = Path(tempfile.mkdtemp(prefix="watchfloor-test-pgserver-"))
    atexit.register(shutil.rmtree, root, True)  # runs after pgserver's own exit handler stops the server
    return embedded_database_url(root, delete_on_exit=True)


@pytest.fixture(params=["plain", "timescale", "embedded"])
def any_db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """Each storage path in turn: plain PostgreSQL, TimescaleDB, embedded pgserver."""
    yield from _database(request, request.param)


@pytest.fixture
def pg(request: pytest.FixtureRequest) -> Iterator[Database]:
    """The machine's PostgreSQL, plain path. Never the embedded server in its place: a run
    that silently tested pgserver instead would hide a PostgreSQL-only failure."""
    yield from _database(request, "plain")


def _mosquitto(workdir: Path) -> Iterator[MosquittoProcess]:
    require_executable("mosquitto")
    broker = MosquittoProcess(workdir).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A Mosquitto from deploy/mosquitto/mosquitto.conf on a spare port."""
    yield from _mosquitto(tmp_path / "mosquitto")


@pytest.fixture(scope="module")
def module_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoProcess]:
    """The same, shared by a module's tests (each of which uses its own devices or users)."""
    yield from _mosquitto(tmp_path_factory.mktemp("mosquitto"))


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
