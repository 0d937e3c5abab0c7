"""The command line as a user runs it: help for every subcommand, migrations, and the demo
on embedded parts with no configuration at all."""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from services.device_accounts import ADMIN_USERNAME, mosquitto_password, parse_password_file
from telemetry.embedded import free_port
from tests.helpers.db import Database
from tests.helpers.waiting import wait_for

COMMANDS = [["--help"], ["demo", "--help"], ["simulate", "--help"], ["ingest", "--help"], ["api", "--help"],
            ["db", "migrate", "--help"], ["db", "maintain", "--help"], ["users", "add", "--help"],
            ["users", "list", "--help"], ["users", "disable", "--help"], ["users", "remove", "--help"],
            ["devices", "list", "--help"], ["devices", "provision", "--help"], ["devices", "assign", "--help"],
            ["devices", "unassign", "--help"], ["audit", "verify", "--help"]]


def _watchfloor(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
                stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WATCHFLOOR_")}
    return subprocess.run([sys.executable, "-m", "watchfloor", *args], env={**clean, **(env or {})},
                          input=stdin, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_help(args: list[str]) -> None:
    result = _watchfloor(*args)
    assert result.returncode == 0, result.stderr
    assert "usage: watchfloor" in result.stdout


def test_help_shows_defaults_and_the_environment_it_reads() -> None:
    """A new user learns from --help alone what a command defaults to and which variables it reads."""
    demo = _watchfloor("demo", "--help").stdout
    assert "(default: 300)" in demo and "(default: 8080)" in demo
    assert "WATCHFLOOR_DATA_DIR" in demo and "--access-log" in demo
    ingest = _watchfloor("ingest", "--help").stdout
    assert "WATCHFLOOR_DATABASE_URL" in ingest and "WATCHFLOOR_MQTT_URL" in ingest
    assert "WATCHFLOOR_AUTH_SECRET" in _watchfloor("api", "--help").stdout
    top = _watchfloor("--help").stdout
    assert "DEBUG" in top and "WARNING" in top  # --log-level lists its values


def test_version_and_a_wrong_log_level() -> None:
    version = _watchfloor("--version")
    assert version.returncode == 0 and re.fullmatch(r"watchfloor \S+\n", version.stdout), version.stdout
    wrong = _watchfloor("--log-level", "loud", "ingest")
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr


def test_users_add_list_disable_remove(pg: Database) -> None:
    """The whole life of a local user from the command line, each change audited; a disabled
    user can no longer sign in. The password comes from standard input, never the command line."""
    from services.accounts import authenticate

    env = {"WATCHFLOOR_DATABASE_URL": pg.url, "WATCHFLOOR_TIMESCALEDB": "off"}
    added = subprocess.run([sys.executable, "-m", "watchfloor", "users", "add", "sgt.pepper", "--role", "operator",
                            "--areas", "Camden"], input="a long enough password\n", capture_output=True, text=True,
                           env={**os.environ, **env}, timeout=60)
    assert added.returncode == 0, added.stderr
    listed = _watchfloor("users", "list", env=env)
    assert re.search(r"sgt\.pepper\s+operator\s+enabled\s+Camden", listed.stdout), listed.stdout
    with pg.connect() as conn:
        assert authenticate(conn, "sgt.pepper", "a long enough password") is not None
    assert _watchfloor("users", "disable", "sgt.pepper", env=env).returncode == 0
    assert re.search(r"sgt\.pepper\s+operator\s+disabled", _watchfloor("users", "list", env=env).stdout)
    with pg.connect() as conn:
        assert authenticate(conn, "sgt.pepper", "a long enough password") is None
    again = _watchfloor("users", "disable", "sgt.pepper", env=env)
    assert again.returncode != 0 and "already disabled" in again.stderr
    assert _watchfloor("users", "remove", "sgt.pepper", env=env).returncode == 0
    assert "sgt.pepper" not in _watchfloor("users", "list", env=env).stdout
    assert _watchfloor("users", "remove", "sgt.pepper", env=env).returncode != 0
    changes = [row[0] for row in pg.connect().execute(
        "SELECT details->>'change' FROM audit_log WHERE action = 'user_changed' ORDER BY seq").fetchall()]
    assert changes == ["added or replaced", "disabled", "removed"]


def test_devices_list(pg: Database) -> None:
    """Registered devices with their borough and state; retired ones only when asked for."""
    from services.registry import DeviceRecord, upsert_devices

    with pg.connect() as conn:
        upsert_devices(conn, [DeviceRecord("BWV-CLI-1", "CX11", "PC Ada", "Camden", "response"),
                              DeviceRecord("BWV-CLI-2", "WX22", "PC Bo", "Westminster", "firearms")])
        conn.execute("UPDATE devices SET retired_at = now() WHERE device_id = 'BWV-CLI-2'")
    env = {"WATCHFLOOR_DATABASE_URL": pg.url}
    active = _watchfloor("devices", "list", env=env)
    assert active.returncode == 0, active.stderr
    assert re.search(r"BWV-CLI-1\s+CX11\s+Camden\s+response", active.stdout) and "BWV-CLI-2" not in active.stdout
    everything = _watchfloor("devices", "list", "--retired", env=env).stdout
    assert re.search(r"BWV-CLI-2\s+WX22\s+Westminster\s+firearms\s+retired", everything)
    assert "BWV-CLI-1" not in _watchfloor("devices", "list", "--borough", "Westminster", env=env).stdout


def test_devices_assign_and_unassign(pg: Database) -> None:
    """An admin at the command line gives a camera to an officer and takes it back: the
    custody windows, the registry's officer and the audit log (actor ``cli:...``) say so; an
    unknown device and an end with nothing open are refused."""
    from services.registry import DeviceRecord, upsert_devices

    with pg.connect() as conn:
        upsert_devices(conn, [DeviceRecord("BWV-CLI-3", "CX33", "PC Ada", "Camden", "response")])
    env = {"WATCHFLOOR_DATABASE_URL": pg.url}
    given = _watchfloor("devices", "assign", "BWV-CLI-3", "--officer", "PC Kim", "--callsign", "CX34", env=env)
    assert given.returncode == 0, given.stderr
    assert "carried by PC Kim" in given.stdout
    ended = _watchfloor("devices", "unassign", "BWV-CLI-3", env=env)
    assert ended.returncode == 0, ended.stderr
    assert _watchfloor("devices", "unassign", "BWV-CLI-3", env=env).returncode != 0
    assert "no device" in _watchfloor("devices", "assign", "NOPE", "--officer", "PC Kim", env=env).stderr
    with pg.connect() as conn:
        windows = conn.execute("SELECT officer, callsign, valid_to IS NULL FROM device_assignments"
                               " WHERE device_id = 'BWV-CLI-3' ORDER BY valid_from").fetchall()
        acts = conn.execute("SELECT action, actor LIKE 'cli%%' FROM audit_log WHERE device_id = 'BWV-CLI-3'"
                            " ORDER BY seq").fetchall()
        officer = conn.execute("SELECT officer FROM devices WHERE device_id = 'BWV-CLI-3'").fetchone()
    assert windows == [("PC Ada", "CX33", False), ("PC Kim", "CX34", False)]
    assert acts == [("device_assigned", True), ("device_unassigned", True)]
    assert officer == ("PC Kim",)  # the last to carry it, until someone checks it out


def test_db_migrate_reports_features(pg: Database) -> None:
    result = _watchfloor("db", "migrate", env={"WATCHFLOOR_DATABASE_URL": pg.url, "WATCHFLOOR_TIMESCALEDB": "off"})
    assert result.returncode == 0, result.stderr
    assert "nothing (up to date)" in result.stdout  # the fixture migrated it already
    assert "storage features: native_partitioning" in result.stdout


def test_simulate_without_a_broker_url_says_what_to_set() -> None:
    result = _watchfloor("simulate", "--devices", "1", "--duration", "1")
    assert result.returncode != 0
    assert "WATCHFLOOR_MQTT_URL" in result.stderr


@pytest.mark.parametrize("args", [["ingest"], ["api"], ["db", "migrate"], ["audit", "verify"],
                                  ["users", "add", "someone", "--role", "operator"]], ids=" ".join)
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


def _start_demo(tmp_path: Path, *args: str, until: str = "Ctrl-C") -> tuple[subprocess.Popen[str], list[str]]:
    """``watchfloor demo`` with no configuration but a data directory, and its output up to the
    line holding ``until`` (by default the one that says it is up, "Ctrl-C stops everything")."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WATCHFLOOR_")}
    proc = subprocess.Popen([sys.executable, "-m", "watchfloor", "demo", *args],
                            env={**clean, "WATCHFLOOR_DATA_DIR": str(tmp_path / "data")},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, _read_until(proc, until)


def _read_until(proc: subprocess.Popen[str], marker: str) -> list[str]:
    """``proc``'s output lines up to and with the first holding ``marker`` (all of it if none does)."""
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            break
    return lines


def test_demo_runs_on_embedded_parts(tmp_path: Path) -> None:
    """No configuration: the demo starts pgserver and rumqttd, says where, stores what its
    simulated fleet sends, and serves the API to the users it prints."""
    port = free_port()
    proc, lines = _start_demo(tmp_path, "--devices", "50", "--duration", "8", "--report-every", "2",
                              "--port", str(port))
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
    assert "/api/v1/auth/token" not in out  # the access log is off unless --access-log


def test_demo_stopped_while_it_provisions_exits_cleanly(tmp_path: Path) -> None:
    """Ctrl-C while the demo is still giving its cameras their secrets: everything stops, the
    exit is clean, and nothing reports a lost database connection (it used to, at 2,500 cameras)."""
    proc, lines = _start_demo(tmp_path, "--devices", "1200", "--interval", "30", "--port", str(free_port()))
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    out = "".join(lines) + rest
    assert proc.returncode == 0, out
    assert "demo finished" in out
    assert "provisioning the demo fleet's secrets failed" not in out, out


def test_the_demo_holds_its_port_from_the_start(tmp_path: Path) -> None:
    """The API's port is bound before the simulated cameras connect: their ephemeral ports once
    took it while the demo set up, and the demo then failed to start (in CI, at 1,200 cameras).
    Here the test itself tries to take the port at that moment."""
    port = free_port()
    # "Watchfloor demo" is printed before the fleet, ingest or the API start.
    proc, lines = _start_demo(tmp_path, "--devices", "20", "--port", str(port), until="Watchfloor demo")
    try:
        with socket.socket() as thief, pytest.raises(OSError) as taken:
            thief.bind(("127.0.0.1", port))
        assert taken.value.errno == errno.EADDRINUSE
        lines += _read_until(proc, "Ctrl-C")
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(lines) + rest


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


def test_broker_passwords_come_from_stdin_never_the_command_line(tmp_path: Path) -> None:
    """A password given on the command line sits in the shell's history and in ``ps``: the
    broker commands read one from standard input (``--password-stdin``) or make a random one."""
    def matches(stored: dict[str, object], password: str) -> bool:
        salt = base64.b64decode(str(stored["salt"]))
        return mosquitto_password(password, salt=salt, iterations=int(str(stored["iterations"]))) == stored

    passwd, accounts = tmp_path / "passwd-services", tmp_path / "device-accounts.json"
    given = _watchfloor("broker", "add-user", "watchfloor-ingest", "--mosquitto-passwd", str(passwd),
                        "--password-stdin", stdin="the ingest's password\n")
    assert given.returncode == 0, given.stderr
    assert "the ingest's password" not in given.stdout  # a given password is never echoed
    assert matches(parse_password_file(passwd.read_text())["watchfloor-ingest"], "the ingest's password")

    init = _watchfloor("broker", "init-device-accounts", str(accounts), "--password-stdin",
                       stdin="the admin's password\n")
    assert init.returncode == 0, init.stderr
    admin = next(c for c in json.loads(accounts.read_text())["clients"] if c["username"] == ADMIN_USERNAME)
    assert matches({k: admin[k] for k in ("password", "salt", "iterations")}, "the admin's password")

    empty = _watchfloor("broker", "add-user", "x", "--mosquitto-passwd", str(passwd), "--password-stdin", stdin="\n")
    assert empty.returncode != 0 and "empty" in empty.stderr
    assert "--password " not in _watchfloor("broker", "add-user", "--help").stdout


def test_a_free_port_is_one_no_outgoing_connection_can_take() -> None:
    """Servers started by the demo, the tests and the benches get a port below the kernel's
    ephemeral range, which the kernel never hands to an outgoing connection: a simulated
    fleet connecting in the meantime cannot take it (as it once took the demo's API port)."""
    low, _ = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = {free_port() for _ in range(20)}
    assert all(port < low for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
