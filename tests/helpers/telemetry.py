"""Helpers shared by the tests: message factories, a QoS 1 publisher, an in-process worker."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from core import mqtt
from core.settings import Settings
from telemetry.ingest import IngestWorker


def telemetry_payload(seq: int, *, ts: datetime | None = None, battery: float = 80.0,
                      lat: float | None = 51.5, lon: float = -0.12, recording: str = "buffering",
                      **extra: Any) -> bytes:
    ts = ts or datetime.now(timezone.utc)
    body: dict[str, Any] = {
        "seq": seq,
        "ts": ts.isoformat().replace("+00:00", "Z"),
        "battery": {"pct": battery, "charging": False},
        "gps": None if lat is None else {"lat": lat, "lon": lon, "accuracy_m": 5.0},
        "recording": recording,
    }
    body.update(extra)
    return orjson.dumps(body)


def event_payload(seq: int, kind: str, *, ts: datetime | None = None, **details: Any) -> bytes:
    ts = ts or datetime.now(timezone.utc)
    body: dict[str, Any] = {"seq": seq, "ts": ts.isoformat().replace("+00:00", "Z"), "type": kind}
    if details:
        body["details"] = details
    return orjson.dumps(body)


def publish_all(url: str, messages: Iterable[tuple[str, bytes]], *, client_id: str = "test-publisher",
                retain: bool = False, timeout: float = 30.0) -> int:
    """Publish at QoS 1 and wait until the broker has acknowledged every message."""
    messages = list(messages)
    assert mqtt.publish_all(url, messages, client_id=client_id, retain=retain, timeout=timeout), \
        "broker did not acknowledge a publish"
    return len(messages)


def make_settings(**overrides: Any) -> Settings:
    """Settings for a test: a client id of its own (sessions outlive a test on a shared
    broker) that the broker forgets soon after."""
    base: dict[str, Any] = {"ingest_batch_interval_ms": 20, "mqtt_keepalive_s": 10,
                            "ingest_client_id": f"watchfloor-test-ingest-{uuid.uuid4().hex[:8]}",
                            "mqtt_session_expiry_s": 120}
    base.update(overrides)
    return Settings(**base)


@contextmanager
def running_worker(*, database_url: str, mqtt_url: str, settings: Settings) -> Iterator[IngestWorker]:
    """An ingest worker on a thread of this process, stopped (and joined) afterwards."""
    worker = IngestWorker(settings=settings, database_url=database_url, mqtt_url=mqtt_url)
    ready = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(ready=ready)
        except BaseException as error:  # surfaced to the test below
            errors.append(error)
            ready.set()

    thread = threading.Thread(target=run, name="ingest-under-test", daemon=True)
    thread.start()
    assert ready.wait(30), "ingest did not start"
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(30)
        assert not thread.is_alive(), "ingest did not stop"
    if errors:
        raise errors[0]


def hours_ago(hours: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(hours=hours)
