"""System alerts (telemetry/system_alerts.py): an alert with no unit, raised when a storage job
is failing, once per failure spell, resolved by the system when the job is looked after again;
seen by fleet managers and admins whatever their areas, by nobody else, and handled by nobody.

The decision is pure (first tests); raising, not raising twice and resolving go through the
real alerts table (a database test); who sees it goes through the API and the live feed. The
jobs are simulated as tests/test_storage_jobs.py does (TimescaleDB need not be installed)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import psycopg
import pytest

from core.contract import ALERTS_TOPIC
from services.accounts import Principal, Role, add_user
from services.registry import DeviceRecord, upsert_devices
from telemetry.storage_jobs import GRACE, JobState, JobVerdict, StorageHealth, judge
from telemetry.system_alerts import (
    STORAGE_JOB_FAILING,
    apply_storage_job_alerts,
    storage_job_changes,
    storage_job_subject,
)
from tests.helpers.api import PASSWORD, LiveReader, client, running_api, token
from tests.helpers.db import Database
from tests.helpers.telemetry import make_settings, publish_all
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess

HOUR = timedelta(hours=1)
ERROR = 'cannot drop portal "" while it is being set up'


def _now() -> datetime:
    return datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)


def _job(job_id: int, **changes: object) -> JobState:
    base = JobState(
        job_id=job_id,
        proc_name="policy_retention",
        target="telemetry",
        scheduled=True,
        schedule_interval=24 * HOUR,
        created_at=_now() - timedelta(days=10),
        last_success=_now() - 2 * HOUR,
        last_run_status="Success",
        total_failures=0,
        last_error=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _health(*, failing: tuple[int, ...] = (), ok: tuple[int, ...] = ()) -> StorageHealth:
    """A check after which the jobs ``failing`` are not looked after (overdue, and Watchfloor's
    own run of each failed) and the jobs ``ok`` are."""
    now = _now()
    jobs = [
        _job(j, last_success=now - timedelta(days=5), last_run_status="Failed", total_failures=9, last_error=ERROR)
        for j in failing
    ] + [_job(j) for j in ok]
    verdicts: list[JobVerdict] = []
    for verdict in judge(jobs, now=now, grace=GRACE):
        if verdict.run:
            verdict = replace(verdict, ran_ok=False, run_error="permission denied for job")
        verdicts.append(verdict)
    health = StorageHealth(checked_at=now, verdicts=tuple(verdicts))
    assert [v.job.job_id for v in health.failing] == list(failing)
    return health


# ---- the decision ------------------------------------------------------------------------


def test_a_failing_job_raises_one_alert_naming_the_job_and_its_error() -> None:
    """A job storage is not looked after by, with no open alert: one system alert, whose
    subject is the job and whose detail names it, what it does and the last errors."""
    changes = storage_job_changes(_health(failing=(1001,), ok=(1000,)), set())
    [alert] = changes.raise_
    assert (alert.kind, alert.subject, alert.severity) == (STORAGE_JOB_FAILING, "storage_job:1001", "warning")
    assert "storage job 1001 (policy_retention on telemetry)" in alert.detail
    assert ERROR in alert.detail and "permission denied for job" in alert.detail
    assert changes.resolve == ()


def test_a_job_still_failing_with_its_alert_open_raises_nothing_more() -> None:
    """One alert per failure spell: later checks that find it failing leave the open one be."""
    changes = storage_job_changes(_health(failing=(1001,)), {storage_job_subject(1001)})
    assert changes.raise_ == () and changes.resolve == ()


def test_a_job_looked_after_again_or_gone_resolves_its_alert() -> None:
    """The job succeeded again (or its policy was removed and the job is gone): resolved."""
    open_ = {storage_job_subject(1000), storage_job_subject(1999)}
    changes = storage_job_changes(_health(ok=(1000,)), open_)
    assert changes.raise_ == ()
    assert changes.resolve == ("storage_job:1000", "storage_job:1999")


def test_a_check_that_could_not_read_the_jobs_changes_nothing() -> None:
    """No jobs read (an error, or never checked): nothing is known, so nothing is resolved."""
    open_ = {storage_job_subject(1000)}
    errored = replace(_health(ok=(1000,)), error="connection lost")
    assert storage_job_changes(errored, open_).resolve == ()
    assert storage_job_changes(StorageHealth(checked_at=None), open_).resolve == ()


def test_who_sees_a_system_alert_is_the_role_alone() -> None:
    """Fleet managers and admins see a system alert whatever their areas; operators and
    firearms commanders (even of every borough) and auditors do not. A unit's alert is
    still decided by area and kind."""
    system = {"id": 1, "device_id": None, "subject": "storage_job:1000", "kind": STORAGE_JOB_FAILING, "borough": None}
    unit = {"id": 2, "device_id": "we-1", "kind": "battery_low", "borough": "Westminster"}
    west = frozenset({"Westminster"})
    seers = [Principal("f", Role.FLEET_MANAGER, west), Principal("a", Role.ADMIN, west)]
    blind = [
        Principal("o", Role.OPERATOR, None),
        Principal("c", Role.FIREARMS_COMMANDER, None),
        Principal("u", Role.AUDITOR, None),
    ]
    assert all(p.sees_alert(system) and p.sees_kind(STORAGE_JOB_FAILING) for p in seers)
    assert not any(p.sees_alert(system) or p.sees_kind(STORAGE_JOB_FAILING) for p in blind)
    assert Principal("o", Role.OPERATOR, west).sees_alert(unit)
    assert not Principal("o", Role.OPERATOR, frozenset({"Camden"})).sees_alert(unit)
    assert not Principal("a", Role.ADMIN, None).sees_alert(unit)


# ---- the alerts table --------------------------------------------------------------------


def _open_system_alerts(db: Database) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return conn.execute(
            "SELECT subject, status FROM alerts WHERE device_id IS NULL AND status <> 'resolved' ORDER BY id"
        ).fetchall()


def _apply(db: Database, health: StorageHealth) -> list[dict[str, Any]]:
    with db.connect() as conn, conn.transaction():
        return apply_storage_job_alerts(conn, health)


def test_raise_once_per_spell_then_resolve_through_the_alerts_table(pg: Database) -> None:
    """Failing: one alert with no device. Failing at the next check: still one. Looked after:
    resolved by the system (cleared). Failing again: a new alert, a new spell."""
    raised = _apply(pg, _health(failing=(1001,), ok=(1000,)))
    assert [(a["device_id"], a["subject"], a["status"]) for a in raised] == [(None, "storage_job:1001", "open")]
    assert _apply(pg, _health(failing=(1001,), ok=(1000,))) == []
    assert _open_system_alerts(pg) == [("storage_job:1001", "open")]
    [cleared] = _apply(pg, _health(ok=(1000, 1001)))
    assert (cleared["id"], cleared["status"], cleared["outcome"], cleared["resolved_by"]) == (
        raised[0]["id"],
        "resolved",
        "cleared",
        "system",
    )
    assert _open_system_alerts(pg) == []
    [again] = _apply(pg, _health(failing=(1001,)))
    assert again["id"] != raised[0]["id"]


def test_the_database_keeps_one_open_alert_per_subject_and_a_device_or_a_subject(pg: Database) -> None:
    """Two processes checking at once cannot both raise it (the partial unique index); an
    alert has a device or a subject, never both nor neither."""
    _apply(pg, _health(failing=(1001,)))
    insert = "INSERT INTO alerts (device_id, subject, kind, severity, detail) VALUES (%s, %s, %s, 'warning', 'x')"
    with pg.connect() as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(insert, (None, "storage_job:1001", STORAGE_JOB_FAILING))
    with pg.connect() as conn:
        upsert_devices(conn, [DeviceRecord("we-1", "WE1", "PC A", "Westminster", "response")])
    for device, subject in ((None, None), ("we-1", "storage_job:1001")):
        with pg.connect() as conn, pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(insert, (device, subject, STORAGE_JOB_FAILING))


# ---- who sees it: the API and the live feed ----------------------------------------------

USERS = {
    "op-all": (Role.OPERATOR, ["*"]),
    "afo-cmd": (Role.FIREARMS_COMMANDER, ["*"]),
    "fleet-west": (Role.FLEET_MANAGER, ["Westminster"]),
    "admin-west": (Role.ADMIN, ["Westminster"]),
    "audit": (Role.AUDITOR, ["*"]),
}


@pytest.fixture
def api(pg: Database, mosquitto: MosquittoProcess) -> Iterator[str]:
    with pg.connect() as conn:
        for name, (role, areas) in USERS.items():
            add_user(conn, username=name, password=PASSWORD, role=role, areas=areas)
        upsert_devices(conn, [DeviceRecord("we-1", "WE1", "PC A", "Westminster", "response")])
    with running_api(database_url=pg.url, mqtt_url=mosquitto.url, settings=make_settings(live_rate_hz=10.0)) as s:
        yield s.base


def _unit_alert(db: Database, kind: str) -> dict[str, Any]:
    with db.connect() as conn:
        row = conn.execute(
            "INSERT INTO alerts (device_id, kind, severity, detail) VALUES ('we-1', %s, 'warning',"
            " 'test') RETURNING id, device_id, kind, severity, status, detail, raised_at",
            (kind,),
        ).fetchone()
    assert row is not None
    return dict(zip(("id", "device_id", "kind", "severity", "status", "detail", "raised_at"), row))


def _ids(items: list[dict[str, Any]]) -> set[int]:
    return {a["id"] for a in items}


def test_an_operator_cannot_see_or_handle_a_system_alert(pg: Database, api: str) -> None:
    """The attack: an operator (and a firearms commander) of every borough asks for the system
    alert by list, kind, id and history, and tries to acknowledge (one, in bulk) and resolve
    it: absent every time, and it stays open. An auditor sees no alerts at all."""
    [alert] = _apply(pg, _health(failing=(1001,)))
    for user in ("op-all", "afo-cmd"):
        with client(api, user) as c:
            for status in (None, "open"):
                listed = c.get("/api/v1/alerts", params={"status": status} if status else {})
                assert listed.status_code == 200 and alert["id"] not in _ids(listed.json()["items"]), user
            assert c.get("/api/v1/alerts", params={"kind": STORAGE_JOB_FAILING}).status_code == 403
            assert c.get(f"/api/v1/alerts/{alert['id']}/history").status_code == 404
            assert c.post(f"/api/v1/alerts/{alert['id']}/acknowledge").status_code == 404
            assert (
                c.post(
                    f"/api/v1/alerts/{alert['id']}/resolve", json={"outcome": "false_alarm", "note": "x"}
                ).status_code
                == 404
            )
            bulk = c.post("/api/v1/alerts/acknowledge", json={"ids": [alert["id"]]})
            assert bulk.status_code == 200 and bulk.json()["count"] == 0
    with client(api, "audit") as auditor:
        assert auditor.get("/api/v1/alerts").status_code == 403
    assert _open_system_alerts(pg) == [("storage_job:1001", "open")]


def test_fleet_managers_and_admins_of_any_area_see_it_and_cannot_handle_it(pg: Database, api: str) -> None:
    """A Westminster fleet manager and admin see the system alert (list, kind filter,
    history); the admin sees no unit's alert; neither may acknowledge (the system resolves it)."""
    [alert] = _apply(pg, _health(failing=(1001,)))
    unit = _unit_alert(pg, "emergency")
    for user in ("fleet-west", "admin-west"):
        with client(api, user) as c:
            items = c.get("/api/v1/alerts").json()["items"]
            [shown] = [a for a in items if a["id"] == alert["id"]]
            assert (shown["device_id"], shown["subject"], shown["borough"]) == (None, "storage_job:1001", None)
            assert unit["id"] not in _ids(items)
            by_kind = c.get("/api/v1/alerts", params={"kind": STORAGE_JOB_FAILING}).json()["items"]
            assert _ids(by_kind) == {alert["id"]}
            assert c.get("/api/v1/alerts", params={"borough": "Westminster"}).json()["items"] == []
            history = c.get(f"/api/v1/alerts/{alert['id']}/history")
            assert history.status_code == 200 and history.json()["history"][0]["action"] == "raised"
            assert c.post(f"/api/v1/alerts/{alert['id']}/acknowledge").status_code == 403


def test_the_live_feed_carries_system_alerts_to_fleet_managers_only(
    pg: Database, mosquitto: MosquittoProcess, api: str
) -> None:
    """The snapshot and the live alerts: a fleet manager gets the system alerts, an operator
    of every borough never does (checked once a later unit alert, which both see, arrived)."""
    [first] = _apply(pg, _health(failing=(1001,)))
    operator = LiveReader(api, token(api, "op-all"))
    fleet = LiveReader(api, token(api, "fleet-west"))
    try:
        wait_for(lambda: operator.of_type("snapshot") and fleet.of_type("snapshot"), what="snapshots")
        assert first["id"] in _ids(fleet.of_type("snapshot")[0]["alerts"])
        assert first["id"] not in _ids(operator.of_type("snapshot")[0]["alerts"])
        [second] = _apply(pg, _health(failing=(1001, 1002)))
        sentinel = _unit_alert(pg, "battery_low")  # a health kind: both see it
        publish_all(mosquitto.url, [(ALERTS_TOPIC, orjson.dumps(second)), (ALERTS_TOPIC, orjson.dumps(sentinel))])

        def live(reader: LiveReader) -> set[int]:
            return {a["id"] for f in reader.of_type("alerts") for a in f["alerts"]}

        wait_for(lambda: sentinel["id"] in live(operator) and sentinel["id"] in live(fleet), what="the sentinel")
        assert second["id"] in live(fleet)
        assert second["id"] not in live(operator)
    finally:
        operator.close()
        fleet.close()
