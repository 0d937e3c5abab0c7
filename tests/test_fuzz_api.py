"""OpenAPI-driven fuzzing of the running API (schemathesis, hypothesis underneath): every
operation in /openapi.json, with generated parameters and bodies, as each role, never
answers 5xx; and without a token, nothing under /api/v1/ but sign-in is served. Bounded:
a few examples per operation and role, no shrinking, so it runs in well under a minute."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from services.registry import DeviceRecord, upsert_devices
from tests.helpers.api import api_on_machine, token
from tests.helpers.environment import require_module
from tests.helpers.telemetry import make_settings

schemathesis = require_module("schemathesis", allow_module_level=True)
hypothesis = require_module("hypothesis", allow_module_level=True)



@schemathesis.serializer("application/sdp")
def _sdp(ctx: Any, value: Any) -> bytes:
    """WHIP/WHEP offers are SDP text: send what was generated as it is."""
    return value if isinstance(value, bytes) else str(value).encode()


EXAMPLES = 4  # per operation and role
ROLES = ("op-west", "fleet", "audit", "admin")
PUBLIC = {"/healthz", "/readyz", "/api/v1/auth/token"}
#: Ends every token of the caller: called with a token of its own, so the others live on.
SIGN_OUT = "/api/v1/auth/sign-out"


@dataclass
class Target:
    base: str
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    def seed(conn: psycopg.Connection) -> None:
        upsert_devices(conn, [DeviceRecord("we-1", "WE1", "PC A", "Westminster", "response"),
                              DeviceRecord("ca-1", "CA1", "PC B", "Camden", "firearms")])
        conn.execute("INSERT INTO alerts (device_id, kind, severity, detail) VALUES"
                     " ('we-1', 'emergency', 'critical', 'fuzz')")
        conn.execute("INSERT INTO incidents (title, lat, lon, radius_m, borough, created_by)"
                     " VALUES ('fuzz', 51.5, -0.13, 100, 'Westminster', 'op-all')")

    settings = make_settings(rate_limit_user_per_s=10_000.0, rate_limit_user_burst=100_000,
                             rate_limit_device_per_min=10_000.0, rate_limit_device_burst=1_000,
                             rate_limit_sign_in_failures_per_min=10_000.0, rate_limit_sign_in_failures_burst=10_000)
    with api_on_machine(tmp_path_factory, settings=settings, seed=seed) as (_, server):
        yield Target(server.base, {name: token(server.base, name) for name in ROLES})


def _fuzz(target: Target, check: Any) -> list[str]:
    """Run ``check(case, operation_path)`` on generated cases of every operation; the failures."""
    from hypothesis import HealthCheck, Phase, given, settings

    schema = schemathesis.openapi.from_url(f"{target.base}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            problem = check(case, operation.path)
            if problem:
                failures.append(f"{operation.method.upper()} {operation.path}: {problem}")

        run()
    return failures


def test_no_server_errors_for_any_role(target: Target) -> None:
    """Generated requests to every operation, as each role, never get a 5xx."""

    def check(case: Any, path: str) -> str | None:
        problems = []
        for role in ROLES:
            bearer = token(target.base, role) if path == SIGN_OUT else target.tokens[role]
            response = case.call(base_url=target.base, headers={"Authorization": f"Bearer {bearer}"}, timeout=30)
            if response.status_code >= 500:
                problems.append(f"{role}: {response.status_code} {response.text[:200]} for {case.path_parameters} "
                                f"{case.query} {str(case.body)[:200]}")
        return "; ".join(problems) or None

    failures = _fuzz(target, check)
    assert not failures, "\n".join(failures[:20])


def test_no_unauthenticated_access(target: Target) -> None:
    """The same generated requests without a token: 401 everywhere but the public endpoints
    (a 422 for a malformed request, or 413/415 for a body refused before anything is read,
    serves nothing either)."""

    def check(case: Any, path: str) -> str | None:
        if path in PUBLIC:
            return None
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        case.headers = headers
        response = case.call(base_url=target.base, timeout=30)
        if response.status_code not in (401, 413, 415, 422):
            return f"answered {response.status_code} without a token: {response.text[:200]}"
        return None

    failures = _fuzz(target, check)
    assert not failures, "\n".join(failures[:20])
