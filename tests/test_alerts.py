"""Alerts raised by ingest from real telemetry and events: raised once, cleared by the
system when the condition clears, and published for the API processes."""

from __future__ import annotations

import itertools
import math
import random
import threading
from datetime import datetime, timedelta, timezone

import msgspec
import orjson
import paho.mqtt.client as paho

from core.contract import ALERTS_TOPIC, Channel, topic_for
from core.mqtt import BrokerAddress, new_client
from core.reports import TelemetryReport
from services.registry import DeviceRecord, upsert_devices
from telemetry import incidents, queries
from telemetry.alert_policy import Outcome, PolicyRule
from telemetry.alert_policy_store import load_policy, set_rule
from telemetry.alerts import STATE_RULES, AlertRules, Geofence, evaluate_incidents, may_raise
from telemetry.decode import StatusChange
from telemetry.ingest_stats import IngestStats
from telemetry.store import Batch
from telemetry.writer import BatchWriter
from tests.helpers.broker import connect_and_wait, subscribe_and_wait
from tests.helpers.db import Database
from tests.helpers.telemetry import (
    event_payload,
    hours_ago,
    make_settings,
    publish_all,
    running_worker,
    telemetry_payload,
)
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess


class AlertFeed:
    """Subscribes to the alerts topic, as an API process does."""

    def __init__(self, url: str) -> None:
        address = BrokerAddress.parse(url)
        self.received: list[dict[str, object]] = []
        self._lock = threading.Lock()
        self._client = new_client(address, client_id="alert-feed", protocol=paho.MQTTv311)
        self._client.on_message = lambda c, u, m: self._add(orjson.loads(m.payload))
        connect_and_wait(self._client, address.host, address.port)
        subscribe_and_wait(self._client, ALERTS_TOPIC, qos=1)  # nothing raised before the SUBACK is missed

    def _add(self, alert: dict[str, object]) -> None:
        with self._lock:
            self.received.append(alert)

    def kinds(self) -> list[tuple[object, object, object]]:
        with self._lock:
            return [(a["device_id"], a["kind"], a["status"]) for a in self.received]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _register(db: Database) -> None:
    with db.connect() as conn:
        upsert_devices(conn, [DeviceRecord("cam-r", "WE001", "PC 1", "Westminster", "response"),
                              DeviceRecord("cam-f", "WETRJ001", "PC 2", "Westminster", "firearms")])


def _alerts(db: Database) -> list[tuple[str, str, str, str, str | None]]:
    with db.connect() as conn:
        return conn.execute("SELECT device_id, kind, severity, status, outcome FROM alerts ORDER BY id").fetchall()


def test_battery_storage_and_gps_alerts_raise_once_and_clear(pg: Database, mosquitto: MosquittoProcess) -> None:
    """Low battery raises a warning then a critical alert, once each however many reports
    repeat it; charging clears both; storage and GPS loss behave alike; every change is
    published on the alerts topic."""
    _register(pg)
    feed = AlertFeed(mosquitto.url)
    t = topic_for("cam-r", Channel.TELEMETRY)
    try:
        with running_worker(database_url=pg.url, mqtt_url=mosquitto.url,
                            settings=make_settings(alert_gps_lost_after_s=1)) as worker:
            publish_all(mosquitto.url, [(t, telemetry_payload(1, battery=15.0)),
                                        (t, telemetry_payload(2, battery=14.0))])
            wait_for(lambda: worker.stats.stored_telemetry == 2, what="reports")
            publish_all(mosquitto.url, [(t, telemetry_payload(3, battery=8.0, storage_pct=95.0))])
            wait_for(lambda: worker.stats.stored_telemetry == 3, what="critical report")
            assert _alerts(pg) == [("cam-r", "battery_low", "warning", "open", None),
                                   ("cam-r", "battery_critical", "critical", "open", None),
                                   ("cam-r", "storage_full", "warning", "open", None)]
            charging = orjson.loads(telemetry_payload(4, battery=9.0, storage_pct=20.0))
            charging["battery"]["charging"] = True
            publish_all(mosquitto.url, [(t, orjson.dumps(charging))])
            wait_for(lambda: all(a[3] == "resolved" for a in _alerts(pg)), what="alerts cleared")
            assert {a[4] for a in _alerts(pg)} == {"cleared"}
            # No fix for longer than the limit: raised; a fix again: cleared. Reports without a
            # fix keep coming until the limit has passed, as a device's would.
            seq = itertools.count(5)

            def gps_lost_raised() -> bool:
                publish_all(mosquitto.url, [(t, telemetry_payload(next(seq), lat=None))])
                return ("cam-r", "gps_lost", "warning", "open", None) in _alerts(pg)

            wait_for(gps_lost_raised, interval=0.3, what="gps_lost")
            publish_all(mosquitto.url, [(t, telemetry_payload(next(seq)))])
            wait_for(lambda: ("cam-r", "gps_lost", "warning", "resolved", "cleared") in _alerts(pg),
                     what="gps_lost cleared")
        wait_for(lambda: len(feed.kinds()) == 8, what="every change on the alerts topic")
        assert feed.kinds()[:3] == [("cam-r", "battery_low", "open"), ("cam-r", "battery_critical", "open"),
                                    ("cam-r", "storage_full", "open")]
    finally:
        feed.close()


def test_event_alerts_under_the_default_policy(pg: Database, mosquitto: MosquittoProcess) -> None:
    """Emergency raises a critical alert cleared by emergency_cleared. Recording, under the
    default policy: a firearms unit's is information, resolved when it stops; another unit's
    is activity only: recorded as resolved with outcome activity, never open, never on the
    alerts topic (the emergency published after it, which is, proves the feed had its turn),
    and the event itself is in the unit's history."""
    _register(pg)
    feed = AlertFeed(mosquitto.url)
    try:
        with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=make_settings()) as worker:
            publish_all(mosquitto.url, [
                (topic_for("cam-f", Channel.EVENTS), event_payload(1, "recording_started", trigger="holster")),
                (topic_for("cam-r", Channel.EVENTS), event_payload(1, "recording_started")),
                (topic_for("cam-r", Channel.EVENTS), event_payload(2, "emergency")),
            ])
            wait_for(lambda: worker.stats.stored_events == 3, what="events")
            assert _alerts(pg) == [("cam-f", "recording", "info", "open", None),
                                   ("cam-r", "recording", "info", "resolved", "activity"),
                                   ("cam-r", "emergency", "critical", "open", None)]
            wait_for(lambda: ("cam-r", "emergency", "open") in feed.kinds(), what="the emergency on the feed")
            assert feed.kinds() == [("cam-f", "recording", "open"), ("cam-r", "emergency", "open")]
            publish_all(mosquitto.url, [
                (topic_for("cam-f", Channel.EVENTS), event_payload(2, "recording_stopped")),
                (topic_for("cam-r", Channel.EVENTS), event_payload(3, "emergency_cleared")),
            ])
            wait_for(lambda: worker.stats.stored_events == 5, what="clearing events")
    finally:
        feed.close()
    statuses = {(a[0], a[1]): (a[3], a[4]) for a in _alerts(pg)}
    assert statuses == {("cam-f", "recording"): ("resolved", "cleared"),
                        ("cam-r", "recording"): ("resolved", "activity"),
                        ("cam-r", "emergency"): ("resolved", "cleared")}
    with pg.connect() as conn:
        detail = conn.execute("SELECT detail FROM alerts WHERE device_id = 'cam-f'").fetchone()
        history = queries.device_events(conn, "cam-r", start=hours_ago(1), end=hours_ago(-1), limit=10)
    assert detail == ("recording started (holster)",)
    assert [e["type"] for e in history] == ["emergency_cleared", "emergency", "recording_started"]


def test_an_assigned_firearms_unit_recording_is_high(pg: Database, mosquitto: MosquittoProcess) -> None:
    """The default policy's exception: a firearms unit assigned to an open incident that starts
    recording raises a high alert (as every firearms unit did before the policy)."""
    _register(pg)
    with pg.connect() as conn:
        incident = incidents.create(conn, incidents.NewIncident(title="armed suspect", lat=51.5, lon=-0.14,
                                                                radius_m=300, borough="Westminster"), by="afo-cmd")
        incidents.assign(conn, incident["id"], ["cam-f"], by="afo-cmd")
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=make_settings()) as worker:
        publish_all(mosquitto.url, [(topic_for("cam-f", Channel.EVENTS), event_payload(1, "recording_started"))])
        wait_for(lambda: worker.stats.stored_events == 1, what="event")
    assert _alerts(pg) == [("cam-f", "recording", "high", "open", None)]


def test_a_unit_assigned_before_its_first_report_is_raised_by_that_report(pg: Database) -> None:
    """A firearms unit assigned while it has sent only its connection status (no report, so no
    recording state) raises nothing, neither on assignment nor on the status; its first report
    raises the alert if it is not recording, naming the state it reported; recording clears it."""
    _register(pg)
    writer = BatchWriter(settings=make_settings(), database_url=pg.url, rules=AlertRules(), stats=IngestStats(),
                         stopping=threading.Event(), clock=lambda: datetime.now(timezone.utc))
    writer.open()

    def report(seq: int, recording: str) -> Batch:
        decoded = msgspec.json.decode(telemetry_payload(seq, recording=recording), type=TelemetryReport)
        return Batch(telemetry=[("cam-f", datetime.now(timezone.utc), decoded)])

    try:
        now = datetime.now(timezone.utc)
        assert writer.write(Batch(statuses=[("cam-f", now, StatusChange("cam-f", True))])) == []
        with pg.connect() as conn:
            incident = incidents.create(conn, incidents.NewIncident(title="armed suspect", lat=51.5, lon=-0.14,
                                                                    radius_m=300, borough="Westminster"), by="afo-cmd")
            incidents.assign(conn, incident["id"], ["cam-f"], by="afo-cmd")
            assert evaluate_incidents(conn, ["cam-f"], load_policy(conn), Geofence()) == []  # as the API does
        assert writer.write(Batch(statuses=[("cam-f", now, StatusChange("cam-f", True))])) == []
        assert _alerts(pg) == []

        raised = [a for a in writer.write(report(1, "buffering")) if a["kind"] == "assigned_not_recording"]
        assert [(a["status"], a["severity"], a["detail"]) for a in raised] == [
            ("open", "high", "assigned firearms unit is buffering, not recording")]
        cleared = [a for a in writer.write(report(2, "recording")) if a["kind"] == "assigned_not_recording"]
        assert [(a["id"], a["status"]) for a in cleared] == [(raised[0]["id"], "resolved")]
    finally:
        writer.close()


def test_the_screen_lets_through_every_report_a_state_rule_may_raise() -> None:
    """The one-pass screen of a batch's reports (telemetry/alerts.py, ``may_raise``) keeps
    every report that any state rule's own candidate test accepts, at and around each
    threshold, for default and for unusual thresholds."""
    rules_set = [AlertRules(), AlertRules(battery_warn_pct=5.0, battery_critical_pct=15.0, storage_warn_pct=0.0)]
    for rules in rules_set:
        reports = []
        for battery, storage, lat in itertools.product((0.0, 4.9, 5.0, 9.9, 10.0, 15.0, 19.9, 20.0, 100.0),
                                                       (None, 0.0, 89.9, 90.0, 100.0), (51.5, None)):
            extra = {} if storage is None else {"storage_pct": storage}
            decoded = msgspec.json.decode(telemetry_payload(1, battery=battery, lat=lat, **extra), type=TelemetryReport)
            reports.append(("cam", datetime.now(timezone.utc), decoded))
        screened = [t for _, t in may_raise(reports, rules)]
        for _, _, t in reports:
            if any(rule.candidate(t, rules) for rule in STATE_RULES):
                assert t in screened, (t, rules)


def test_offline_by_silence_and_a_last_will_after_the_timeout(pg: Database, mosquitto: MosquittoProcess) -> None:
    """A device that goes quiet is found by the sweep after its timeout; a Last Will raises
    nothing sooner (a tunnel is not an alert), but its unit, quiet as long, is raised too; a
    report clears it (tests/test_alert_offline.py measures the bound)."""
    _register(pg)
    with pg.connect() as conn:  # the firearms unit's own timeout (60 s by default) down to the default's
        set_rule(conn, PolicyRule("offline", "firearms", Outcome.HIGH, after_s=5), by="test")
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url,
                        settings=make_settings(alert_offline_after_s=5)) as worker:
        publish_all(mosquitto.url, [(topic_for("cam-r", Channel.TELEMETRY), telemetry_payload(1)),
                                    (topic_for("cam-f", Channel.TELEMETRY), telemetry_payload(1))])
        publish_all(mosquitto.url, [(topic_for("cam-f", Channel.STATUS), b"offline")])
        wait_for(lambda: ("cam-f", "offline", "high", "open", None) in _alerts(pg), timeout=20,
                 what="Last Will alert")
        with pg.connect() as conn:
            quiet = conn.execute("SELECT a.raised_at - l.received_at FROM alerts a JOIN device_latest l"
                                 " USING (device_id) WHERE a.device_id = 'cam-f'").fetchone()
        assert quiet is not None and quiet[0].total_seconds() >= 5, "raised before the timeout"
        wait_for(lambda: ("cam-r", "offline", "warning", "open", None) in _alerts(pg), timeout=20,
                 what="silence alert")
        publish_all(mosquitto.url, [(topic_for("cam-r", Channel.TELEMETRY), telemetry_payload(2))])
        wait_for(lambda: ("cam-r", "offline", "warning", "resolved", "cleared") in _alerts(pg), what="cleared")
        assert worker.stats.alert_changes >= 3


def test_two_workers_raise_one_alert(pg: Database, mosquitto: MosquittoProcess) -> None:
    """With two workers splitting a device's reports, its low battery is one open alert."""
    _register(pg)
    reports = [(topic_for("cam-r", Channel.TELEMETRY), telemetry_payload(i, battery=5.0)) for i in range(1, 200)]
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=make_settings()) as a, \
            running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=make_settings()) as b:
        publish_all(mosquitto.url, reports)
        wait_for(lambda: a.stats.stored_telemetry + b.stats.stored_telemetry == 199, what="all stored")
        assert a.stats.received > 0 and b.stats.received > 0
    assert sorted((x[1], x[3]) for x in _alerts(pg)) == [("battery_critical", "open"), ("battery_low", "open")]


_ESCALATE_AFTER_S = 2.0
_SWEEP_EVERY_S = 5.0  # more than telemetry.ingest's sweep period (2 s)
_SLACK_S = 2.0


def test_an_unacknowledged_emergency_escalates_once_an_acknowledged_one_never(
        pg: Database, mosquitto: MosquittoProcess) -> None:
    """With two workers sweeping, an emergency left open escalates exactly once (one history
    row, one escalation on the feed) within its deadline plus a sweep period; an emergency
    acknowledged in time never escalates, proved by the escalation of the later one."""
    _register(pg)
    feed = AlertFeed(mosquitto.url)
    settings = {"alert_escalate_after_s": {"emergency": _ESCALATE_AFTER_S}}
    try:
        with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=make_settings(**settings)), \
                running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=make_settings(**settings)):
            publish_all(mosquitto.url, [(topic_for("cam-f", Channel.EVENTS), event_payload(1, "emergency"))])
            wait_for(lambda: ("cam-f", "emergency", "open") in feed.kinds(), what="first emergency")
            with pg.connect() as conn:
                acked = conn.execute("SELECT id FROM alerts WHERE device_id = 'cam-f'").fetchone()
                assert acked is not None
                alert, changed = queries.acknowledge_alert(conn, acked[0], by="op", boroughs=None)
                assert changed and alert is not None and alert["escalated_at"] is None
            publish_all(mosquitto.url, [(topic_for("cam-r", Channel.EVENTS), event_payload(1, "emergency"))])

            def escalations() -> list[dict[str, object]]:
                with feed._lock:
                    return [a for a in feed.received if a.get("escalated_at") is not None]

            wait_for(lambda: escalations(), timeout=_ESCALATE_AFTER_S + _SWEEP_EVERY_S + 10, what="escalation")
            [sent] = escalations()
            assert (sent["device_id"], sent["escalation_level"], sent["escalated_to"]) == \
                ("cam-r", 1, "firearms_commander")
    finally:
        feed.close()
    with pg.connect() as conn:
        rows = conn.execute("SELECT device_id, status, escalation_level, escalated_at - raised_at FROM alerts"
                            " ORDER BY device_id").fetchall()
        history = conn.execute("SELECT a.device_id, h.action, h.actor FROM alert_history h"
                               " JOIN alerts a ON a.id = h.alert_id").fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [("cam-f", "acknowledged", 0), ("cam-r", "open", 1)]
    assert rows[0][3] is None
    assert rows[1][3].total_seconds() <= _ESCALATE_AFTER_S + _SWEEP_EVERY_S + _SLACK_S
    assert history == [("cam-r", "escalated", "system")]
    assert [a["device_id"] for a in feed.received if a.get("escalated_at")] == ["cam-r"]


def test_geofence_jitter_on_the_boundary_enters_once_and_leaves_once(pg: Database) -> None:
    """A unit approaches an incident's 300 m circle, stands on its boundary with 20 m GPS
    noise (seeded), goes well inside (with some inaccurate fixes far outside in between),
    stands on the boundary again and goes away: replayed fix by fix through ingest's writer
    on the real database, it enters exactly once, while well inside, and leaves exactly once,
    once away. The same replay with no margin and no dwell flaps, so the replay does test it."""
    _register(pg)
    with pg.connect() as conn:
        incidents.create(conn, incidents.NewIncident(title="boundary", lat=51.5, lon=-0.12, radius_m=300, borough=None),
                         by="afo-cmd")
    noise = random.Random(15)
    start = hours_ago(1)
    fixes: list[tuple[str, float, float, float]] = []  # (phase, metres north, metres east, accuracy)
    for phase, north, count in (("away", 600.0, 60), ("edge", 300.0, 180), ("inside", 100.0, 60),
                                ("edge", 300.0, 180), ("away", 600.0, 60)):
        for i in range(count):
            if phase == "inside" and i % 10 == 5:  # a reflection: far off, and says so
                fixes.append((phase, 700.0, 0.0, 80.0))
            else:
                fixes.append((phase, north + noise.gauss(0, 20), noise.gauss(0, 20), 8.0))

    def replay(device_id: str, geofence: Geofence) -> list[tuple[str, str]]:
        writer = BatchWriter(settings=make_settings(), database_url=pg.url, rules=AlertRules(geofence=geofence),
                             stats=IngestStats(), stopping=threading.Event(), clock=lambda: datetime.now(timezone.utc))
        writer.open()
        crossings: list[tuple[str, str]] = []
        try:
            for seq, (phase, north, east, accuracy) in enumerate(fixes, start=1):
                ts = start + timedelta(seconds=seq)
                report = orjson.loads(telemetry_payload(seq, ts=ts, lat=51.5 + north / 111320.0,
                                                        lon=-0.12 + east / (111320.0 * math.cos(math.radians(51.5)))))
                report["gps"]["accuracy_m"] = accuracy
                decoded = msgspec.json.decode(orjson.dumps(report), type=TelemetryReport)
                batch = Batch(telemetry=[(device_id, ts, decoded)])
                crossings += [(phase, str(a["status"])) for a in writer.write(batch)
                              if a["kind"] == "geofence" and a["device_id"] == device_id]
        finally:
            writer.close()
        return crossings

    assert replay("cam-r", Geofence(margin_m=25, dwell_s=15)) == [("inside", "open"), ("away", "resolved")]
    flapping = replay("cam-f", Geofence(margin_m=10, dwell_s=0))  # a margin only the accuracy needs
    assert len(flapping) > 4, "the replay does not jitter across the boundary"
