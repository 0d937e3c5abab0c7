"""The live picture comes from ingest (telemetry/live_frame.py), with a real broker, PostgreSQL,
ingest workers and the API: what ingest rejects or rate-limits never reaches a websocket
client while a good message beside it does; two workers' frames both reach clients; an older
report stored after a newer one leaves the screen as it was; a restarted API process rebuilds
from ``device_latest``, and after a broker reconnect; the registry-only refresh reads what the
full read does. The pure frame and the hub's merge: test_live_core.py."""

from __future__ import annotations

from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import api.app
from api.live.state import REGISTRY_FIELDS
from core.contract import Channel, topic_for
from services.registry import DeviceRecord, upsert_devices
from telemetry import queries
from telemetry.ingest import IngestWorker
from tests.helpers.api import LiveReader, add_test_users, running_api, token
from tests.helpers.db import Database
from tests.helpers.telemetry import event_payload, make_settings, publish_all, running_worker, telemetry_payload
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess

DEVICES = [DeviceRecord(f"lf-{n}", f"LF{n:03}", f"PC {n}", "Westminster", "response") for n in range(8)]


@pytest.fixture
def registered(pg: Database) -> Database:
    with pg.connect() as conn:
        add_test_users(conn)
        upsert_devices(conn, DEVICES)
    return pg


def _battery(reader: LiveReader, device_id: str) -> Any:
    return (reader.latest_unit(device_id) or {}).get("battery_pct")


def _stored(workers: list[IngestWorker], count: int) -> None:
    wait_for(lambda: sum(w.stats.received for w in workers) >= count, timeout=60,
             what=f"{count} messages through ingest")


def test_what_ingest_rejects_or_rate_limits_never_reaches_a_screen(registered: Database,
                                                                   mosquitto: MosquittoProcess) -> None:
    """Beside good reports: a payload out of the contract's range, a report older than the
    retention (the API used to take both, with looser limits) and a report over its device's
    rate. None of them is stored, so none is shown; the good ones are."""
    settings = make_settings(live_rate_hz=10.0, ingest_device_rate_per_s=0.001, ingest_device_burst=1)
    old = datetime.now(timezone.utc) - timedelta(days=settings.retention_days + 5)
    with running_worker(database_url=registered.url, mqtt_url=mosquitto.url, settings=settings) as worker, \
            running_api(database_url=registered.url, mqtt_url=mosquitto.url, settings=settings) as server:
        reader = LiveReader(server.base, token(server.base, "op-all"))
        try:
            wait_for(lambda: reader.of_type("snapshot"), what="snapshot")
            messages = [
                (topic_for("lf-0", Channel.TELEMETRY), telemetry_payload(1, battery=150.0)),  # out of range
                (topic_for("lf-1", Channel.TELEMETRY), telemetry_payload(1, ts=old, battery=11.0)),  # too old
                (topic_for("lf-2", Channel.TELEMETRY), telemetry_payload(1, battery=42.0)),  # its one token
                (topic_for("lf-2", Channel.TELEMETRY), telemetry_payload(2, battery=12.0)),  # over the rate
                (topic_for("lf-3", Channel.TELEMETRY), telemetry_payload(1, battery=33.0)),  # the sentinel
            ]
            publish_all(mosquitto.url, messages)
            _stored([worker], len(messages))
            wait_for(lambda: _battery(reader, "lf-3") == 33.0, what="the good report beside them")
            assert _battery(reader, "lf-2") == 42.0
            assert _battery(reader, "lf-0") is None and _battery(reader, "lf-1") is None
            shown = {u.get("battery_pct") for f in reader.frames for u in f.get("units", [])}
            assert not shown & {150.0, 11.0, 12.0}
            assert worker.stats.rejected["rate_limited"] == 1
        finally:
            reader.close()


def test_both_workers_frames_reach_clients_and_an_older_report_never_overwrites(
        registered: Database, mosquitto: MosquittoProcess) -> None:
    """Two ingest workers in one ``$share`` group split the devices' messages, and each
    publishes its own frames: a client sees every unit. Then a unit's older report, stored
    after its newer one, leaves the newer one on screen."""
    settings = make_settings(live_rate_hz=10.0)
    now = datetime.now(timezone.utc)
    with ExitStack() as stack:
        workers = [stack.enter_context(running_worker(
            database_url=registered.url, mqtt_url=mosquitto.url,
            settings=settings.model_copy(update={"ingest_client_id": f"{settings.ingest_client_id}-{n}"})))
            for n in (1, 2)]
        server = stack.enter_context(running_api(database_url=registered.url, mqtt_url=mosquitto.url,
                                                 settings=settings))
        reader = LiveReader(server.base, token(server.base, "op-all"))
        stack.callback(reader.close)
        wait_for(lambda: reader.of_type("snapshot"), what="snapshot")
        # Mosquitto hands a shared subscription's messages round robin: every round of 8
        # reaches both workers. Repeat (with new values) until each has published a frame.
        sent = 0
        for round_ in range(1, 20):
            battery = 50.0 + round_
            sent += publish_all(mosquitto.url, [(topic_for(d.device_id, Channel.TELEMETRY),
                                                 telemetry_payload(round_, ts=now + timedelta(seconds=round_),
                                                                   battery=battery)) for d in DEVICES])
            _stored(workers, sent)
            wait_for(lambda b=battery: all(_battery(reader, d.device_id) == b for d in DEVICES),  # type: ignore[misc]
                     timeout=60, what=f"round {round_} on screen")
            if all(w.stats.live_frames for w in workers):
                break
        assert all(w.stats.live_frames for w in workers), "one worker never published a frame"
        newest = battery
        # lf-0's older report (stored: it is in range, only late), then a sentinel for lf-1.
        sent += publish_all(mosquitto.url, [
            (topic_for("lf-0", Channel.TELEMETRY),
             telemetry_payload(100, ts=now - timedelta(seconds=30), battery=1.0)),
            (topic_for("lf-1", Channel.TELEMETRY),
             telemetry_payload(100, ts=now + timedelta(seconds=60), battery=2.0)),
        ])
        _stored(workers, sent)
        wait_for(lambda: _battery(reader, "lf-1") == 2.0, what="the sentinel")
        assert _battery(reader, "lf-0") == newest
        assert 1.0 not in {u.get("battery_pct") for f in reader.frames for u in f.get("units", [])}


def test_a_restarted_api_process_rebuilds_from_the_database(registered: Database,
                                                             mosquitto: MosquittoProcess) -> None:
    """What ingest stored while no API process ran is in the next one's first snapshot:
    frames are not kept for it, ``device_latest`` is."""
    settings = make_settings(live_rate_hz=10.0)
    with running_worker(database_url=registered.url, mqtt_url=mosquitto.url, settings=settings) as worker:
        with running_api(database_url=registered.url, mqtt_url=mosquitto.url, settings=settings) as server:
            reader = LiveReader(server.base, token(server.base, "op-all"))
            try:
                publish_all(mosquitto.url, [(topic_for("lf-4", Channel.TELEMETRY),
                                             telemetry_payload(1, battery=64.0))])
                wait_for(lambda: _battery(reader, "lf-4") == 64.0, what="the report on screen")
            finally:
                reader.close()
        received = worker.stats.received
        publish_all(mosquitto.url, [(topic_for("lf-4", Channel.TELEMETRY), telemetry_payload(2, battery=63.0))])
        _stored([worker], received + 1)
        with running_api(database_url=registered.url, mqtt_url=mosquitto.url, settings=settings) as server:
            reader = LiveReader(server.base, token(server.base, "op-all"))
            try:
                wait_for(lambda: reader.of_type("snapshot"), what="snapshot")
                [unit] = [u for u in reader.of_type("snapshot")[0]["units"] if u["device_id"] == "lf-4"]
                assert unit["battery_pct"] == 63.0
            finally:
                reader.close()


def test_an_api_process_that_reconnects_to_the_broker_rebuilds_from_the_database(
        registered: Database, mosquitto: MosquittoProcess) -> None:
    """Frames published while an API process's broker session was away are lost with it; on
    reconnecting it reloads every unit from ``device_latest``. Here the state changes in the
    database while the broker is down (as a worker's commit the API never heard of), and an
    open client sees it once the broker is back."""
    settings = make_settings(live_rate_hz=10.0)
    with running_worker(database_url=registered.url, mqtt_url=mosquitto.url, settings=settings), \
            running_api(database_url=registered.url, mqtt_url=mosquitto.url, settings=settings) as server:
        reader = LiveReader(server.base, token(server.base, "op-all"))
        try:
            publish_all(mosquitto.url, [(topic_for("lf-5", Channel.TELEMETRY), telemetry_payload(1, battery=70.0))])
            wait_for(lambda: _battery(reader, "lf-5") == 70.0, what="the report on screen")
            hub = server.app.state.hub
            mosquitto.stop()
            wait_for(lambda: not hub.connected.is_set(), what="the API to notice the broker gone")
            with registered.connect() as conn:
                conn.execute("UPDATE device_latest SET battery_pct = 71, ts = ts + interval '1 second'"
                             " WHERE device_id = 'lf-5'")
                conn.commit()
            mosquitto.start()
            wait_for(lambda: _battery(reader, "lf-5") == 71.0, timeout=90, what="the state reloaded")
        finally:
            reader.close()


def test_a_camera_undocked_by_another_officer_shows_them_without_a_registry_reload(
        registered: Database, mosquitto: MosquittoProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """A camera taken from the dock by another officer: ingest's frame of that batch carries the
    registry's new officer, so an open client sees them. The API's periodic registry reload is
    set beyond the test's reach, so nothing but the frame can bring the new name."""
    monkeypatch.setattr(api.app, "_REGISTRY_REFRESH_S", 24 * 3600.0)
    settings = make_settings(live_rate_hz=10.0)
    with running_worker(database_url=registered.url, mqtt_url=mosquitto.url, settings=settings), \
            running_api(database_url=registered.url, mqtt_url=mosquitto.url, settings=settings) as server:
        reader = LiveReader(server.base, token(server.base, "op-all"))
        try:
            wait_for(lambda: (reader.latest_unit("lf-6") or {}).get("officer") == "PC 6", what="the snapshot")
            publish_all(mosquitto.url, [
                (topic_for("lf-6", Channel.EVENTS), event_payload(1, "docked")),
                (topic_for("lf-6", Channel.EVENTS), event_payload(2, "undocked", officer="PC Ben", callsign="WE07"))])
            wait_for(lambda: (reader.latest_unit("lf-6") or {}).get("officer") == "PC Ben", timeout=60,
                     what="the new officer on screen")
            assert (reader.latest_unit("lf-6") or {}).get("callsign") == "WE07"
        finally:
            reader.close()


def test_the_registry_read_alone_agrees_with_the_full_read(registered: Database) -> None:
    """The API's periodic refresh reads the registry alone (``registry_snapshot``), and the full
    rows (``units_snapshot``) only of the devices new to it: the same devices and registry
    fields, in ``REGISTRY_FIELDS``' order, retired devices in neither."""
    with registered.connect() as conn:
        conn.execute("UPDATE devices SET retired_at = now() WHERE device_id = 'lf-7'")
        conn.execute("UPDATE devices SET borough = NULL WHERE device_id = 'lf-1'")
        whole = queries.units_snapshot(conn)
        alone = queries.registry_snapshot(conn)
        some = queries.units_snapshot(conn, device_ids=["lf-2", "lf-7", "nope"])
    assert sorted(alone) == sorted((r["device_id"], *(r[k] for k in REGISTRY_FIELDS)) for r in whole)
    assert {r[0] for r in alone} == {f"lf-{n}" for n in range(7)}
    assert [r["device_id"] for r in some] == ["lf-2"]
