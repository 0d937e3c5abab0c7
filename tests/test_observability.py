"""Observability against real processes: an ingest worker's Prometheus endpoint, the API's
/metrics, request ids, and JSON logs that never carry a token."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import httpx
import orjson

from core.contract import Channel, topic_for
from core.logs import JsonFormatter, redact
from telemetry.embedded import free_port
from tests.helpers.api import API_PROCESS_ENV, SECRET, LiveReader, add_test_users, token
from tests.helpers.db import Database
from tests.helpers.processes import scrape, watchfloor_process
from tests.helpers.telemetry import publish_all, telemetry_payload
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess


def test_redact_masks_tokens_and_url_passwords() -> None:
    """Bearer tokens, token fields and URL passwords never survive into a log line."""
    line = redact('Authorization: Bearer eyJ.abc-def {"token": "s3cret"} mqtt://ingest:hunter2@broker:1883 '
                  "access_token=xyz password=pw1")
    for secret in ("eyJ.abc-def", "s3cret", "hunter2", "xyz", "pw1"):
        assert secret not in line
    assert "mqtt://ingest:[redacted]@broker:1883" in line


def test_json_formatter_writes_one_object_with_extra_fields() -> None:
    """A record becomes one JSON line with level, logger, message and the caller's fields."""
    record = logging.LogRecord("watchfloor.test", logging.INFO, __file__, 1, "stored %d", (5,), None)
    record.event = "batch"
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["level"] == "info" and entry["logger"] == "watchfloor.test"
    assert entry["message"] == "stored 5" and entry["event"] == "batch" and "ts" in entry


def test_ingest_worker_serves_its_metrics(pg: Database, mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    """A worker started with WATCHFLOOR_METRICS_PORT serves received, stored, rejected-by-reason
    counts, lag and batch histograms and queue depth, with no device id in any label."""
    port = free_port()
    env = {"WATCHFLOOR_DATABASE_URL": pg.url, "WATCHFLOOR_MQTT_URL": mosquitto.url, "WATCHFLOOR_TIMESCALEDB": "off",
           "WATCHFLOOR_INGEST_CLIENT_ID": "watchfloor-obs-ingest", "WATCHFLOOR_METRICS_PORT": str(port),
           "WATCHFLOOR_LOG_FORMAT": "json"}
    url = f"http://127.0.0.1:{port}/metrics"
    log = tmp_path / "ingest.log"
    with watchfloor_process(["ingest"], env, log):
        wait_for(lambda: scrape(url).get("watchfloor_ingest_broker_connected") == 1, timeout=60,
                 what="the worker connected (its metrics say so)")
        good = [(topic_for(f"obs-unit-{d}", Channel.TELEMETRY), telemetry_payload(1)) for d in range(30)]
        bad = [(topic_for("obs-unit-0", Channel.TELEMETRY), b'{"seq": ')]
        publish_all(mosquitto.url, good + bad)
        wait_for(lambda: scrape(url).get("watchfloor_ingest_messages_acknowledged_total") == 31,
                 what="31 messages acknowledged")
        text = httpx.get(url, timeout=5).text
        m = scrape(url)
    assert m['watchfloor_ingest_messages_stored_total{channel="telemetry"}'] == 30
    assert m['watchfloor_ingest_messages_rejected_total{reason="malformed_json"}'] == 1
    assert m['watchfloor_ingest_messages_rejected_total{reason="too_old"}'] == 0  # every reason, from zero
    assert m["watchfloor_ingest_messages_received_total"] == 31
    assert m["watchfloor_ingest_publish_to_commit_seconds_count"] == 30
    assert m['watchfloor_ingest_publish_to_commit_seconds_bucket{le="+Inf"}'] == 30
    assert m["watchfloor_ingest_batch_duration_seconds_count"] >= 1
    assert m["watchfloor_ingest_queue_capacity"] == 20_000
    assert m["watchfloor_ingest_last_commit_timestamp_seconds"] > time.time() - 60
    assert m["process_resident_memory_bytes"] > 0
    assert "obs-unit" not in text
    lines = [orjson.loads(line) for line in log.read_text().splitlines() if line.strip()]  # all JSON
    assert any(e["logger"] == "core.mqtt" and "connected to" in e["message"] for e in lines)


def test_api_request_ids_metrics_and_json_access_log(pg: Database, mosquitto: MosquittoProcess,
                                                     tmp_path: Path) -> None:
    """The API returns the caller's X-Request-ID (or a new one), logs one JSON line per request
    (probes only at debug) with that id and without the token, and serves /metrics with route
    templates only."""
    with pg.connect() as conn:
        add_test_users(conn)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"WATCHFLOOR_DATABASE_URL": pg.url, "WATCHFLOOR_MQTT_URL": mosquitto.url, "WATCHFLOOR_TIMESCALEDB": "off",
           **API_PROCESS_ENV, "WATCHFLOOR_LOG_FORMAT": "json"}
    log = tmp_path / "api.log"
    with watchfloor_process(["api", "--port", str(port)], env, log):
        wait_for(lambda: _ready(base), timeout=60, what="the API ready")
        echoed = httpx.get(f"{base}/healthz", headers={"X-Request-ID": "trace-abc.123"}, timeout=5)
        assert echoed.headers["x-request-id"] == "trace-abc.123"
        forged = httpx.get(f"{base}/healthz", headers={"X-Request-ID": "bad id \" level=error"}, timeout=5)
        assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["x-request-id"])
        bearer = token(base, "op-all")
        headers = {"Authorization": f"Bearer {bearer}", "X-Request-ID": "device-lookup-1"}
        assert httpx.get(f"{base}/api/v1/devices/obs-secret-unit", headers=headers, timeout=5).status_code == 404
        reader = LiveReader(base, bearer)
        try:
            wait_for(lambda: reader.of_type("snapshot"), what="a snapshot")
            m = scrape(f"{base}/metrics")
            assert m["watchfloor_live_clients"] == 1
            assert m["watchfloor_live_connections_total"] == 1
            assert m["watchfloor_relay_streams"] == 0 and m["watchfloor_relay_viewers"] == 0
            assert m["watchfloor_relay_forward_delay_seconds_count"] == 0
        finally:
            reader.close()
        text = httpx.get(f"{base}/metrics", timeout=5).text
        # The last line the checks below read: the live feed's close, logged as it ends.
        wait_for(lambda: '"websocket_closed"' in log.read_text(), what="the websocket's close in the log")
    assert 'route="/healthz",status="200"' in text
    assert 'route="/api/v1/devices/{device_id}",status="404"' in text
    assert "obs-secret-unit" not in text and "op-all" not in text
    raw = log.read_text()
    assert bearer not in raw and SECRET not in raw
    lines = [orjson.loads(line) for line in raw.splitlines() if line.startswith("{")]
    access = [e for e in lines if e.get("event") == "http_request"]
    assert not any(e["route"] == "/healthz" for e in access)  # probes pass quietly (debug)
    assert any(e["request_id"] == "device-lookup-1" and e["status"] == 404 for e in access)
    assert any(e.get("event") == "websocket_closed" and e["route"] == "/api/v1/live" for e in lines)


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
