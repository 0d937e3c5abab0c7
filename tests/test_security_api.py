"""API hardening against the real database and broker: security headers, the body limit
(413), rate limits (429 with Retry-After), failed sign-ins, the audit log through the API
and what writes to it, OIDC tokens (RS256 from a JWKS served on loopback, ES256 from a
file), and a strict CSP that still lets the page open its websocket in real Chromium."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import psycopg
import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from api.live.snapshot import read_message
from services import audit
from services.registry import DeviceRecord, provision_device, upsert_devices, verify_device_secret
from telemetry.embedded import free_port
from tests.helpers.api import PASSWORD, add_test_users, client, running_api, token
from tests.helpers.db import MACHINE_PG, Database, _with_database, require_machine_pg
from tests.helpers.environment import require_executable, require_module
from tests.helpers.telemetry import make_settings
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess

ISSUER, AUDIENCE = "https://idp.test/realms/met", "watchfloor"
DEVICES = [DeviceRecord("we-1", "WE001", "PC Ada", "Westminster", "response"),
           DeviceRecord("ca-1", "CA001", "PC Cy", "Camden", "response")]


@dataclass
class Keys:
    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    other: rsa.RSAPrivateKey  # not in the JWKS
    jwks_url: str
    jwks_file: Path


class _Jwks(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    """Keys made for this run; the JWKS served by a local HTTP server on 127.0.0.1 and in a file."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "rsa-1", "use": "sig",
               "alg": "RS256"}
    ec_jwk = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "ec-1", "use": "sig",
              "alg": "ES256"}
    body = json.dumps({"keys": [rsa_jwk, ec_jwk]}).encode()
    handler = type("Handler", (_Jwks,), {"body": body})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    jwks_file = tmp_path_factory.mktemp("jwks") / "jwks.json"
    jwks_file.write_text(body.decode())
    try:
        yield Keys(rsa_key, ec_key, other, f"http://127.0.0.1:{server.server_address[1]}/certs", jwks_file)
    finally:
        server.shutdown()
        server.server_close()


def _oidc_token(key: Any, kid: str, algorithm: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "f81d4fae", "preferred_username": "jo.bloggs@met.test",
            "iat": now, "exp": now + 300, "realm_access": {"roles": ["offline_access", "watchfloor-operator"]},
            "areas": ["Westminster"], **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm,
                      headers={"kid": kid})


@dataclass
class Stack:
    db: Database
    broker: MosquittoProcess
    base: str


@pytest.fixture(scope="module")
def db() -> Iterator[Database]:
    require_machine_pg()
    for database in _with_database(MACHINE_PG, "plain"):
        with database.connect() as conn:
            add_test_users(conn)
            upsert_devices(conn, DEVICES)
        yield database


@pytest.fixture(scope="module")
def stack(db: Database, module_mosquitto: MosquittoProcess, keys: Keys) -> Iterator[Stack]:
    """The API with OIDC (JWKS over HTTP) and a small body limit."""
    settings = make_settings(oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_jwks_url=keys.jwks_url,
                             oidc_roles_claim="realm_access.roles", oidc_role_prefix="watchfloor-",
                             max_request_bytes=4096)
    with running_api(database_url=db.url, mqtt_url=module_mosquitto.url, settings=settings) as server:
        yield Stack(db, module_mosquitto, server.base)


def _audit(db: Database, action: str) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return conn.execute("SELECT actor, device_id, details FROM audit_log WHERE action = %s ORDER BY seq",
                            (action,)).fetchall()


# Security headers ---------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [("GET", "/healthz"), ("GET", "/api/v1/devices"), ("GET", "/openapi.json"),
                                          ("GET", "/no/such/page"), ("POST", "/api/v1/auth/token"), ("GET", "/")])
def test_security_headers_on_every_response(stack: Stack, method: str, path: str) -> None:
    """Every response, error or not, carries the strict CSP and the other security headers;
    API answers are not cached."""
    response = httpx.request(method, stack.base + path, json={} if method == "POST" else None)
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    if path.startswith("/api/"):
        assert response.headers["cache-control"] == "no-store"


def test_docs_page_gets_a_csp_that_lets_it_render(stack: Stack) -> None:
    """/docs (Swagger UI, started by an inline script) has its own, looser CSP; nothing else
    does. Its files come from this origin, so the policy names no other; only Swagger UI's
    own files are served under /docs, never another file of the package that holds them."""
    page = httpx.get(stack.base + "/docs")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self' 'unsafe-inline'" in csp and "frame-ancestors 'none'" in csp
    assert "http" not in csp  # no CDN
    assert "/docs/swagger-ui-bundle.js" in page.text and "cdn." not in page.text
    for name, kind in (("swagger-ui-bundle.js", "application/javascript"), ("swagger-ui.css", "text/css")):
        asset = httpx.get(f"{stack.base}/docs/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
    for name in ("__init__.py", "..%2Fmain.py", "index.html"):
        assert httpx.get(f"{stack.base}/docs/{name}").status_code == 404
    assert httpx.get(stack.base + "/redoc").headers["content-security-policy"] != csp


# Body limit ---------------------------------------------------------------------------

def test_oversized_bodies_are_refused_with_413(stack: Stack) -> None:
    """A body over the limit is refused with 413 in the error shape, whether its length is
    declared or it arrives chunked; one under the limit is served."""
    big = {"username": "op-all", "password": "x" * 5000}
    declared = httpx.post(f"{stack.base}/api/v1/auth/token", json=big)
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:
        yield b'{"username": "op-all", "password": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    chunked = httpx.post(f"{stack.base}/api/v1/auth/token", content=chunks(),
                         headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "payload_too_large"
    with client(stack.base, "op-all") as op:
        incident = {"title": "t" * 100, "lat": 51.5, "lon": -0.1, "radius_m": 100, "borough": "Westminster",
                    "pad": "z" * 5000}
        assert op.post("/api/v1/incidents", json=incident).status_code == 413
    assert httpx.post(f"{stack.base}/api/v1/auth/token", json={"username": "op-all", "password": PASSWORD}) \
        .status_code == 200


# Rate limits --------------------------------------------------------------------------

def test_requests_per_user_are_limited_with_retry_after(db: Database, module_mosquitto: MosquittoProcess) -> None:
    """Past its burst a user gets 429 with Retry-After in the error shape; another user is
    not affected; the bucket refills."""
    settings = make_settings(rate_limit_user_per_s=2.0, rate_limit_user_burst=3)
    with running_api(database_url=db.url, mqtt_url=module_mosquitto.url, settings=settings) as server, \
            client(server.base, "op-all") as op, client(server.base, "admin") as admin:
        statuses = [op.get("/api/v1/devices").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = op.get("/api/v1/devices")
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 2
        assert admin.get("/api/v1/devices").status_code == 200
        wait_for(lambda: op.get("/api/v1/devices").status_code == 200, timeout=5, interval=0.6,
                 what="the bucket to refill")


def test_failed_sign_ins_lock_out_that_name_from_that_client(db: Database, module_mosquitto: MosquittoProcess) -> None:
    """After the burst of failures, even the right password is refused (429) for that name
    from that address; other names sign in; every failure and sign-in is audited."""
    settings = make_settings(rate_limit_sign_in_failures_per_min=1.0, rate_limit_sign_in_failures_burst=3)
    with running_api(database_url=db.url, mqtt_url=module_mosquitto.url, settings=settings) as server:
        url = f"{server.base}/api/v1/auth/token"
        before = len(_audit(db, "sign_in_failed"))
        for _ in range(3):
            assert httpx.post(url, json={"username": "op-west", "password": "guess"}).status_code == 401
        locked = httpx.post(url, json={"username": "op-west", "password": PASSWORD})
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
        assert httpx.post(url, json={"username": "fleet", "password": PASSWORD}).status_code == 200
    # The first failure of the minute on its own, the other two as one summary (services/audit_digest.py).
    failed = _audit(db, "sign_in_failed")[before:]
    assert [(a, d["client"], d.get("count")) for a, _, d in failed] == [("op-west", "127.0.0.1", None),
                                                                        ("op-west", "127.0.0.1", 2)]
    assert any(a == "fleet" and d["role"] == "fleet_manager" for a, _, d in _audit(db, "sign_in"))


def test_whip_offers_per_device_are_limited(db: Database, module_mosquitto: MosquittoProcess) -> None:
    """WHIP offers for one device from one address past the burst get 429 before the secret
    is even checked; another device is not affected."""
    settings = make_settings(rate_limit_device_per_min=1.0, rate_limit_device_burst=2)
    with running_api(database_url=db.url, mqtt_url=module_mosquitto.url, settings=settings) as server:
        def offer(device: str) -> httpx.Response:
            return httpx.post(f"{server.base}/api/v1/whip/{device}", content="v=0\r\n", timeout=30,
                              headers={"content-type": "application/sdp", "Authorization": "Bearer not-the-secret"})

        assert [offer("we-1").status_code for _ in range(3)] == [401, 401, 429]
        limited = offer("we-1")
        assert limited.json()["error"]["code"] == "rate_limited" and int(limited.headers["retry-after"]) > 1
        assert offer("ca-1").status_code == 401


# The token buckets' arithmetic, pure: tests/test_ratelimit.py.


# The audit log through the API, and what writes to it ---------------------------------

def test_audit_api_is_for_auditors_filtered_and_bounded(stack: Stack) -> None:
    """Auditors read the log newest first, filtered by actor, action, device and time; other
    roles are refused; limits are bounded; the chain check is served too."""
    with stack.db.connect() as conn:
        conn.execute("INSERT INTO alerts (device_id, kind, severity, detail) VALUES ('we-1', 'emergency',"
                     " 'critical', 'test') ON CONFLICT DO NOTHING")
        alert_id = conn.execute("SELECT id FROM alerts WHERE device_id = 'we-1' AND kind = 'emergency'").fetchone()
    assert alert_id is not None
    with client(stack.base, "op-all") as op, client(stack.base, "audit") as auditor, \
            client(stack.base, "admin") as admin:
        assert op.post(f"/api/v1/alerts/{alert_id[0]}/acknowledge").status_code == 200
        assert op.post(f"/api/v1/alerts/{alert_id[0]}/resolve", json={"outcome": "resolved", "note": "ok"}) \
            .status_code == 200
        for who in (op, admin):
            assert who.get("/api/v1/audit").status_code == 403
        everything = auditor.get("/api/v1/audit", params={"limit": 1000}).json()["items"]
        seqs = [e["seq"] for e in everything]
        assert seqs == sorted(seqs, reverse=True) and len(seqs) >= 3
        handled = auditor.get("/api/v1/audit", params={"actor": "op-all", "device_id": "we-1"}).json()["items"]
        assert [e["action"] for e in handled] == ["alert_resolved", "alert_acknowledged"]
        assert handled[0]["details"]["outcome"] == "resolved" and handled[0]["details"]["alert_id"] == alert_id[0]
        sign_ins = auditor.get("/api/v1/audit", params={"action": "sign_in", "limit": 1}).json()
        assert len(sign_ins["items"]) == 1 and sign_ins["items"][0]["action"] == "sign_in"
        future = auditor.get("/api/v1/audit", params={"start": "2099-01-01T00:00:00Z",
                                                      "end": "2099-01-02T00:00:00Z"}).json()
        assert future["items"] == []
        for bad in ({"limit": 0}, {"limit": 1001}, {"action": "nonsense"}, {"start": "2020-01-01T00:00:00"},
                    {"start": "2020-01-01T00:00:00Z", "end": "2024-01-01T00:00:00Z"}, {"device_id": "bad id"}):
            assert auditor.get("/api/v1/audit", params=bad).status_code == 422, bad
        check = auditor.get("/api/v1/audit/verify").json()
        assert check["ok"] and check["entries"] >= len(everything)


def test_registry_changes_and_retirement_are_audited(stack: Stack) -> None:
    """An admin registers and moves a device (audited with the borough), then retires it: its
    secret stops working, and the act is in the log, saying that no broker login was touched
    (this API's broker has no accounts; the login's end: test_security_broker.py)."""
    with stack.db.connect() as conn:
        secret = provision_device(conn, record=DeviceRecord("ret-1", None, None, "Camden", "response"))
    with client(stack.base, "admin") as admin:
        body = {"device_id": "ret-1", "callsign": "R1", "officer": "PC R", "borough": "Camden", "role": "response"}
        assert admin.put("/api/v1/devices/ret-1", json={**body, "borough": "Westminster"}).status_code == 200
        assert admin.post("/api/v1/devices/ret-1/retire").status_code == 200
    changes = [(a, d, details["change"], details["borough"]) for a, d, details in _audit(stack.db, "device_registered")]
    assert ("admin", "ret-1", "updated", "Westminster") in changes
    with psycopg.connect(stack.db.url) as conn:
        assert not verify_device_secret(conn, device_id="ret-1", secret=secret)
    assert [(a, d, details) for a, d, details in _audit(stack.db, "device_retired")] == \
        [("admin", "ret-1", {"credentials_revoked": True, "broker_login_disabled": None})]


def test_audit_verify_command_exit_status(stack: Stack) -> None:
    """`watchfloor audit verify` exits 0 on an intact log and 1 (naming the entry) after
    tampering; --expect-head catches entries removed from the end."""
    import os
    import subprocess
    import sys

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WATCHFLOOR_")},
           "WATCHFLOOR_DATABASE_URL": stack.db.url}

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "watchfloor", "audit", "verify", *extra], env=env,
                              capture_output=True, text=True, timeout=60)

    with stack.db.connect() as conn:
        audit.record(conn, actor="t", action="export", details={"what": "test"})
        audit.record(conn, actor="t", action="export", details={"what": "test 2"})
    intact = run()
    assert intact.returncode == 0 and "audit log intact" in intact.stdout, intact.stdout + intact.stderr
    head = intact.stdout.split("head: seq ")[1].split()[0]
    with stack.db.connect() as conn:
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        conn.execute("DELETE FROM audit_log WHERE seq = %s", (int(head),))
        conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
    assert run().returncode == 0  # the newest entry gone leaves no gap...
    truncated = run("--expect-head", head)
    assert truncated.returncode == 1 and "TAMPERED" in truncated.stdout  # ...but the kept head shows it
    with stack.db.connect() as conn:
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        conn.execute("UPDATE audit_log SET details = '{\"what\": \"nothing\"}' WHERE seq = %s", (int(head) - 1,))
        conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
    tampered = run()
    assert tampered.returncode == 1 and f"TAMPERED changed   entry {int(head) - 1}" in tampered.stdout


# OIDC ---------------------------------------------------------------------------------

def test_oidc_token_from_a_jwks_url(stack: Stack, keys: Keys) -> None:
    """An RS256 token of the provider (key from its JWKS over HTTP) is accepted, with the role
    and areas its claims give; local tokens keep working."""
    bearer = _oidc_token(keys.rsa, "rsa-1")
    response = httpx.get(f"{stack.base}/api/v1/devices", headers={"Authorization": f"Bearer {bearer}"})
    assert response.status_code == 200, response.text
    assert [d["device_id"] for d in response.json()["items"]] == ["we-1"]  # areas: Westminster only
    auditor = _oidc_token(keys.rsa, "rsa-1", realm_access={"roles": ["watchfloor-auditor"]}, areas=["*"])
    assert httpx.get(f"{stack.base}/api/v1/devices", headers={"Authorization": f"Bearer {auditor}"}) \
        .status_code == 403
    assert httpx.get(f"{stack.base}/api/v1/audit", headers={"Authorization": f"Bearer {auditor}"}).status_code == 200
    with client(stack.base, "op-all") as local:
        assert local.get("/api/v1/devices").status_code == 200


def test_oidc_sign_ins_are_audited_once_per_token(stack: Stack, keys: Keys) -> None:
    """A provider's token signs in at its first request here: one oidc_sign_in entry with its
    issuer and subject, written before the request is served; later requests with it add
    none, a new token of the same user is a new sign-in, and a refused token records none."""
    subject = f"sub-{time.monotonic_ns()}"

    def entries() -> list[tuple[Any, ...]]:
        return [e for e in _audit(stack.db, "oidc_sign_in") if e[2]["subject"] == subject]

    first = _oidc_token(keys.rsa, "rsa-1", sub=subject, preferred_username="pat.oidc@met.test")
    for _ in range(3):
        response = httpx.get(f"{stack.base}/api/v1/devices", headers={"Authorization": f"Bearer {first}"})
        assert response.status_code == 200, response.text
    assert [(actor, device, details["issuer"], details["role"]) for actor, device, details in entries()] == \
        [(f"oidc:idp.test:{subject}", None, ISSUER, "operator")]
    second = _oidc_token(keys.rsa, "rsa-1", sub=subject, preferred_username="pat.oidc@met.test",
                         iat=int(time.time()) - 1)
    assert httpx.get(f"{stack.base}/api/v1/devices", headers={"Authorization": f"Bearer {second}"}) \
        .status_code == 200
    assert len(entries()) == 2
    forged = _oidc_token(keys.other, "rsa-1", sub=subject)
    assert httpx.get(f"{stack.base}/api/v1/devices", headers={"Authorization": f"Bearer {forged}"}) \
        .status_code == 401
    assert len(entries()) == 2


@pytest.mark.parametrize("name", ["admin", "system"])
def test_an_oidc_name_never_makes_the_caller_that_user(stack: Stack, keys: Keys, name: str) -> None:
    """An OIDC user whose preferred_username is a local user's ("admin") or a system actor's
    ("system") is recorded as ``oidc:<issuer host>:<sub>``: the name claim is only for display.
    Their sign-out does not end the local user's tokens."""
    local_admin = token(stack.base, "admin")
    bearer = _oidc_token(keys.rsa, "rsa-1", sub=f"sub-{name}", preferred_username=name,
                         realm_access={"roles": ["watchfloor-admin"]}, areas=["Camden"])
    headers = {"Authorization": f"Bearer {bearer}"}
    device = f"ca-oidc-{name}"  # in Camden: the module's other tests look at Westminster
    response = httpx.post(f"{stack.base}/api/v1/devices", headers=headers,
                          json={"device_id": device, "callsign": "X", "officer": "PC X", "borough": "Camden",
                                "role": "response"})
    assert response.status_code == 201, response.text
    actors = [row[0] for row in _audit(stack.db, "device_registered") if row[1] == device]
    assert actors == [f"oidc:idp.test:sub-{name}"]
    assert httpx.post(f"{stack.base}/api/v1/auth/sign-out", headers=headers).status_code == 204
    assert httpx.get(f"{stack.base}/api/v1/devices",
                     headers={"Authorization": f"Bearer {local_admin}"}).status_code == 200


@pytest.mark.parametrize("case", ["unknown key", "wrong issuer", "wrong audience", "expired", "no role",
                                  "two roles", "alg none", "hs256 with the public key", "no kid match"])
def test_oidc_tokens_that_must_be_refused(stack: Stack, keys: Keys, case: str) -> None:
    """Tokens not signed by the provider's key, for another issuer or audience, expired,
    without exactly one Watchfloor role, or with a downgraded algorithm: 401."""
    now = int(time.time())
    bearer = {
        "unknown key": lambda: _oidc_token(keys.other, "rsa-1"),
        "wrong issuer": lambda: _oidc_token(keys.rsa, "rsa-1", iss="https://evil.test"),
        "wrong audience": lambda: _oidc_token(keys.rsa, "rsa-1", aud="another-app"),
        "expired": lambda: _oidc_token(keys.rsa, "rsa-1", iat=now - 900, exp=now - 600),
        "no role": lambda: _oidc_token(keys.rsa, "rsa-1", realm_access={"roles": ["offline_access"]}),
        "two roles": lambda: _oidc_token(keys.rsa, "rsa-1",
                                         realm_access={"roles": ["watchfloor-operator", "watchfloor-admin"]}),
        "alg none": lambda: jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": now + 60,
                                        "realm_access": {"roles": ["watchfloor-admin"]}}, None, algorithm="none"),
        "hs256 with the public key": lambda: _forged_hs256(keys),
        "no kid match": lambda: _oidc_token(keys.rsa, "nope"),
    }[case]()
    response = httpx.get(f"{stack.base}/api/v1/devices", headers={"Authorization": f"Bearer {bearer}"})
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "not_authenticated"


def _forged_hs256(keys: Keys) -> str:
    """The classic confusion attack: HMAC-sign with the provider's public key as the secret."""
    import base64
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization
    pem = keys.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(orjson.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}))
    body = b64(orjson.dumps({"iss": "watchfloor", "aud": AUDIENCE, "sub": "x", "role": "admin", "areas": ["*"],
                             "exp": int(time.time()) + 60}))
    signature = b64(hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest())
    return f"{header}.{body}.{signature}"


def test_oidc_es256_from_a_jwks_file_and_on_the_live_feed(db: Database, module_mosquitto: MosquittoProcess,
                                                          keys: Keys) -> None:
    """ES256 tokens verified against a JWKS file; an OIDC token opens the live websocket too,
    and a token whose first use is the websocket signs in there (one oidc_sign_in)."""
    settings = make_settings(oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_jwks_file=keys.jwks_file,
                             oidc_roles_claim="realm_access.roles", oidc_role_prefix="watchfloor-")
    subject = f"ws-{time.monotonic_ns()}"
    bearer = _oidc_token(keys.ec, "ec-1", algorithm="ES256")
    feed_bearer = _oidc_token(keys.ec, "ec-1", algorithm="ES256", sub=subject)
    with running_api(database_url=db.url, mqtt_url=module_mosquitto.url, settings=settings) as server:
        response = httpx.get(f"{server.base}/api/v1/devices", headers={"Authorization": f"Bearer {bearer}"})
        assert response.status_code == 200, response.text

        async def snapshot() -> dict[str, Any]:
            async with websockets.connect(server.base.replace("http", "ws") + "/api/v1/live") as ws:
                await ws.send(orjson.dumps({"type": "auth", "token": feed_bearer}).decode())
                return read_message(await asyncio.wait_for(ws.recv(), 10))

        frame = asyncio.run(snapshot())
        assert frame["type"] == "snapshot" and [u["device_id"] for u in frame["units"]] == ["we-1"]
    assert [e[2]["subject"] for e in _audit(db, "oidc_sign_in") if e[2]["subject"] == subject] == [subject]


def test_misconfigured_oidc_refuses_to_start() -> None:
    """An issuer without an audience, two JWKS sources or an HMAC algorithm is a start-up error."""
    from services.oidc import OidcVerifier, oidc_from_settings

    with pytest.raises(ValueError):
        oidc_from_settings(make_settings(oidc_issuer=ISSUER), known_roles=["operator"])
    with pytest.raises(ValueError):
        OidcVerifier(issuer=ISSUER, audience=AUDIENCE, jwks_url="http://127.0.0.1:1/", jwks_file=Path("/x"))
    with pytest.raises(ValueError):
        OidcVerifier(issuer=ISSUER, audience=AUDIENCE, jwks_url="http://127.0.0.1:1/", algorithms=["HS256"])
    assert oidc_from_settings(make_settings(), known_roles=["operator"]) is None


# Tokens in logs, secrets at start-up ---------------------------------------------------

def test_tokens_never_reach_the_logs(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    """Requests with a bearer token (good and bad), sign-ins and the live feed's auth message
    leave no token or password in any log record."""
    caplog.set_level(logging.DEBUG)
    bearer = token(stack.base, "op-all")
    with httpx.Client(base_url=stack.base, headers={"Authorization": f"Bearer {bearer}"}) as c:
        c.get("/api/v1/devices")
        c.get("/api/v1/devices/we-1", headers={"Authorization": f"Bearer {bearer}x"})
        c.post("/api/v1/auth/token", json={"username": "op-all", "password": "wrong password here"})

    async def feed() -> None:
        async with websockets.connect(stack.base.replace("http", "ws") + "/api/v1/live") as ws:
            await ws.send(orjson.dumps({"type": "auth", "token": bearer}).decode())
            await asyncio.wait_for(ws.recv(), 10)

    asyncio.run(feed())
    # The server's records: everything but this test's own clients (httpx, the websockets client).
    server = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore", "websockets.client"))]
    assert any(r.name == "watchfloor.access" for r in server)
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in server)
    assert bearer not in logged and bearer[-20:] not in logged
    assert PASSWORD not in logged and "wrong password here" not in logged


def test_api_refuses_to_start_with_a_weak_secret() -> None:
    """create_app (every entry point's way in) refuses a signing secret under 32 bytes."""
    from api.app import create_app

    for weak in ("", "changeme", "x" * 31):
        with pytest.raises(ValueError):
            create_app(settings=make_settings(), database_url="postgresql://unused", mqtt_url="mqtt://unused",
                       signing_secret=weak, audit_key=None)


# A strict CSP in a real browser ---------------------------------------------------------

def test_chromium_opens_the_live_websocket_under_the_csp(stack: Stack) -> None:
    """Headless Chromium on the API's page: connect-src 'self' lets the page open the
    same-origin websocket and get a snapshot, while an inline script and a request to another
    origin are blocked as CSP violations."""
    chromium = Path("/usr/bin/chromium")
    require_executable(str(chromium), what="Chromium")
    sync_playwright = require_module("playwright.sync_api").sync_playwright
    bearer = token(stack.base, "op-all")
    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="wf-csp-") as profile:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=str(chromium), args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = context.new_page()
            violations: list[str] = []
            page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
            response = page.goto(stack.base + "/healthz")
            assert response is not None and "connect-src 'self'" in response.headers["content-security-policy"]
            frame_type = page.evaluate("""(token) => new Promise((resolve, reject) => {
                const ws = new WebSocket(location.origin.replace('http', 'ws') + '/api/v1/live');
                ws.onopen = () => ws.send(JSON.stringify({type: 'auth', token}));
                ws.onmessage = async (event) => {  // the snapshot: deflated JSON (docs/api.md)
                    const json = event.data.stream().pipeThrough(new DecompressionStream('deflate-raw'));
                    resolve((await new Response(json).json()).type);
                    ws.close();
                };
                ws.onerror = () => reject(new Error('websocket refused'));
                setTimeout(() => reject(new Error('timeout')), 10000);
            })""", bearer)
            assert frame_type == "snapshot"
            blocked = page.evaluate("""(other) => new Promise((resolve) => {
                const seen = [];
                document.addEventListener('securitypolicyviolation', (e) => seen.push(e.violatedDirective));
                const s = document.createElement('script');
                s.textContent = 'window.injected = true';
                document.body.appendChild(s);
                fetch(other).catch(() => {}).finally(() => setTimeout(() => resolve(
                    {seen, injected: window.injected === true}), 200));
            })""", "http://127.0.0.2:9/")
            assert blocked["injected"] is False
            assert any(d.startswith("script-src") for d in blocked["seen"]), blocked
            assert any(d.startswith("connect-src") for d in blocked["seen"]), blocked
        finally:
            context.close()
