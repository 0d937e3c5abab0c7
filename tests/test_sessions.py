"""Tokens end when the user's session does: disabling a user, a new role or areas, or
sign-out refuses their earlier tokens within seconds on every API process (two real API
processes, a real Mosquitto carrying the announcement, the real database), and the live
websocket is closed with 4401 at the token's expiry or on its revocation."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest

from services.accounts import Principal, Role, TokenIssuer, add_user
from telemetry.embedded import free_port
from tests.helpers.api import API_PROCESS_ENV, PASSWORD, SECRET, LiveReader, add_test_users, token
from tests.helpers.db import MACHINE_PG, Database, _with_database, require_machine_pg
from tests.helpers.environment import require_executable
from tests.helpers.processes import WatchfloorProcess
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess

#: Well under the API's periodic refresh (30 s): a refusal within it came from the announcement.
WITHIN_S = 10.0


@dataclass
class Cluster:
    db: Database
    broker: MosquittoProcess
    bases: list[str]
    env: dict[str, str]

    def user(self, name: str, role: Role = Role.OPERATOR, areas: tuple[str, ...] = ("*",)) -> str:
        """A fresh local user of this test; returns the name."""
        with self.db.connect() as conn:
            add_user(conn, username=name, password=PASSWORD, role=role, areas=areas)
        return name


def _cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WATCHFLOOR_")} | env
    return subprocess.run([sys.executable, "-m", "watchfloor", *args], input=stdin, text=True,
                          capture_output=True, timeout=60, env=environment)


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two API processes on one database and one broker."""
    require_machine_pg()
    require_executable("mosquitto")
    logs = tmp_path_factory.mktemp("sessions")
    broker = MosquittoProcess(tmp_path_factory.mktemp("mosquitto")).start()
    try:
        for db in _with_database(MACHINE_PG, "plain"):
            with db.connect() as conn:
                add_test_users(conn)
            env = {"WATCHFLOOR_DATABASE_URL": db.url, "WATCHFLOOR_MQTT_URL": broker.url,
                   **API_PROCESS_ENV, "WATCHFLOOR_TIMESCALEDB": "off"}
            ports = [free_port(), free_port()]
            with ExitStack() as stack:
                for port in ports:
                    process = WatchfloorProcess(["api", "--port", str(port)], env, logs / f"api-{port}.log").start()
                    stack.callback(process.stop)
                bases = [f"http://127.0.0.1:{port}" for port in ports]
                for base in bases:
                    wait_for(lambda: _ready(base), timeout=60, what=f"{base} ready")
                yield Cluster(db, broker, bases, env)
    finally:
        broker.stop()


def _status(base: str, bearer: str) -> int:
    return httpx.get(f"{base}/api/v1/devices", headers={"Authorization": f"Bearer {bearer}"}, timeout=10).status_code


def _refused_everywhere(cluster: Cluster, bearer: str) -> None:
    for base in cluster.bases:
        wait_for(lambda: _status(base, bearer) == 401, timeout=WITHIN_S, what=f"the token refused at {base}")


def test_a_disabled_users_token_is_refused_on_both_api_processes(cluster: Cluster) -> None:
    """An admin disables a user through one API process: that user's token is refused by both
    within seconds (announced on the broker), the act is audited, and they cannot sign in."""
    name = cluster.user("sess-disabled")
    bearer = token(cluster.bases[0], name)
    assert [_status(base, bearer) for base in cluster.bases] == [200, 200]
    admin = token(cluster.bases[0], "admin")
    response = httpx.post(f"{cluster.bases[0]}/api/v1/users/{name}/disable",
                          headers={"Authorization": f"Bearer {admin}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["disabled"] is True
    _refused_everywhere(cluster, bearer)
    body = httpx.get(f"{cluster.bases[1]}/api/v1/devices", headers={"Authorization": f"Bearer {bearer}"}).json()
    assert body["error"]["code"] == "not_authenticated"
    assert httpx.post(f"{cluster.bases[1]}/api/v1/auth/token",
                      json={"username": name, "password": PASSWORD}).status_code == 401
    assert cluster.db.scalar("SELECT count(*) FROM audit_log WHERE actor = 'admin' AND action = 'user_changed'"
                             " AND details->>'username' = %s AND details->>'change' = 'disabled'", (name,)) == 1


def test_a_role_change_from_the_command_line_ends_the_old_token_on_both(cluster: Cluster) -> None:
    """`watchfloor users add` replacing a user with another role (and WATCHFLOOR_MQTT_URL set)
    ends the tokens that carry the old role on both API processes within seconds; a new
    sign-in gets the new role."""
    name = cluster.user("sess-promoted")
    bearer = token(cluster.bases[1], name)
    assert [_status(base, bearer) for base in cluster.bases] == [200, 200]
    done = _cli(cluster.env, "users", "add", name, "--role", "auditor", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    _refused_everywhere(cluster, bearer)
    again = httpx.post(f"{cluster.bases[0]}/api/v1/auth/token", json={"username": name, "password": PASSWORD})
    assert again.json()["role"] == "auditor"
    assert _status(cluster.bases[1], again.json()["access_token"]) == 403  # an auditor's token, valid


def test_the_disable_command_ends_the_users_tokens_on_both(cluster: Cluster) -> None:
    """`watchfloor users disable NAME` bumps the version and announces it."""
    name = cluster.user("sess-cli-disabled")
    bearer = token(cluster.bases[0], name)
    done = _cli(cluster.env, "users", "disable", name)
    assert done.returncode == 0, done.stderr
    _refused_everywhere(cluster, bearer)


def test_sign_out_revokes_every_token_of_the_caller(cluster: Cluster) -> None:
    """Sign-out through one process ends that token and the user's other tokens on both
    processes, and is audited; the user can sign in again; other users are untouched."""
    name = cluster.user("sess-signout")
    first, second = token(cluster.bases[0], name), token(cluster.bases[1], name)
    bystander = token(cluster.bases[0], "op-all")
    response = httpx.post(f"{cluster.bases[0]}/api/v1/auth/sign-out", headers={"Authorization": f"Bearer {first}"})
    assert response.status_code == 204, response.text
    _refused_everywhere(cluster, first)
    _refused_everywhere(cluster, second)
    assert [_status(base, bystander) for base in cluster.bases] == [200, 200]
    assert _status(cluster.bases[1], token(cluster.bases[1], name)) == 200
    assert cluster.db.scalar("SELECT count(*) FROM audit_log WHERE actor = %s AND action = 'sign_out'",
                             (name,)) == 1


def test_the_live_feed_closes_at_the_tokens_expiry(cluster: Cluster) -> None:
    """A token that expires while its websocket is open: the server closes it with 4401 and
    "token expired" (it used to run on past the expiry)."""
    name = cluster.user("sess-expiring")
    version = cluster.db.scalar("SELECT token_version FROM users WHERE username = %s", (name,))
    assert isinstance(version, int)
    # The API's own issuer with the API's secret, for a 3 s lifetime (WATCHFLOOR_TOKEN_TTL_S
    # is at least 60 s, too long for a test).
    short = TokenIssuer(SECRET, 3).issue(Principal(name, Role.OPERATOR, None, token_version=version))
    reader = LiveReader(cluster.bases[0], short)
    try:
        wait_for(lambda: reader.of_type("snapshot"), what="the snapshot")
        wait_for(lambda: reader.closed is not None, timeout=20, what="the server to close at expiry")
        assert reader.closed == (4401, "token expired")
    finally:
        reader.close()


def test_the_live_feed_closes_on_revocation_on_both_processes(cluster: Cluster) -> None:
    """A user's open websockets on both processes close with 4401 "token revoked" within
    seconds of their sign-out; another user's feed goes on."""
    name = cluster.user("sess-watching")
    bearer = token(cluster.bases[0], name)
    readers = [LiveReader(base, bearer) for base in cluster.bases]
    bystander = LiveReader(cluster.bases[1], token(cluster.bases[1], "op-all"))
    try:
        for reader in [*readers, bystander]:
            wait_for(lambda: reader.of_type("snapshot"), what="the snapshot")
        assert httpx.post(f"{cluster.bases[1]}/api/v1/auth/sign-out",
                          headers={"Authorization": f"Bearer {bearer}"}).status_code == 204
        for reader in readers:
            wait_for(lambda: reader.closed is not None, timeout=WITHIN_S, what="the feed to close")
            assert reader.closed == (4401, "token revoked")
        assert bystander.closed is None
    finally:
        for reader in [*readers, bystander]:
            reader.close()


def test_a_revoked_token_cannot_open_the_live_feed(cluster: Cluster) -> None:
    """A token refused at the websocket's first message closes it with 4401, so that the
    dashboard knows to sign in again (also after the signing secret changed)."""
    name = cluster.user("sess-late")
    bearer = token(cluster.bases[0], name)
    assert httpx.post(f"{cluster.bases[0]}/api/v1/auth/sign-out",
                      headers={"Authorization": f"Bearer {bearer}"}).status_code == 204
    forged = TokenIssuer("another-secret-" + "y" * 40, 60).issue(Principal(name, Role.OPERATOR, None, token_version=9))
    for attempt in (bearer, forged):
        reader = LiveReader(cluster.bases[0], attempt)
        try:
            wait_for(lambda: reader.closed is not None, timeout=WITHIN_S, what="the server to close")
            assert reader.closed is not None and reader.closed[0] == 4401
            assert not reader.of_type("snapshot")
        finally:
            reader.close()


def test_an_area_limited_admin_disables_only_users_within_their_area(cluster: Cluster) -> None:
    """An admin of Westminster disables a Westminster operator; a Camden one, or one of every
    borough, is as unknown to them as a device outside their area (404), and stays enabled."""
    admin = cluster.user("sess-admin-west", Role.ADMIN, ("Westminster",))
    inside = cluster.user("sess-op-we", Role.OPERATOR, ("Westminster",))
    outside = [cluster.user("sess-op-ca", Role.OPERATOR, ("Camden",)), cluster.user("sess-op-all")]
    headers = {"Authorization": f"Bearer {token(cluster.bases[0], admin)}"}
    listed = httpx.get(f"{cluster.bases[0]}/api/v1/users", headers=headers).json()
    assert inside in {u["username"] for u in listed} and not {u["username"] for u in listed} & set(outside)
    for name in outside:
        response = httpx.post(f"{cluster.bases[0]}/api/v1/users/{name}/disable", headers=headers)
        assert response.status_code == 404, response.text
    assert httpx.post(f"{cluster.bases[0]}/api/v1/users/{inside}/disable", headers=headers).status_code == 200
    assert httpx.post(f"{cluster.bases[0]}/api/v1/users/{inside}/disable", headers=headers).status_code == 409
    disabled = cluster.db.scalar("SELECT array_agg(username ORDER BY username) FROM users"
                                 " WHERE disabled_at IS NOT NULL AND username LIKE 'sess-op-%%'")
    assert disabled == [inside]


def test_cli_without_a_broker_says_the_change_waits_for_the_refresh(cluster: Cluster) -> None:
    """Without WATCHFLOOR_MQTT_URL the command still disables, and says the API processes
    will refuse the tokens at their next refresh."""
    name = cluster.user("sess-no-broker")
    env = {k: v for k, v in cluster.env.items() if k != "WATCHFLOOR_MQTT_URL"}
    done = _cli(env, "users", "disable", name)
    assert done.returncode == 0, done.stderr
    assert "within 30 s" in done.stderr
