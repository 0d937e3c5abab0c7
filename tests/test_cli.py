"""The command line as a user runs it: help for every subcommand, migrations, and the demo
on embedded parts with no configuration at all."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from telemetry.embedded import free_port
from tests.helpers.db import Database
from tests.helpers.waiting import wait_for

COMMANDS = [["--help"], ["demo", "--help"], ["simulate", "--help"], ["ingest", "--help"],
            ["db", "migrate", "--help"], ["db", "maintain", "--help"]]


def _watchfloor(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WATCHFLOOR_")}
    return subprocess.run([sys.executable, "-m", "watchfloor", *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_help(args: list[str]) -> None:
    result = _watchfloor(*args)
    assert result.returncode == 0, result.stderr
    assert "usage: watchfloor" in result.stdout


def test_db_migrate_reports_features(pg: Database) -> None:
    result = _watchfloor("db", "migrate", env={"WATCHFLOOR_DATABASE_URL": pg.url, "WATCHFLOOR_TIMESCALEDB": "off"})
    assert result.returncode == 0, result.stderr
    assert "nothing (up to date)" in result.stdout  # the fixture migrated it already
    assert "storage features: native_partitioning" in result.stdout


def test_simulate_without_a_broker_url_says_what_to_set() -> None:
    result = _watchfloor("simulate", "--devices", "1", "--duration", "1")
    assert result.returncode != 0
    assert "WATCHFLOOR_MQTT_URL" in result.stderr


@pytest.mark.parametrize("args", [["ingest"], ["api"], ["db", "migrate"],
                                  ["users", "add", "someone", "--role", "operator"], ["audit", "verify"]],
                         ids=" ".join)
def test_only_the_demo_runs_without_a_database_url(args: list[str], tmp_path: Path) -> None:
    """A production process never falls back to an embedded PostgreSQL in a local directory:
    without WATCHFLOOR_DATABASE_URL it refuses, names the variable and points to the demo."""
    env = {"WATCHFLOOR_MQTT_URL": "mqtt://127.0.0.1:1", "WATCHFLOOR_AUTH_SECRET": "x" * 40,
           "WATCHFLOOR_DATA_DIR": str(tmp_path)}
    result = _watchfloor(*args, env=env)
    assert result.returncode != 0
    assert "WATCHFLOOR_DATABASE_URL is not set" in result.stderr
    assert "watchfloor demo" in result.stderr
    assert not (tmp_path / "pg").exists()


def test_demo_runs_on_embedded_parts(tmp_path: Path) -> None:
    """No configuration: the demo starts pgserver and rumqttd, says where, stores what its
    simulated fleet sends, and serves the API to the users it prints."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WATCHFLOOR_")}
    proc = subprocess.Popen([sys.executable, "-m", "watchfloor", "demo", "--devices", "50", "--duration", "8",
                             "--report-every", "2", "--port", str(port)],
                            env={**clean, "WATCHFLOOR_DATA_DIR": str(tmp_path / "data")},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if "Ctrl-C" in line:
            break
    password = next(line.split()[1] for line in lines if line.strip().startswith("operator "))
    login = httpx.post(f"http://127.0.0.1:{port}/api/v1/auth/token",
                       json={"username": "operator", "password": password})
    assert login.status_code == 200, "".join(lines)
    devices = wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/api/v1/devices", headers={
        "Authorization": f"Bearer {login.json()['access_token']}"}).json().get("total") == 50, what="devices")
    assert devices
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(lines) + rest
    out = "".join(lines) + rest
    assert "embedded PostgreSQL" in out and "embedded rumqttd" in out
    finished = re.search(r"demo finished: published (\d+), received (\d+), stored (\d+) telemetry", out)
    assert finished, out
    published, received, stored = map(int, finished.groups())
    assert published == received and stored >= 50 * 5


def test_demo_on_a_port_in_use_says_so_and_exits(tmp_path: Path) -> None:
    """The API cannot listen: the demo says which port, stops the simulator and ingest it had
    started, and exits (it used to hang with its threads still running)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _watchfloor("demo", "--devices", "20", "--port", str(port),
                             env={"WATCHFLOOR_DATA_DIR": str(tmp_path / "data")}, timeout=120)
    assert result.returncode != 0
    assert f"could not start on 127.0.0.1:{port}" in result.stdout + result.stderr
