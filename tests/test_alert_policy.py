"""The force's alert policy: the pure decision (unit tests), the defaults migration 11 seeds,
and changes made by an admin over HTTP, applied by a running ingest worker through the
announcement on the broker, audited, refused to anyone else and refused when they make no sense."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, get_args

import pytest

from api.models import RoleName
from core.contract import Channel, topic_for
from services.accounts import Role, add_user
from services.registry import DeviceRecord, upsert_devices
from telemetry.alert_policy import (
    ANY_ROLE,
    DEVICE_ROLES,
    KINDS,
    STATE_KINDS,
    AlertPolicy,
    Outcome,
    PolicyRule,
    check_rule,
)
from telemetry.alert_policy_store import load_policy, set_rule
from tests.helpers.api import PASSWORD, ApiServer, add_test_users, client, running_api
from tests.helpers.db import Database
from tests.helpers.telemetry import event_payload, make_settings, publish_all, running_worker
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess


def _policy(*rules: PolicyRule) -> AlertPolicy:
    return AlertPolicy.of([*(PolicyRule(k, ANY_ROLE, Outcome.WARNING) for k in KINDS), *rules])


# The pure decision


def test_a_roles_own_rule_wins_and_any_role_is_the_fallback() -> None:
    """decide() takes the role's rule when there is one, the rule for any role otherwise
    (an unknown role or none too); the assigned outcome only for an assigned unit."""
    policy = _policy(PolicyRule("recording", ANY_ROLE, Outcome.ACTIVITY),
                     PolicyRule("recording", "firearms", Outcome.INFO, Outcome.HIGH))
    assert policy.decide("recording", role="response", assigned=False) is Outcome.ACTIVITY
    assert policy.decide("recording", role="response", assigned=True) is Outcome.ACTIVITY
    assert policy.decide("recording", role="firearms", assigned=False) is Outcome.INFO
    assert policy.decide("recording", role="firearms", assigned=True) is Outcome.HIGH
    assert policy.decide("recording", role="a-role-added-later", assigned=False) is Outcome.ACTIVITY
    assert policy.decide("recording", role=None, assigned=False) is Outcome.ACTIVITY
    assert policy.decide("offline", role="firearms", assigned=True) is Outcome.WARNING


def test_a_policy_needs_a_rule_for_any_role_of_every_kind() -> None:
    """Without one, some unit would have no outcome: refused when the policy is built."""
    rules = [PolicyRule(k, ANY_ROLE, Outcome.INFO) for k in KINDS if k != "geofence"]
    with pytest.raises(ValueError, match="geofence"):
        AlertPolicy.of(rules)


def test_a_rule_the_api_would_refuse_is_refused_when_the_policy_is_built() -> None:
    """A table edited by hand cannot put activity on a state kind: the worker keeps the
    policy it had (or does not start) rather than record a battery state on every report."""
    with pytest.raises(ValueError, match="battery_low is a state"):
        _policy(PolicyRule("battery_low", "traffic", Outcome.ACTIVITY))


@pytest.mark.parametrize(("rule", "reason"), [
    (PolicyRule("bogus", ANY_ROLE, Outcome.OFF), "unknown alert kind bogus"),
    (PolicyRule("<script>", ANY_ROLE, Outcome.OFF), "unknown alert kind that kind"),
    (PolicyRule("recording", "dog-handler", Outcome.OFF), "unknown device role"),
    (PolicyRule("offline", ANY_ROLE, Outcome.ACTIVITY), "offline is a state, not a moment"),
    (PolicyRule("battery_low", "firearms", Outcome.HIGH, Outcome.ACTIVITY), "battery_low is a state"),
])
def test_rules_that_cannot_be_are_named_with_their_reason(rule: PolicyRule, reason: str) -> None:
    """check_rule says why, in a sentence an admin can act on (it becomes the 422's message)."""
    found = check_rule(rule)
    assert found is not None and reason in found


def test_every_kind_and_role_can_be_set() -> None:
    """The other side: each kind takes each severity and off for each role, and each event
    kind takes activity only."""
    for kind in KINDS:
        for role in (ANY_ROLE, *DEVICE_ROLES):
            for outcome in Outcome:
                allowed = outcome is not Outcome.ACTIVITY or kind not in STATE_KINDS
                assert (check_rule(PolicyRule(kind, role, outcome)) is None) == allowed, (kind, role, outcome)


def test_the_policys_roles_are_the_registrys() -> None:
    """The registry's device roles (api.models.RoleName) and the policy's are one list."""
    assert set(get_args(RoleName)) == set(DEVICE_ROLES)


# The defaults


def test_the_default_policy_is_quiet_about_recording(pg: Database) -> None:
    """Migration 11's defaults: recording is activity only, information for a firearms unit
    and high when it is assigned; emergency and assigned-not-recording at least high; and the
    rules cover every kind the alert rules raise."""
    with pg.connect() as conn:
        policy = load_policy(conn)
    assert policy.version == 1
    assert {kind for kind, _ in policy.rules} == set(KINDS)
    for role in DEVICE_ROLES:
        if role != "firearms":
            assert policy.decide("recording", role=role, assigned=False) is Outcome.ACTIVITY
            assert policy.decide("recording", role=role, assigned=True) is Outcome.ACTIVITY
    assert policy.decide("recording", role="firearms", assigned=False) is Outcome.INFO
    assert policy.decide("recording", role="firearms", assigned=True) is Outcome.HIGH
    for role in DEVICE_ROLES:
        assert policy.decide("emergency", role=role, assigned=False) in (Outcome.HIGH, Outcome.CRITICAL)
        assert policy.decide("assigned_not_recording", role=role, assigned=True) is Outcome.HIGH


# Changes over HTTP


DEVICES = [DeviceRecord("cam-r", "WE001", "PC 1", "Westminster", "response"),
           DeviceRecord("cam-f", "WETRJ001", "PC 2", "Westminster", "firearms")]


@pytest.fixture
def api(pg: Database, mosquitto: MosquittoProcess) -> Iterator[ApiServer]:
    with pg.connect() as conn:
        add_test_users(conn)
        add_user(conn, username="admin-west", password=PASSWORD, role=Role.ADMIN, areas=["Westminster"])
        upsert_devices(conn, DEVICES)
    with running_api(database_url=pg.url, mqtt_url=mosquitto.url, settings=make_settings()) as server:
        yield server


def _alerts(pg: Database, device_id: str) -> list[tuple[Any, ...]]:
    with pg.connect() as conn:
        return conn.execute("SELECT kind, severity, status, outcome FROM alerts WHERE device_id = %s ORDER BY id",
                            (device_id,)).fetchall()


def test_an_admins_change_is_applied_by_a_running_worker(pg: Database, mosquitto: MosquittoProcess,
                                                         api: ApiServer) -> None:
    """An admin sets recording to high for response units and off for firearms units; a
    running ingest worker, whose periodic re-read is an hour away, applies each change as
    soon as it is announced: the response unit's recording raises a high alert, the firearms
    unit's raises nothing (its emergency, published after it, is raised: the worker had
    handled the recording by then); with the firearms units' own rule removed, the rule for
    any role (activity only) applies to them."""
    settings = make_settings(alert_policy_refresh_s=3600)
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as worker, \
            client(api.base, "admin") as admin:
        assert worker.alert_policy_version == 1
        response = admin.put("/api/v1/alert-policy/recording/response", json={"outcome": "high"})
        assert response.status_code == 200, response.text
        version = response.json()["version"]
        assert {"kind": "recording", "role": "response", "outcome": "high",
                "assigned_outcome": None, "after_s": None} in response.json()["rules"]
        wait_for(lambda: worker.alert_policy_version == version, what="the worker to apply the change")
        publish_all(mosquitto.url, [(topic_for("cam-r", Channel.EVENTS), event_payload(1, "recording_started"))])
        wait_for(lambda: _alerts(pg, "cam-r") == [("recording", "high", "open", None)], what="a high alert")

        response = admin.put("/api/v1/alert-policy/recording/firearms", json={"outcome": "off"})
        assert response.status_code == 200, response.text
        wait_for(lambda: worker.alert_policy_version == response.json()["version"], what="the second change")
        publish_all(mosquitto.url, [(topic_for("cam-f", Channel.EVENTS), event_payload(1, "recording_started")),
                                    (topic_for("cam-f", Channel.EVENTS), event_payload(2, "emergency"))])
        wait_for(lambda: _alerts(pg, "cam-f") != [], what="the sentinel emergency")
        assert _alerts(pg, "cam-f") == [("emergency", "critical", "open", None)]
        assert worker.stats.stored_events == 3  # the recording was stored, and only not raised

        # Removing the firearms units' own rule: the rule for any role (activity only) applies to them.
        response = admin.delete("/api/v1/alert-policy/recording/firearms")
        assert response.status_code == 200, response.text
        assert not [r for r in response.json()["rules"] if r["kind"] == "recording" and r["role"] == "firearms"]
        wait_for(lambda: worker.alert_policy_version == response.json()["version"], what="the removal")
        publish_all(mosquitto.url, [(topic_for("cam-f", Channel.EVENTS), event_payload(3, "recording_started"))])
        wait_for(lambda: ("recording", "info", "resolved", "activity") in _alerts(pg, "cam-f"),
                 what="the firearms unit's recording as activity")
    with client(api.base, "op-all") as operator:  # on the record, never among the open alerts
        resolved = operator.get("/api/v1/alerts", params={"status": "resolved"}).json()["items"]
        assert [(a["device_id"], a["kind"], a["outcome"], a["resolved_by"]) for a in resolved] == [
            ("cam-f", "recording", "activity", "policy")]
        opened = operator.get("/api/v1/alerts", params={"status": "open"}).json()["items"]
        assert {(a["device_id"], a["kind"]) for a in opened} == {("cam-r", "recording"), ("cam-f", "emergency")}


def test_a_missed_announcement_is_made_up_by_the_periodic_re_read(pg: Database, mosquitto: MosquittoProcess) -> None:
    """A change committed without an announcement (as if the worker was reconnecting when it
    was made) is applied within WATCHFLOOR_ALERT_POLICY_REFRESH_S."""
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url,
                        settings=make_settings(alert_policy_refresh_s=1)) as worker:
        assert worker.alert_policy_version == 1
        with pg.connect() as conn:
            _, version = set_rule(conn, PolicyRule("watch_me", ANY_ROLE, Outcome.CRITICAL), by="test")
        wait_for(lambda: worker.alert_policy_version == version, what="the periodic re-read")


def test_policy_changes_are_audited(pg: Database, api: ApiServer) -> None:
    """Each change (set, removed) leaves one audit entry with what the rule was before and after."""
    with client(api.base, "admin") as admin:
        assert admin.put("/api/v1/alert-policy/geofence/*", json={"outcome": "high"}).status_code == 200
        assert admin.put("/api/v1/alert-policy/geofence/traffic",
                         json={"outcome": "activity", "assigned_outcome": "warning"}).status_code == 200
        assert admin.delete("/api/v1/alert-policy/geofence/traffic").status_code == 200
    with pg.connect() as conn:
        entries = conn.execute("SELECT actor, details FROM audit_log WHERE action = 'alert_policy_changed'"
                               " ORDER BY seq").fetchall()
    assert entries == [
        ("admin", {"kind": "geofence", "role": "*", "version": 2,
                   "before": {"outcome": "warning", "assigned_outcome": None},
                   "after": {"outcome": "high", "assigned_outcome": None}}),
        ("admin", {"kind": "geofence", "role": "traffic", "version": 3, "before": None,
                   "after": {"outcome": "activity", "assigned_outcome": "warning"}}),
        ("admin", {"kind": "geofence", "role": "traffic", "version": 4,
                   "before": {"outcome": "activity", "assigned_outcome": "warning"}, "after": None}),
    ]


@pytest.mark.parametrize("username", ["op-all", "afo-cmd", "fleet", "audit", "admin-west"])
def test_only_an_admin_of_every_area_changes_the_policy(pg: Database, api: ApiServer, username: str) -> None:
    """Every role reads the policy; any other than an admin of every area gets 403 on a change
    (one policy for the whole force), and nothing is changed or audited."""
    with client(api.base, username) as who:
        assert who.get("/api/v1/alert-policy").status_code == 200
        assert who.put("/api/v1/alert-policy/recording/*", json={"outcome": "high"}).status_code == 403
        assert who.delete("/api/v1/alert-policy/recording/firearms").status_code == 403
    with pg.connect() as conn:
        assert load_policy(conn).version == 1
        assert conn.execute("SELECT count(*) FROM audit_log WHERE action = 'alert_policy_changed'").fetchone() == (0,)


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("put", "recording/*", {"outcome": "loud"}, 422, "body.outcome"),
    ("put", "recording/*", {"outcome": "high", "colour": "red"}, 422, "body.colour"),
    ("put", "recording/*", {}, 422, "body.outcome"),
    ("put", "tea_break/*", {"outcome": "high"}, 422, "unknown alert kind tea_break"),
    ("put", "recording/dog-handler", {"outcome": "high"}, 422, "unknown device role"),
    ("put", "offline/firearms", {"outcome": "activity"}, 422, "offline is a state, not a moment"),
    ("delete", "recording/*", None, 422, "the rule for any role cannot be removed"),
    ("delete", "recording/traffic", None, 404, "the rule for any role applies"),
])
def test_bad_policy_input_is_refused_with_its_reason(pg: Database, api: ApiServer, method: str, path: str,
                                                     body: dict[str, str] | None, status: int, message: str) -> None:
    """Nonsense is refused with a message that says what is wrong, and changes nothing."""
    with client(api.base, "admin") as admin:
        response = admin.request(method.upper(), f"/api/v1/alert-policy/{path}", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    with pg.connect() as conn:
        assert load_policy(conn).version == 1
