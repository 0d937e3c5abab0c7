"""Limits against floods, over HTTP with the real API and database (issue #13): the client
address behind a trusted proxy, attempts that a third party cannot use up for someone else,
attempts counted before the password is checked, password checks bounded while an
operator's requests go on, failed sign-ins aggregated in the audit log, and caps on live
feeds with their close codes."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest
import websockets

from api.live.snapshot import read_message
from services.registry import DeviceRecord, upsert_devices
from tests.helpers.api import PASSWORD, add_test_users, client, running_api, token
from tests.helpers.db import MACHINE_PG, Database, _with_database, require_machine_pg
from tests.helpers.telemetry import make_settings
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess

PROXY = ["127.0.0.1/32"]  # the tests' client is the "proxy": it writes X-Forwarded-For itself


@pytest.fixture(scope="module")
def db() -> Iterator[Database]:
    require_machine_pg()
    for database in _with_database(MACHINE_PG, "plain"):
        with database.connect() as conn:
            add_test_users(conn)
            upsert_devices(conn, [DeviceRecord("we-1", "WE001", "PC Ada", "Westminster", "response")])
        yield database


def _sign_in(base: str, username: str, password: str, via: str | None = None) -> int:
    headers = {"X-Forwarded-For": via} if via else {}
    return httpx.post(f"{base}/api/v1/auth/token", json={"username": username, "password": password},
                      headers=headers, timeout=30).status_code


def _failures(db: Database, username: str) -> list[dict[str, Any]]:
    with db.connect() as conn:
        rows = conn.execute("SELECT details FROM audit_log WHERE action = 'sign_in_failed' AND actor = %s"
                            " ORDER BY seq", (username,)).fetchall()
    return [r[0] for r in rows]


def test_a_guesser_behind_the_proxy_does_not_lock_out_the_victim(
        db: Database, module_mosquitto: MosquittoProcess) -> None:
    """Behind a trusted proxy, failures are counted per real client (the address the proxy
    appended): the guesser is locked out, and the victim's right password from elsewhere
    signs in. What the guesser writes into the header itself is not believed."""
    settings = make_settings(trusted_proxies=PROXY, rate_limit_sign_in_failures_burst=3,
                             rate_limit_sign_in_failures_per_min=1.0)
    with running_api(database_url=db.url, mqtt_url=module_mosquitto.url, settings=settings) as server:
        assert [_sign_in(server.base, "op-west", "guess", "203.0.113.9") for _ in range(4)] == [401, 401, 401, 429]
        # The guesser claims the victim's address; the proxy appends the real one.
        assert _sign_in(server.base, "op-west", "guess", "198.51.100.7, 203.0.113.9") == 429
        assert _sign_in(server.base, "op-west", PASSWORD, "198.51.100.7") == 200


def test_a_trusted_proxys_forwarded_header_names_the_client(db: Database, module_mosquitto: MosquittoProcess) -> None:
    """RFC 7239 ``Forwarded`` from a trusted proxy: the client (an IPv6 address with a port)
    is what the audit log records for a failed sign-in."""
    settings = make_settings(trusted_proxies=PROXY)
    with running_api(database_url=db.url, mqtt_url=module_mosquitto.url, settings=settings) as server:
        response = httpx.post(f"{server.base}/api/v1/auth/token", json={"username": "admin", "password": "guess"},
                              headers={"Forwarded": 'for=192.0.2.1, for="[2001:db8::1]:4711";proto=https'})
        assert response.status_code == 401
    assert _failures(db, "admin")[-1] == {"client": "2001:db8::1"}


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(db: Database, module_mosquitto: MosquittoProcess) -> None:
    """With no trusted proxy, a client cannot escape its limit by writing a new address into
    X-Forwarded-For or Forwarded for each guess."""
    settings = make_settings(rate_limit_sign_in_failures_burst=2, rate_limit_sign_in_failures_per_min=1.0)
    with running_api(database_url=db.url, mqtt_url=module_mosquitto.url, settings=settings) as server:
        url = f"{server.base}/api/v1/auth/token"
        statuses = [httpx.post(url, json={"username": "fleet", "password": "guess"},
                               headers={"X-Forwarded-For": f"203.0.113.{n}", "Forwarded": f"for=203.0.113.{n}"}
                               ).status_code for n in range(4)]
        assert statuses == [401, 401, 429, 429]


def test_a_guess_spread_over_addresses_is_capped_but_not_for_known_addresses(
        db: Database, module_mosquitto: MosquittoProcess) -> None:
    """Per username across addresses: a guesser using a new address per guess is refused
    once the name's cap is used up, but the user's own address (where they signed in
    before) still signs in with the right password."""
    settings = make_settings(trusted_proxies=PROXY, rate_limit_sign_in_failures_burst=3,
                             rate_limit_sign_in_user_failures_burst=4, rate_limit_sign_in_user_failures_per_min=1.0)
    with running_api(database_url=db.url, mqtt_url=module_mosquitto.url, settings=settings) as server:
        assert _sign_in(server.base, "afo-cmd", PASSWORD, "198.51.100.7") == 200  # the user's workstation
        guesses = [_sign_in(server.base, "afo-cmd", "guess", f"203.0.113.{n}") for n in range(1, 8)]
        assert guesses == [401] * 4 + [429] * 3
        assert _sign_in(server.base, "afo-cmd", PASSWORD, "198.51.100.7") == 200
        assert _sign_in(server.base, "audit", PASSWORD, "203.0.113.50") == 200  # other names are not affected


def test_concurrent_wrong_passwords_evaluate_at_most_the_burst(
        db: Database, module_mosquitto: MosquittoProcess) -> None:
    """24 wrong passwords at once against a burst of 5: the tokens are taken before the
    password is checked, so at most 5 are evaluated (401) and the rest refused (429)."""
    settings = make_settings(rate_limit_sign_in_failures_burst=5, rate_limit_sign_in_failures_per_min=1.0,
                             sign_in_max_concurrent=64)
    with running_api(database_url=db.url, mqtt_url=module_mosquitto.url, settings=settings) as server:
        barrier = threading.Barrier(24)

        def guess(_: int) -> int:
            barrier.wait()
            return _sign_in(server.base, "op-all", "guess")

        with ThreadPoolExecutor(24) as pool:
            statuses = Counter(pool.map(guess, range(24)))
    assert statuses[401] <= 5 and statuses[401] + statuses[429] == 24, statuses


def test_an_operator_is_served_while_a_sign_in_flood_is_refused(
        db: Database, module_mosquitto: MosquittoProcess) -> None:
    """16 clients flood sign-in, each guess from a new address for a new name (no rate
    limit ever empties): beyond the few password checks allowed at once the flood is
    refused (503), and a signed-in operator's requests are answered while it runs."""
    settings = make_settings(trusted_proxies=PROXY)
    with running_api(database_url=db.url, mqtt_url=module_mosquitto.url, settings=settings) as server, \
            client(server.base, "op-all") as operator:
        stop = threading.Event()
        seen: Counter[int] = Counter()
        lock = threading.Lock()
        numbers = itertools.count()

        def flood() -> None:
            with httpx.Client(timeout=60) as http:
                while not stop.is_set():
                    n = next(numbers)
                    status = http.post(f"{server.base}/api/v1/auth/token",
                                       json={"username": f"nobody-{n}", "password": "guess"},
                                       headers={"X-Forwarded-For": f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"}
                                       ).status_code
                    with lock:
                        seen[status] += 1

        threads = [threading.Thread(target=flood, daemon=True) for _ in range(16)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: seen[503] > 0, timeout=30, what="the flood to be refused")
            answers = [operator.get("/api/v1/devices").status_code for _ in range(5)]
            assert not stop.is_set() and all(t.is_alive() for t in threads)  # the flood ran throughout
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
    assert answers == [200] * 5
    assert seen[401] > 0 and seen[503] > 0 and set(seen) <= {401, 503}, seen


def test_repeated_failures_are_one_summary_in_the_audit_log(db: Database, module_mosquitto: MosquittoProcess) -> None:
    """Ten failures of one name from one client within a minute: the first is audited as
    it happens, the other nine as one sign_in_failed entry with count 9 (written when the
    window closes; here when the API stops)."""
    settings = make_settings(rate_limit_sign_in_failures_burst=20)
    with running_api(database_url=db.url, mqtt_url=module_mosquitto.url, settings=settings) as server:
        assert {_sign_in(server.base, "op-west", "guess") for _ in range(10)} == {401}
        during = _failures(db, "op-west")
    after = _failures(db, "op-west")
    assert len(after) == len(during) + 1
    assert after[-2:] == [{"client": "127.0.0.1"}, {**after[-1], "client": "127.0.0.1", "count": 9, "summary": True}]


def test_whip_guesses_from_elsewhere_do_not_lock_out_the_camera(
        db: Database, module_mosquitto: MosquittoProcess) -> None:
    """Bogus WHIP offers for a device through the proxy lock out the address they come
    from, not the camera's own."""
    settings = make_settings(trusted_proxies=PROXY, rate_limit_device_burst=2, rate_limit_device_per_min=1.0)
    with running_api(database_url=db.url, mqtt_url=module_mosquitto.url, settings=settings) as server:
        def offer(via: str) -> int:
            return httpx.post(f"{server.base}/api/v1/whip/we-1", content="v=0\r\n", timeout=30,
                              headers={"content-type": "application/sdp", "Authorization": "Bearer not-the-secret",
                                       "X-Forwarded-For": via}).status_code

        assert [offer("203.0.113.9") for _ in range(3)] == [401, 401, 429]
        assert offer("198.51.100.20") == 401  # checked, not refused by the attacker's failures


async def _open_feeds(base: str, bearers: list[str | None]) -> list[Any]:
    """Open websockets in order (each authenticated with its bearer, if any) and return them."""
    url = base.replace("http://", "ws://") + "/api/v1/live"
    sockets = []
    for bearer in bearers:
        ws = await websockets.connect(url, max_size=None, open_timeout=10)
        if bearer is not None:
            await ws.send(orjson.dumps({"type": "auth", "token": bearer}).decode())
            assert read_message(await asyncio.wait_for(ws.recv(), 10))["type"] == "snapshot"
        sockets.append(ws)
    return sockets


async def _closed(ws: Any) -> tuple[int, str]:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)
    return closed.value.rcvd.code, closed.value.rcvd.reason


def test_live_feeds_are_capped_per_user_and_before_authentication(
        db: Database, module_mosquitto: MosquittoProcess) -> None:
    """A user's third feed (cap 2) is closed with 4429 and a reason, while another user
    still gets one; a third socket that has not authenticated (cap 2) is closed with 1013."""
    settings = make_settings(live_max_feeds_per_user=2, live_max_unauthenticated=2)
    with running_api(database_url=db.url, mqtt_url=module_mosquitto.url, settings=settings) as server:
        op, fleet = token(server.base, "op-all"), token(server.base, "fleet")

        async def scenario() -> tuple[tuple[int, str], bool, tuple[int, str]]:
            feeds = await _open_feeds(server.base, [op, op])
            third = (await _open_feeds(server.base, [None]))[0]
            await third.send(orjson.dumps({"type": "auth", "token": op}).decode())
            refused = await _closed(third)
            other = await _open_feeds(server.base, [fleet])  # would raise if refused
            waiting = await _open_feeds(server.base, [None, None])
            # The server counts a socket as waiting once it has accepted it; the third is refused.
            too_many = (await _open_feeds(server.base, [None]))[0]
            closed = await _closed(too_many)
            for ws in feeds + other + waiting:
                await ws.close()
            return refused, bool(other), closed

        refused, other_served, waiting_refused = asyncio.run(scenario())
    assert refused[0] == 4429 and "too many live feeds" in refused[1]
    assert other_served
    assert waiting_refused[0] == 1013 and "authenticate" in waiting_refused[1]
