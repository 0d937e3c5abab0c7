"""Who may do what, walked in full: every role (each with every borough, and with Westminster
only) against every endpoint (REST, the live websocket, WHIP/WHEP, the CSV export), with a
resource in the caller's area and one outside it. Expected answers are the roles table in
docs/api.md: 403 for a role that may not, 404 for a resource outside the caller's area (as
if it did not exist), 401 without a valid token. A test fails if an endpoint appears that
the table does not cover."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import websockets

from api.live.snapshot import read_message
from services import audit
from services.accounts import Role, add_user
from services.registry import DeviceRecord, provision_device, upsert_devices
from tests.helpers.api import PASSWORD, api_on_machine, token
from tests.helpers.db import Database
from tests.helpers.telemetry import make_settings

OP, AFO, FLEET, AUDITOR, ADMIN = (Role.OPERATOR, Role.FIREARMS_COMMANDER, Role.FLEET_MANAGER, Role.AUDITOR,
                                  Role.ADMIN)
#: One user per role with every borough, one with Westminster only.
USERS: dict[str, tuple[Role, list[str]]] = {
    "op-all": (OP, ["*"]), "op-west": (OP, ["Westminster"]),
    "afo-cmd": (AFO, ["*"]), "afo-west": (AFO, ["Westminster"]),
    "fleet": (FLEET, ["*"]), "fleet-west": (FLEET, ["Westminster"]),
    "audit": (AUDITOR, ["*"]), "audit-west": (AUDITOR, ["Westminster"]),
    "admin": (ADMIN, ["*"]), "admin-west": (ADMIN, ["Westminster"]),
}
IN_AREA, OUT_OF_AREA = "Westminster", "Camden"
DEVICE = {IN_AREA: "m-we-1", OUT_OF_AREA: "m-ca-1"}
SDP = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@dataclass
class World:
    db: Database
    base: str
    tokens: dict[str, str]
    counter: Iterator[int] = field(default_factory=itertools.count)

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        with self.db.connect() as conn:
            cursor = conn.execute(query, params)
            row = cursor.fetchone() if cursor.description else None
            return row[0] if row else None

    def alert(self, borough: str) -> int:
        device = self.device(borough)
        return int(self.sql("INSERT INTO alerts (device_id, kind, severity, detail) VALUES (%s, 'emergency',"
                            " 'critical', 'matrix') RETURNING id", (device,)))

    def device(self, borough: str) -> str:
        """A fresh device in ``borough`` (for acts that change it)."""
        device_id = f"m-{borough[:2].lower()}-{next(self.counter) + 100}"
        with self.db.connect() as conn:
            upsert_devices(conn, [DeviceRecord(device_id, "X", "PC X", borough, "response")])
        return device_id

    def incident(self, borough: str) -> int:
        return int(self.sql("INSERT INTO incidents (title, lat, lon, radius_m, borough, created_by)"
                            " VALUES ('matrix', 51.5, -0.13, 200, %s, 'setup') RETURNING id", (borough,)))

    def incident_with_unit(self, borough: str) -> tuple[int, str]:
        incident, device = self.incident(borough), DEVICE[borough]
        self.sql("INSERT INTO incident_units (incident_id, device_id, assigned_by) VALUES (%s, %s, 'setup')",
                 (incident, device))
        return incident, device


Prepare = Callable[[World, str], dict[str, Any]]


def _fixed(world: World, borough: str) -> dict[str, Any]:
    return {"device_id": DEVICE[borough]}


@dataclass(frozen=True)
class Case:
    """One endpoint: who may call it, which answers mean "served", and whether it is about
    something in a borough (then a caller outside that borough gets 404)."""

    method: str
    path: str
    roles: frozenset[Role]
    ok: frozenset[int]
    area_scoped: bool = True
    prepare: Prepare = _fixed
    body: Callable[[dict[str, Any], str], Any] | None = None
    sdp: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    denied: frozenset[int] = frozenset({403})  # the answer to a role that may not
    # About the whole force (the alert policy): a caller of some boroughs only gets 403.
    whole_force: bool = False
    query: Callable[[str], dict[str, str]] | None = None  # the query string, given the borough


def case(method: str, path: str, roles: set[Role], ok: set[int], **kw: Any) -> Case:
    return Case(method, path, frozenset(roles), frozenset(ok), **kw)


SEES_DEVICES, SEES_POSITIONS, HANDLES = {OP, AFO, FLEET, ADMIN}, {OP, AFO, ADMIN}, {OP, AFO}
REPLAYS = {OP, AFO, AUDITOR, ADMIN}


def _device_body(params: dict[str, Any], borough: str) -> dict[str, Any]:
    return {"device_id": params["device_id"], "callsign": "X", "officer": "PC X", "borough": borough,
            "role": "response"}


def _fresh_device(world: World, borough: str) -> dict[str, Any]:
    return {"device_id": world.device(borough)}


def _new_device_id(world: World, borough: str) -> dict[str, Any]:
    return {"device_id": f"m-new-{next(world.counter)}"}


def _retired_device(world: World, borough: str) -> dict[str, Any]:
    device_id = world.device(borough)
    world.sql("UPDATE devices SET retired_at = now() WHERE device_id = %s", (device_id,))
    return {"device_id": device_id}


def _fresh_alert(world: World, borough: str) -> dict[str, Any]:
    return {"alert_id": world.alert(borough)}


def _health_alert(world: World, borough: str) -> dict[str, Any]:
    """An alert of a kind a fleet manager sees too (an emergency is absent for them: 404)."""
    return {"alert_id": int(world.sql("INSERT INTO alerts (device_id, kind, severity, detail) VALUES"
                                      " (%s, 'battery_low', 'warning', 'matrix') RETURNING id",
                                      (world.device(borough),)))}


def _system_alert(world: World, borough: str) -> dict[str, Any]:
    """A system alert (telemetry/system_alerts.py): no device, a subject of its own."""
    return {"alert_id": int(world.sql("INSERT INTO alerts (subject, kind, severity, detail) VALUES"
                                      " (%s, 'storage_job_failing', 'warning', 'matrix') RETURNING id",
                                      (f"storage_job:{next(world.counter)}",)))}


def _fresh_incident(world: World, borough: str) -> dict[str, Any]:
    incident, device = world.incident_with_unit(borough)
    return {"incident_id": incident, "device_id": device}


def _whep_session(world: World, borough: str) -> dict[str, Any]:
    return {"device_id": DEVICE[borough], "session_id": "no-such-session"}


def _fresh_user(world: World, borough: str) -> dict[str, Any]:
    """A user of ``borough`` only: an admin of another area may not disable them."""
    name = f"m-user-{next(world.counter)}"
    with world.db.connect() as conn:
        add_user(conn, username=name, password=PASSWORD, role=OP, areas=[borough])
    return {"username": name}


def _policy_rule(world: World, borough: str) -> dict[str, Any]:
    """A role's own rule to remove (the alert policy is the force's: no borough)."""
    world.sql("INSERT INTO alert_policy (kind, role, outcome) VALUES ('geofence', 'traffic', 'info')"
              " ON CONFLICT DO NOTHING")
    return {"kind": "geofence", "role": "traffic"}


def _officer_on_duty(world: World, borough: str) -> dict[str, Any]:
    """An officer carrying a camera of ``borough`` (from now): their track is that borough's."""
    device_id = f"m-od-{next(world.counter)}"
    with world.db.connect() as conn:
        upsert_devices(conn, [DeviceRecord(device_id, "X", f"PC {device_id}", borough, "response")])
    return {"device_id": device_id, "officer": f"PC {device_id}"}


def _live_view_request(world: World, borough: str) -> dict[str, Any]:
    request_id = f"req-{next(world.counter)}"
    world.sql("INSERT INTO live_view_requests (id, device_id, requested_by, reason, expires_at)"
              " VALUES (%s, %s, 'setup', 'matrix test', now() + interval '1 minute')", (request_id, DEVICE[borough]))
    return {"request_id": request_id}


CASES: list[Case] = [
    case("GET", "/api/v1/devices", SEES_DEVICES, {200}, area_scoped=False),
    case("POST", "/api/v1/devices", {ADMIN}, {201}, prepare=_new_device_id, body=_device_body),
    case("GET", "/api/v1/devices/{device_id}", SEES_DEVICES, {200}),
    case("PUT", "/api/v1/devices/{device_id}", {ADMIN}, {200}, prepare=_fresh_device, body=_device_body),
    case("GET", "/api/v1/devices/{device_id}/track", SEES_POSITIONS, {200}),
    case("GET", "/api/v1/devices/{device_id}/events", SEES_POSITIONS, {200}),
    case("GET", "/api/v1/devices/{device_id}/health", SEES_DEVICES, {200}),
    case("GET", "/api/v1/fleet/summary", SEES_DEVICES, {200}, area_scoped=False),
    case("GET", "/api/v1/devices/{device_id}/assignments", SEES_POSITIONS, {200}),
    case("POST", "/api/v1/devices/{device_id}/assignments", {ADMIN}, {201}, prepare=_fresh_device,
         body=lambda p, b: {"officer": f"PC {p['device_id']}", "callsign": "Y"}),
    case("POST", "/api/v1/devices/{device_id}/assignments/end", {ADMIN}, {200}, prepare=_officer_on_duty,
         body=lambda p, b: {}),
    case("GET", "/api/v1/officers/{officer}/track", SEES_POSITIONS, {200}, prepare=_officer_on_duty),
    case("POST", "/api/v1/devices/{device_id}/retire", {ADMIN}, {200}, prepare=_fresh_device),
    case("POST", "/api/v1/devices/{device_id}/reactivate", {ADMIN}, {200}, prepare=_retired_device),
    case("GET", "/api/v1/alerts", HANDLES | {FLEET, ADMIN}, {200}, area_scoped=False),
    # An admin sees system alerts only: a unit's is absent for them (404), as for an auditor it is refused.
    case("GET", "/api/v1/alerts/{alert_id}/history", HANDLES | {FLEET}, {200}, prepare=_health_alert,
         denied=frozenset({403, 404})),
    # A system alert (no unit, no area): fleet managers and admins; absent (404) for operators.
    case("GET", "/api/v1/alerts/{alert_id}/history", {FLEET, ADMIN}, {200}, area_scoped=False,
         prepare=_system_alert, denied=frozenset({403, 404})),
    case("POST", "/api/v1/alerts/{alert_id}/acknowledge", HANDLES, {200}, prepare=_fresh_alert),
    # Area-scoped inside: another area's ids are ignored, not refused (test_areas.py).
    case("POST", "/api/v1/alerts/acknowledge", HANDLES, {200}, area_scoped=False, prepare=_fresh_alert,
         body=lambda p, b: {"ids": [p["alert_id"]]}),
    case("POST", "/api/v1/alerts/{alert_id}/resolve", HANDLES, {200}, prepare=_fresh_alert,
         body=lambda p, b: {"outcome": "false_alarm", "note": "matrix"}),
    case("GET", "/api/v1/incidents", HANDLES | {AUDITOR, ADMIN}, {200}, area_scoped=False),
    case("POST", "/api/v1/incidents", HANDLES, {201}, area_scoped=False,
         body=lambda p, b: {"title": "matrix", "lat": 51.5, "lon": -0.13, "radius_m": 100, "borough": IN_AREA}),
    case("GET", "/api/v1/incidents/{incident_id}", HANDLES, {200}, prepare=_fresh_incident),
    case("POST", "/api/v1/incidents/{incident_id}/units", HANDLES, {200}, prepare=_fresh_incident,
         body=lambda p, b: {"device_ids": [p["device_id"]]}),
    case("DELETE", "/api/v1/incidents/{incident_id}/units/{device_id}", HANDLES, {200}, prepare=_fresh_incident),
    case("POST", "/api/v1/incidents/{incident_id}/units/armed-within", HANDLES, {200}, prepare=_fresh_incident,
         body=lambda p, b: {"within_km": 1}),
    case("POST", "/api/v1/incidents/{incident_id}/close", {AFO, ADMIN}, {200}, prepare=_fresh_incident,
         body=lambda p, b: {"outcome": "resolved"}),
    case("GET", "/api/v1/incidents/closed", HANDLES | {AUDITOR, ADMIN}, {200}, area_scoped=False),
    case("GET", "/api/v1/incidents/{incident_id}/replay", REPLAYS, {200}, prepare=_fresh_incident),
    case("GET", "/api/v1/incidents/{incident_id}/export.zip", {AUDITOR, ADMIN}, {200}, prepare=_fresh_incident),
    case("GET", "/api/v1/replay", REPLAYS, {200}, query=lambda b: {"borough": b}),
    case("GET", "/api/v1/replay/frames", REPLAYS, {200}, query=lambda b: {"borough": b}),
    case("GET", "/api/v1/fleet/export.csv", {FLEET, ADMIN}, {200}, area_scoped=False),
    case("POST", "/api/v1/devices/{device_id}/live-view", HANDLES, {201}, prepare=_fresh_device,
         body=lambda p, b: {"reason": "matrix test"}),
    case("DELETE", "/api/v1/devices/{device_id}/live-view", HANDLES, {404, 409}),
    case("GET", "/api/v1/devices/{device_id}/live-view", HANDLES, {200}),
    case("GET", "/api/v1/devices/{device_id}/viewers", HANDLES, {200}),
    case("GET", "/api/v1/live-view/requests", HANDLES, {200}, area_scoped=False),
    case("GET", "/api/v1/live-view/requests/{request_id}", HANDLES, {200}, prepare=_live_view_request),
    case("GET", "/api/v1/live-view/sessions", {AUDITOR, ADMIN}, {200}, area_scoped=False),
    case("GET", "/api/v1/live-view/sessions.csv", {AUDITOR, ADMIN}, {200}, area_scoped=False),
    case("POST", "/api/v1/whep/{device_id}", HANDLES, {409}, sdp=True, headers={"X-Viewing-Reason": "matrix test"}),
    # Ending a viewing: a role that cannot watch has no session to end (404, as for anyone's unknown session).
    case("DELETE", "/api/v1/whep/{device_id}/{session_id}", HANDLES, {404}, prepare=_whep_session,
         denied=frozenset({403, 404})),
    case("GET", "/api/v1/audit", {AUDITOR}, {200}, area_scoped=False),
    case("GET", "/api/v1/audit/verify", {AUDITOR}, {200}, area_scoped=False),
    case("GET", "/api/v1/users", {ADMIN}, {200}, area_scoped=False),
    case("POST", "/api/v1/users/{username}/disable", {ADMIN}, {200}, prepare=_fresh_user),
    case("GET", "/api/v1/alert-policy", set(Role), {200}, area_scoped=False),
    case("PUT", "/api/v1/alert-policy/{kind}/{role}", {ADMIN}, {200}, area_scoped=False, whole_force=True,
         prepare=_policy_rule, body=lambda p, b: {"outcome": "warning"}),
    case("DELETE", "/api/v1/alert-policy/{kind}/{role}", {ADMIN}, {200}, area_scoped=False, whole_force=True,
         prepare=_policy_rule),
]
#: For every signed-in caller, whatever their role, and it ends their tokens: walked with
#: tokens of its own (test below), not the matrix's shared ones.
SELF = {("POST", "/api/v1/auth/sign-out")}
#: Not for users at all: a camera's own secret (tests below).
DEVICE_ONLY = {("POST", "/api/v1/whip/{device_id}"), ("DELETE", "/api/v1/whip/{device_id}/{session_id}")}
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("POST", "/api/v1/auth/token")}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    def seed(conn: psycopg.Connection) -> None:
        for name, (role, areas) in USERS.items():
            add_user(conn, username=name, password=PASSWORD, role=role, areas=areas)
        upsert_devices(conn, [DeviceRecord(d, "M", "PC M", b, "response") for b, d in DEVICE.items()])

    # Generous limits: this walks hundreds of requests for the same users.
    settings = make_settings(rate_limit_user_per_s=10_000.0, rate_limit_user_burst=100_000,
                             rate_limit_device_per_min=10_000.0, rate_limit_device_burst=1_000)
    with api_on_machine(tmp_path_factory, settings=settings, seed=seed) as (db, server):
        yield World(db, server.base, {name: token(server.base, name) for name in USERS})


def _call(world: World, c: Case, user: str | None, borough: str) -> httpx.Response:
    params = c.prepare(world, borough)
    path = c.path.format(**params)
    headers = dict(c.headers)
    if user is not None:
        headers["Authorization"] = f"Bearer {world.tokens[user]}"
    kwargs: dict[str, Any] = {"headers": headers}
    if c.sdp:
        kwargs["content"] = SDP
        headers["content-type"] = "application/sdp"
    elif c.body is not None:
        kwargs["json"] = c.body(params, borough)
    if c.query is not None:
        kwargs["params"] = c.query(borough)
    return httpx.request(c.method, world.base + path, timeout=30, **kwargs)


def test_the_matrix_covers_every_endpoint(world: World) -> None:
    """Every operation in the OpenAPI description is in the matrix (or is public, or is a
    camera's): a new endpoint cannot go untested."""
    spec = httpx.get(world.base + "/openapi.json").json()
    operations = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    covered = {(c.method, c.path) for c in CASES} | DEVICE_ONLY | PUBLIC | SELF
    assert operations - covered == set(), "endpoints missing from the matrix"
    assert covered - operations == set(), "the matrix names endpoints that no longer exist"


@pytest.mark.parametrize("c", CASES, ids=lambda c: f"{c.method} {c.path}")
def test_no_token_is_401(world: World, c: Case) -> None:
    """No token, a malformed one, another scheme, or one signed with another key: 401 in the
    error shape with ``WWW-Authenticate: Bearer``, whatever the endpoint."""
    forged = world.tokens["admin"].rsplit(".", 1)[0] + ".c2lnbmVkIHdpdGggYW5vdGhlciBrZXk"
    for authorization in (None, "Bearer nonsense", "Basic YWRtaW46eA==", f"Bearer {forged}"):
        c_headers = dict(c.headers) | ({"Authorization": authorization} if authorization else {})
        response = _call(world, Case(**{**c.__dict__, "headers": c_headers}), None, IN_AREA)
        assert response.status_code == 401, (authorization, response.text)
        assert response.json()["error"]["code"] == "not_authenticated"
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("user", list(USERS))
@pytest.mark.parametrize("c", CASES, ids=lambda c: f"{c.method} {c.path}")
def test_role_and_area(world: World, c: Case, user: str) -> None:
    """The role's answer for a resource in its area, and for one outside it."""
    role, areas = USERS[user]
    for borough in (IN_AREA, OUT_OF_AREA):
        response = _call(world, c, user, borough)
        covered = areas == ["*"] or borough in areas or not c.area_scoped
        if role not in c.roles or (c.whole_force and areas != ["*"]):
            expected: set[int] = set(c.denied)
        elif covered:
            expected = set(c.ok)
        else:
            expected = {404}
        assert response.status_code in expected, (user, borough, response.status_code, response.text[:300])


def test_sign_out_is_for_every_signed_in_caller(world: World) -> None:
    """Every role may sign out (204), which ends that token (401 after); without a valid
    token: 401."""
    url = world.base + "/api/v1/auth/sign-out"
    for authorization in (None, "Bearer nonsense"):
        response = httpx.post(url, headers={"Authorization": authorization} if authorization else {})
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    for user in USERS:
        name = f"m-out-{next(world.counter)}"
        with world.db.connect() as conn:
            add_user(conn, username=name, password=PASSWORD, role=USERS[user][0], areas=USERS[user][1])
        headers = {"Authorization": f"Bearer {token(world.base, name)}"}
        assert httpx.post(url, headers=headers).status_code == 204, user
        assert httpx.post(url, headers=headers).status_code == 401, user


def _seed_camden_everywhere(world: World) -> list[str]:
    """Something of Camden's in every kind of list: a device, an alert, an incident with the
    unit assigned, a live-view request, a viewing and a refusal, an audit entry. Returns
    Camden's device ids."""
    device = world.device(OUT_OF_AREA)
    world.alert(OUT_OF_AREA)
    world.incident_with_unit(OUT_OF_AREA)
    _live_view_request(world, OUT_OF_AREA)
    world.sql("INSERT INTO viewing_sessions (session_id, device_id, viewer, role, reason)"
              " VALUES (%s, %s, 'op-all', 'operator', 'matrix camden viewing')", (f"s-{device}", device))
    world.sql("INSERT INTO viewing_sessions (device_id, viewer, role, reason, ended_at, refused)"
              " VALUES (%s, 'op-all', 'operator', 'matrix camden refusal', now(), 'no consent')", (device,))
    with world.db.connect() as conn:
        audit.record(conn, actor="setup", action="export", device_id=device, details={"matrix": "camden"})
    return list(world.sql("SELECT array_agg(device_id) FROM devices WHERE borough = %s", (OUT_OF_AREA,)))


def _list_operations(spec: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """Every GET in the OpenAPI description without a path parameter (a list, a summary, an
    export), with the query that makes it show the most: the largest ``limit``, retired
    devices too."""
    found = []
    for path, ops in spec["paths"].items():
        if "get" not in ops or "{" in path or (("GET", path) in PUBLIC) or path.startswith("/docs"):
            continue
        query: dict[str, str] = {}
        for param in ops["get"].get("parameters", []):
            if param["name"] == "limit":
                query["limit"] = str(param["schema"].get("maximum", 100))
            elif param["name"] == "include_retired":
                query["include_retired"] = "true"
        found.append((path, query))
    return found


@pytest.mark.parametrize("user", [u for u, (r, a) in USERS.items() if a != ["*"]])
def test_every_list_holds_only_the_callers_area(world: World, user: str) -> None:
    """Every list in the OpenAPI description (found there, so a new one is covered the day it
    appears), read by a Westminster-only user of each role, holds nothing of Camden's: none
    of its device ids, not its name."""
    camden = _seed_camden_everywhere(world)
    headers = {"Authorization": f"Bearer {world.tokens[user]}"}
    operations = _list_operations(httpx.get(world.base + "/openapi.json").json())
    assert {"/api/v1/devices", "/api/v1/live-view/sessions", "/api/v1/live-view/sessions.csv",
            "/api/v1/audit"} <= {p for p, _ in operations}
    served = 0
    for path, query in operations:
        response = httpx.get(world.base + path, params=query, headers=headers, timeout=30)
        if response.status_code == 403:
            continue
        assert response.status_code == 200, (path, response.text[:300])
        served += 1
        assert not [d for d in camden if d in response.text], (user, path)
        assert OUT_OF_AREA not in response.text, (user, path)
    assert served > 0


def _live(world: World, user: str) -> tuple[str, Any]:
    async def run() -> tuple[str, Any]:
        async with websockets.connect(world.base.replace("http", "ws") + "/api/v1/live") as ws:
            await ws.send(orjson.dumps({"type": "auth", "token": world.tokens[user]}).decode())
            try:
                frame = read_message(await asyncio.wait_for(ws.recv(), 10))
                return "frame", frame
            except websockets.ConnectionClosed as closed:
                return "closed", closed.rcvd.code if closed.rcvd else None

    return asyncio.run(run())


@pytest.mark.parametrize("user", list(USERS))
def test_live_websocket(world: World, user: str) -> None:
    """The live feed: operators, firearms commanders and fleet managers get a snapshot of their
    area only (a fleet manager without positions); auditors and admins are closed with 1008."""
    role, areas = USERS[user]
    kind, value = _live(world, user)
    if role not in (OP, AFO, FLEET):
        assert (kind, value) == ("closed", 1008)
        return
    assert kind == "frame" and value["type"] == "snapshot"
    boroughs = {u.get("borough") for u in value["units"]}
    assert IN_AREA in boroughs
    assert (OUT_OF_AREA in boroughs) == (areas == ["*"])
    if role is FLEET:
        assert all(u.get("lat") is None and u.get("officer") is None for u in value["units"])


def test_whip_takes_only_the_devices_own_secret(world: World) -> None:
    """WHIP: no user token of any role is accepted, nor another device's secret; the device's
    own secret gets past authentication (then 403: no consent to stream)."""
    with world.db.connect() as conn:
        own = provision_device(conn, record=DeviceRecord("m-whip-1", None, None, IN_AREA, "response"))
        other = provision_device(conn, record=DeviceRecord("m-whip-2", None, None, IN_AREA, "response"))
    url = f"{world.base}/api/v1/whip/m-whip-1"

    def post(bearer: str | None) -> int:
        headers = {"content-type": "application/sdp"} | ({"Authorization": f"Bearer {bearer}"} if bearer else {})
        return httpx.post(url, content=SDP, headers=headers, timeout=30).status_code

    assert post(None) == 401
    for user in USERS:
        assert post(world.tokens[user]) == 401, user
    assert post(other) == 401
    assert post(own) == 403  # authenticated; refused for want of consent
    assert httpx.delete(f"{url}/some-session", headers={"Authorization": f"Bearer {world.tokens['admin']}"}) \
        .status_code == 401
