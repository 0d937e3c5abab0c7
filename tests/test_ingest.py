"""Ingest end to end, against real brokers and databases: what is published is stored once,
bad messages are rejected beside good ones, and a slow database pushes back on the broker."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import paho.mqtt.client as paho
import psycopg
import pytest

from core.contract import Channel, topic_for
from core.mqtt import BrokerAddress, new_client
from services.registry import DeviceRecord, upsert_devices
from tests.helpers.db import Database
from tests.helpers.environment import missing
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


@dataclass
class Stack:
    db: Database
    mqtt_url: str
    share_group: str


MACHINE_MQTT = "mqtt://127.0.0.1:1883"


def _machine_mosquitto_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 1883), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(params=["mosquitto+plain", "mosquitto+timescale", "machine+plain", "embedded+embedded"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """Each supported pair: Mosquitto (shipped config) with plain PostgreSQL and with
    TimescaleDB, the machine's own Mosquitto and PostgreSQL, and the embedded pair the demo
    uses (rumqttd + pgserver)."""
    broker_kind, db_kind = request.param.split("+")
    from tests.helpers.db import _database

    if broker_kind == "machine" and not _machine_mosquitto_up():
        missing("the machine's Mosquitto is not running on 127.0.0.1:1883")
    db_iter = _database(request, db_kind)
    db = next(db_iter)
    if broker_kind == "mosquitto":
        broker = request.getfixturevalue("mosquitto")
        yield Stack(db, broker.url, "watchfloor-ingest")
    elif broker_kind == "machine":
        yield Stack(db, MACHINE_MQTT, f"wf-test-{uuid.uuid4().hex[:6]}")
    else:
        broker = request.getfixturevalue("embedded_broker")
        yield Stack(db, broker.url, "")
    next(db_iter, None)


def _stream(devices: int, reports: int, *, start_seq: int = 1) -> list[tuple[str, bytes]]:
    messages = []
    for seq in range(start_seq, start_seq + reports):
        for d in range(devices):
            messages.append((topic_for(f"unit-{d:03d}", Channel.TELEMETRY),
                             telemetry_payload(seq, battery=100 - seq * 0.1, lat=51.5 + d * 0.001)))
    return messages


def test_stream_is_stored_once_with_latest_state(stack: Stack) -> None:
    """Telemetry, events and status are stored; device_latest holds each device's newest
    report; publishing the same messages again (as a redelivery would) adds no row."""
    settings = make_settings(ingest_share_group=stack.share_group)
    messages = _stream(devices=20, reports=30)
    events = [(topic_for("unit-000", Channel.EVENTS), event_payload(1000, "recording_started", trigger="button")),
              (topic_for("unit-001", Channel.EVENTS), event_payload(1000, "emergency"))]
    with running_worker(database_url=stack.db.url, mqtt_url=stack.mqtt_url, settings=settings) as worker:
        publish_all(stack.mqtt_url, messages + events)
        publish_all(stack.mqtt_url, [(topic_for("unit-002", Channel.STATUS), b"offline")])
        wait_for(lambda: worker.stats.stored_telemetry == 600 and worker.stats.stored_events == 2
                 and worker.stats.statuses == 1, what="600 reports and 2 events stored")
        publish_all(stack.mqtt_url, messages[:100], client_id="replayer")
        wait_for(lambda: worker.stats.duplicates == 100, what="replayed messages seen as duplicates")
        assert worker.stats.rejected == {}

    db = stack.db
    assert db.scalar("SELECT count(*) FROM telemetry") == 600
    assert db.scalar("SELECT count(DISTINCT (device_id, seq)) FROM telemetry") == 600
    assert db.scalar("SELECT count(*) FROM device_events") == 2
    assert db.scalar("SELECT count(*) FROM devices WHERE auto_registered") == 20
    assert db.scalar("SELECT count(*) FROM device_latest") == 20
    assert db.scalar("SELECT min(seq) FROM device_latest") == 30
    assert db.scalar("SELECT online FROM device_latest WHERE device_id = 'unit-002'") is False
    assert db.scalar("SELECT online FROM device_latest WHERE device_id = 'unit-003'") is True
    assert db.scalar("SELECT details->>'trigger' FROM device_events WHERE type = 'recording_started'") == "button"
    # The health view (a continuous aggregate on TimescaleDB) answers the same on both paths.
    assert db.scalar("SELECT sum(samples) FROM device_health_hourly") == 600


def test_gps_loss_keeps_last_fix(pg: Database, mosquitto: MosquittoProcess) -> None:
    """A report without a fix keeps the last known position but says there is no fix."""
    settings = make_settings()
    msgs = [(topic_for("unit-9", Channel.TELEMETRY), telemetry_payload(1, lat=51.6, lon=-0.2)),
            (topic_for("unit-9", Channel.TELEMETRY), telemetry_payload(2, lat=None))]
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as worker:
        publish_all(mosquitto.url, msgs)
        wait_for(lambda: worker.stats.stored_telemetry == 2, what="both reports")
    with pg.connect() as conn:
        row = conn.execute("SELECT gps_fix, lat, lon, seq, last_fix_at < ts FROM device_latest").fetchone()
    assert row == (False, 51.6, -0.2, 2, True)


def test_out_of_order_report_does_not_overwrite_newer_state(pg: Database, mosquitto: MosquittoProcess) -> None:
    """Latest state follows the device's clock and sequence, not arrival order."""
    settings = make_settings()
    newer = (topic_for("unit-5", Channel.TELEMETRY), telemetry_payload(10, battery=40.0))
    older = (topic_for("unit-5", Channel.TELEMETRY), telemetry_payload(9, battery=50.0, ts=hours_ago(1)))
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as worker:
        publish_all(mosquitto.url, [newer])
        wait_for(lambda: worker.stats.stored_telemetry == 1, what="newer report")
        publish_all(mosquitto.url, [older])
        wait_for(lambda: worker.stats.stored_telemetry == 2, what="older report")
    assert pg.scalar("SELECT battery_pct FROM device_latest WHERE device_id = 'unit-5'") == 40.0


def _bad_messages() -> list[tuple[str, bytes, str]]:
    """(topic, payload, expected reason) for every kind of bad message ingest must survive."""
    t = lambda d: topic_for(d, Channel.TELEMETRY)  # noqa: E731
    good = telemetry_payload(1)
    return [
        ("watchfloor/v1/devices/bad.id/telemetry", good, "bad_topic"),
        ("watchfloor/v1/devices/" + "x" * 65 + "/telemetry", good, "bad_topic"),
        (t("reg-1"), b'{"seq": 1, "ts": ', "malformed_json"),
        (t("reg-1"), b"\xff\xfe\x00garbage", "malformed_json"),
        (t("reg-1"), telemetry_payload(2, battery="80"), "wrong_type"),  # type: ignore[arg-type]
        (t("reg-1"), telemetry_payload(3, recording="maybe"), "wrong_type"),
        (t("reg-1"), telemetry_payload(4, battery=180.0), "out_of_range"),
        (t("reg-1"), telemetry_payload(5, lat=123.0), "out_of_range"),
        (t("reg-1"), b'{"seq": 6}', "missing_field"),
        (t("reg-1"), telemetry_payload(7, colour="blue"), "unknown_field"),
        (t("reg-1"), telemetry_payload(8, firmware="x" * 4000 + "y" * 3000), "oversized"),
        (t("reg-1"), telemetry_payload(9, ts=hours_ago(-2)), "future_timestamp"),
        (t("reg-1"), telemetry_payload(10, ts=hours_ago(24 * 40)), "too_old"),
        (t("reg-1"), telemetry_payload(11, firmware="4.2\u0000"), "wrong_type"),
        (topic_for("reg-1", Channel.STATUS), b"sleeping", "wrong_type"),
        (t("stranger"), telemetry_payload(1), "unknown_device"),
    ]


def test_bad_messages_are_rejected_and_good_ones_beside_them_stored(pg: Database, mosquitto: MosquittoProcess) -> None:
    """A stream that mixes every kind of bad message with good ones: every good one is
    stored, every bad one is counted and kept with its reason and a bounded payload copy,
    and ingest keeps running."""
    with pg.connect() as conn:
        upsert_devices(conn, [DeviceRecord("reg-1", "WE001", "PC 1", "Westminster", "response"),
                              DeviceRecord("reg-2", "WE002", "PC 2", "Westminster", "firearms")])
    settings = make_settings(require_registration=True, rejected_payload_keep_bytes=256)
    bad = _bad_messages()
    stream: list[tuple[str, bytes]] = []
    good_count = 0
    for i, (topic, payload, _) in enumerate(bad):
        stream.append((topic, payload))
        stream.append((topic_for("reg-2", Channel.TELEMETRY), telemetry_payload(100 + i)))
        good_count += 1
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as worker:
        publish_all(mosquitto.url, stream)
        wait_for(lambda: worker.stats.received == len(stream), what="every message processed")
        expected: dict[str, int] = {}
        for _, _, reason in bad:
            expected[reason] = expected.get(reason, 0) + 1
        assert dict(worker.stats.rejected) == expected
        # Still alive and storing after all of that.
        publish_all(mosquitto.url, [(topic_for("reg-1", Channel.TELEMETRY), telemetry_payload(500))])
        wait_for(lambda: worker.stats.stored_telemetry == good_count + 1, what="a good message after the bad")

    with pg.connect() as conn:
        rows = conn.execute("SELECT topic, reason, payload_bytes, length(payload)"
                            " FROM rejected_messages ORDER BY id").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(topic, reason) for topic, _, reason in bad]
    assert all(r[3] <= 256 and r[3] == min(r[2], 256) for r in rows)
    assert pg.scalar("SELECT count(*) FROM telemetry WHERE device_id = 'reg-2'") == good_count
    assert pg.scalar("SELECT count(*) FROM devices") == 2  # the stranger was not registered


def test_a_flooding_device_is_held_to_its_rate_and_others_are_not(pg: Database, mosquitto: MosquittoProcess) -> None:
    """A device past its burst (at a rate too low to refill during the test) has the rest of
    its telemetry rejected as rate_limited and kept; its Last Will still counts; a quiet
    device beside it loses nothing."""
    settings = make_settings(ingest_device_rate_per_s=0.001, ingest_device_burst=20,
                             rejected_keep_per_device_per_min=100)
    flood = [(topic_for("noisy-1", Channel.TELEMETRY), telemetry_payload(i)) for i in range(60)]
    quiet = [(topic_for("quiet-1", Channel.TELEMETRY), telemetry_payload(i)) for i in range(10)]
    status = [(topic_for("noisy-1", Channel.STATUS), b"offline")]
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as worker:
        publish_all(mosquitto.url, flood + quiet + status)
        wait_for(lambda: worker.stats.received == 71, what="every message processed")
        assert dict(worker.stats.rejected) == {"rate_limited": 40}
    assert pg.scalar("SELECT count(*) FROM telemetry WHERE device_id = 'noisy-1'") == 20
    assert pg.scalar("SELECT count(*) FROM telemetry WHERE device_id = 'quiet-1'") == 10
    assert pg.scalar("SELECT count(*) FROM rejected_messages WHERE reason = 'rate_limited'") == 40
    assert pg.scalar("SELECT online FROM device_latest WHERE device_id = 'noisy-1'") is False


def test_a_flooding_device_leaves_a_bounded_number_of_rejected_rows(pg: Database, mosquitto: MosquittoProcess) -> None:
    """A device sending 300 messages over its rate: every one is counted by reason, but only
    the first 5 of the minute are kept row by row and the other 295 become one summary row
    (written when its window closes, here when the worker stops); a second device's
    rejections have a budget of their own."""
    settings = make_settings(ingest_device_rate_per_s=0.001, ingest_device_burst=10,
                             rejected_keep_per_device_per_min=5)
    flood = [(topic_for("noisy-1", Channel.TELEMETRY), telemetry_payload(i)) for i in range(310)]
    other = [(topic_for("noisy-2", Channel.TELEMETRY), telemetry_payload(i)) for i in range(12)]
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as worker:
        publish_all(mosquitto.url, flood + other)
        wait_for(lambda: worker.stats.received == 322, what="every message processed")
        assert dict(worker.stats.rejected) == {"rate_limited": 302}
        assert dict(worker.sampler.not_kept) == {"rate_limited": 295}
    rows = pg.scalar("SELECT array_agg(payload_bytes ORDER BY id) FROM rejected_messages WHERE device_id = 'noisy-1'")
    assert isinstance(rows, list) and len(rows) == 6 and rows[-1] == 0
    assert "295 more rate_limited" in str(pg.scalar(
        "SELECT detail FROM rejected_messages WHERE device_id = 'noisy-1' ORDER BY id DESC LIMIT 1"))
    assert pg.scalar("SELECT count(*) FROM rejected_messages WHERE device_id = 'noisy-2'") == 2


def test_slow_database_pushes_back_on_the_broker(pg: Database, mosquitto: MosquittoProcess) -> None:
    """With the telemetry table locked, ingest stores nothing, acknowledges nothing, and
    holds no more than its bounded queue plus one batch; once the lock goes, all is stored."""
    settings = make_settings(ingest_queue_max=200, ingest_batch_max=100)
    messages = _stream(devices=10, reports=300)  # 3,000
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as worker:
        publish_all(mosquitto.url, messages[:10])
        wait_for(lambda: worker.stats.stored_telemetry == 10, what="warm-up")
        blocker = psycopg.connect(pg.url)
        blocker.execute("LOCK TABLE telemetry IN ACCESS EXCLUSIVE MODE")
        try:
            publish_all(mosquitto.url, messages[10:])
            # Ingest has taken all the broker may send it (its receive maximum is the queue's
            # size): part in the queue, one batch held by the locked insert.
            wait_for(lambda: worker.stats.delivered >= 10 + settings.ingest_queue_max,
                     what="the broker's in-flight window delivered")
            assert worker.stats.stored_telemetry == 10
            assert worker.queue_depth <= 200
            held = worker.queue_depth + settings.ingest_batch_max
            assert held < len(messages) - 10  # the rest waits at the broker
        finally:
            blocker.rollback()
            blocker.close()
        wait_for(lambda: worker.stats.stored_telemetry == 3000, timeout=60, what="catch-up after the lock")
    assert pg.scalar("SELECT count(*) FROM telemetry") == 3000


def test_two_workers_share_the_load_without_duplicates(pg: Database, mosquitto: MosquittoProcess) -> None:
    """Two workers in one $share group split the stream; every message is stored once."""
    messages = _stream(devices=40, reports=50)  # 2,000
    a = make_settings(ingest_client_id="watchfloor-ingest-a")
    b = make_settings(ingest_client_id="watchfloor-ingest-b")
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=a) as wa, \
            running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=b) as wb:
        publish_all(mosquitto.url, messages)
        # A worker counts a batch as received after its commit and acknowledgements: wait for both.
        wait_for(lambda: wa.stats.stored_telemetry + wb.stats.stored_telemetry == 2000
                 and wa.stats.received + wb.stats.received == 2000, what="all stored and counted")
        assert wa.stats.received > 0 and wb.stats.received > 0  # both took part; the split is the broker's
    assert pg.scalar("SELECT count(*) FROM telemetry") == 2000
    assert pg.scalar("SELECT count(*) FROM device_latest WHERE seq = 50") == 40


def test_last_will_marks_the_device_offline(pg: Database, mosquitto: MosquittoProcess) -> None:
    """A camera that vanishes without DISCONNECT is marked offline by its Last Will."""
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=make_settings()) as worker:
        address = BrokerAddress.parse(mosquitto.url)
        camera = new_client(address, client_id="unit-lw", protocol=paho.MQTTv311)
        camera.will_set(topic_for("unit-lw", Channel.STATUS), b"offline", qos=1, retain=True)
        camera.connect(address.host, address.port, keepalive=5)
        camera.loop_start()
        camera.publish(topic_for("unit-lw", Channel.STATUS), b"online", qos=1, retain=True).wait_for_publish(5)
        wait_for(lambda: worker.stats.statuses == 1, what="online")
        assert pg.scalar("SELECT online FROM device_latest WHERE device_id = 'unit-lw'") is True
        camera.loop_stop()
        sock = camera.socket()
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        wait_for(lambda: worker.stats.statuses == 2, timeout=20, what="the Last Will")
    assert pg.scalar("SELECT online FROM device_latest WHERE device_id = 'unit-lw'") is False
