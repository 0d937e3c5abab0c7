"""Escalation in two levels: the pure decision (unit tests), and the sweep against a real
PostgreSQL taking an unacknowledged emergency to level 1 then level 2, each once, recorded on
its history and readable, area-checked, at GET /api/v1/alerts/{id}/history."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services.registry import DeviceRecord, upsert_devices
from telemetry import queries
from telemetry.alert_timeline import timeline
from telemetry.alerts import AlertRules, sweep_escalations
from telemetry.escalation import ESCALATED_TO, EscalationRules, escalation_due
from tests.helpers.api import add_test_users, client, running_api
from tests.helpers.db import Database
from tests.helpers.telemetry import make_settings
from watchfloor.mosquitto import MosquittoProcess

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
RULES = EscalationRules(first_after_s={"emergency": 30, "assigned_not_recording": 60},
                        again_after_s={"emergency": 60})


def _due(*, at_s: float, level: int = 0, escalated_s: float | None = None, kind: str = "emergency",
         severity: str = "critical", status: str = "open") -> int | None:
    return escalation_due(kind=kind, severity=severity, status=status, level=level, raised_at=T0,
                          escalated_at=None if escalated_s is None else T0 + timedelta(seconds=escalated_s),
                          now=T0 + timedelta(seconds=at_s), rules=RULES)


# The pure decision


def test_level_one_after_the_kinds_deadline_level_two_a_further_interval_later() -> None:
    assert _due(at_s=29.9) is None
    assert _due(at_s=30) == 1
    assert _due(at_s=89.9, level=1, escalated_s=30) is None
    assert _due(at_s=90, level=1, escalated_s=30) == 2
    assert _due(at_s=10_000, level=2, escalated_s=90) is None  # two levels, no more
    assert max(ESCALATED_TO) == 2 and ESCALATED_TO[1] != ESCALATED_TO[2]


@pytest.mark.parametrize(("kwargs", "why"), [
    ({"status": "acknowledged"}, "acknowledged in time"),
    ({"status": "resolved"}, "resolved"),
    ({"severity": "warning"}, "not high or critical"),
    ({"kind": "battery_low", "severity": "high"}, "a kind that does not escalate"),
    ({"kind": "assigned_not_recording", "severity": "high", "level": 1, "escalated_s": 60},
     "a kind with no second level"),
])
def test_what_never_escalates(kwargs: dict[str, object], why: str) -> None:
    assert _due(at_s=100_000, **kwargs) is None, why  # type: ignore[arg-type]


# Against PostgreSQL, and read over HTTP


def test_an_unacknowledged_emergency_reaches_level_two_once_and_its_history_says_so(
        pg: Database, mosquitto: MosquittoProcess) -> None:
    """Swept twice at each stage (as two workers would), an emergency escalates to level 1,
    then level 2, once each; a bulk acknowledgement and a resolution follow; its history
    shows raised, escalated twice, acknowledged, resolved, each with who and when, to an
    operator of its area and of every area, and is absent (404) for an operator of another
    area and for a fleet manager, who does not see emergencies."""
    with pg.connect() as conn:
        add_test_users(conn)
        upsert_devices(conn, [DeviceRecord("cam-c", "CA001", "PC 1", "Camden", "response"),
                              DeviceRecord("cam-w", "WE001", "PC 2", "Westminster", "response")])
        row = conn.execute("INSERT INTO alerts (device_id, kind, severity, detail, raised_at) VALUES"
                           " ('cam-c', 'emergency', 'critical', 'emergency button pressed',"
                           " now() - interval '1 hour') RETURNING id").fetchone()
        assert row is not None
        alert_id = row[0]
        rules = AlertRules(escalation=EscalationRules(first_after_s={"emergency": 30},
                                                      again_after_s={"emergency": 60}))
        first = sweep_escalations(conn, rules) + sweep_escalations(conn, AlertRules(
            escalation=EscalationRules(first_after_s={"emergency": 30})))  # no second level configured
        assert [(a["id"], a["escalation_level"], a["escalated_to"]) for a in first] == [
            (alert_id, 1, "firearms_commander")]
        assert sweep_escalations(conn, rules) == []  # level 2 is a minute after level 1
        conn.execute("UPDATE alerts SET escalated_at = escalated_at - interval '61 seconds'")
        second = sweep_escalations(conn, rules) + sweep_escalations(conn, rules)
        assert [(a["id"], a["escalation_level"], a["escalated_to"]) for a in second] == [
            (alert_id, 2, "firearms_commander:all_areas")]
        assert sweep_escalations(conn, rules) == []
        queries.acknowledge_alerts(conn, by="op-all", boroughs=None, kinds=None, ids=[alert_id], kind=None,
                                   severity=None, borough=None)
        queries.resolve_alert(conn, alert_id, by="op-all", outcome="false_alarm", note="pressed by mistake",
                              boroughs=None)
    with running_api(database_url=pg.url, mqtt_url=mosquitto.url, settings=make_settings()) as api:
        for username in ("op-all", "afo-cmd"):
            with client(api.base, username) as reader:
                response = reader.get(f"/api/v1/alerts/{alert_id}/history")
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["alert"]["escalation_level"] == 2
            assert [(h["action"], h["actor"]) for h in body["history"]] == [
                ("raised", "system"), ("escalated", "system"), ("escalated", "system"),
                ("acknowledged", "op-all"), ("resolved", "op-all")]
            assert "level 2, firearms_commander:all_areas" in body["history"][2]["detail"]
            assert body["history"][4]["detail"] == "false_alarm: pressed by mistake"
            stamps = [h["at"] for h in body["history"]]
            assert stamps == sorted(stamps)
        for username in ("op-west", "fleet"):
            with client(api.base, username) as outsider:
                assert outsider.get(f"/api/v1/alerts/{alert_id}/history").status_code == 404, username
        with client(api.base, "audit") as auditor:  # not an alert reader at all
            assert auditor.get(f"/api/v1/alerts/{alert_id}/history").status_code == 403
        with client(api.base, "op-all") as reader:
            assert reader.get("/api/v1/alerts/999999/history").status_code == 404


def test_the_timeline_shows_an_acknowledgement_once() -> None:
    """An acknowledgement one by one is on the alert's row only; one in bulk is on both: the
    timeline has it once either way."""
    alert = {"raised_at": T0, "severity": "high", "detail": "x", "acknowledged_at": T0 + timedelta(seconds=5),
             "acknowledged_by": "op", "resolved_at": None}
    single = timeline(alert, [])
    bulk = timeline(alert, [{"at": T0 + timedelta(seconds=5), "action": "acknowledged", "actor": "op",
                             "detail": "acknowledged in bulk"}])
    assert [e.action for e in single] == [e.action for e in bulk] == ["raised", "acknowledged"]
    assert bulk[1].detail == "acknowledged in bulk"
