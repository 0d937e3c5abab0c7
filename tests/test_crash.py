"""Kill the ingest process (SIGKILL) in the middle of a stream and start it again: every
message published is stored exactly once, because nothing is acknowledged before commit
and the broker session survives the process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.contract import Channel, topic_for
from tests.helpers.db import Database
from tests.helpers.telemetry import publish_all, telemetry_payload
from tests.helpers.waiting import wait_for

DEVICES = 50
REPORTS = 120  # 6,000 messages
STREAMED = "SELECT count(*) FROM telemetry WHERE device_id LIKE 'crash-%%'"


def _start_ingest(db: Database, mqtt_url: str, *, protocol: str, share_group: str,
                  log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ,
               WATCHFLOOR_DATABASE_URL=db.url, WATCHFLOOR_MQTT_URL=mqtt_url,
               WATCHFLOOR_MQTT_PROTOCOL=protocol, WATCHFLOOR_INGEST_SHARE_GROUP=share_group,
               WATCHFLOOR_INGEST_CLIENT_ID="watchfloor-crash-test-ingest", WATCHFLOOR_TIMESCALEDB="off")
    return subprocess.Popen([sys.executable, "-m", "watchfloor", "ingest"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _publish_slowly(mqtt_url: str, done: threading.Event, rounds: list[int]) -> None:
    """Rounds of one report per device; ``rounds`` gets each round's number once the broker acknowledged it."""
    for seq in range(1, REPORTS + 1):
        publish_all(mqtt_url, [(topic_for(f"crash-{d:02d}", Channel.TELEMETRY), telemetry_payload(seq))
                               for d in range(DEVICES)], client_id="crash-publisher")
        rounds.append(seq)
        time.sleep(0.02)
    done.set()


@pytest.mark.parametrize("broker_kind,protocol", [
    ("mosquitto", "5"), ("mosquitto", "3.1.1"), ("embedded", "3.1.1"),
])
def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(
        request: pytest.FixtureRequest, pg: Database, tmp_path: Path, broker_kind: str, protocol: str) -> None:
    broker = request.getfixturevalue("mosquitto" if broker_kind == "mosquitto" else "embedded_broker")
    share = "watchfloor-ingest" if broker_kind == "mosquitto" else ""
    log = tmp_path / "ingest.log"
    first = _start_ingest(pg, broker.url, protocol=protocol, share_group=share, log=log)
    try:
        # A broker routes only to sessions that exist: wait until the worker has subscribed.
        def warmed_up() -> bool:
            publish_all(broker.url, [(topic_for("warmup", Channel.TELEMETRY), telemetry_payload(1))],
                        client_id="crash-warmup")
            return bool(pg.scalar("SELECT count(*) FROM telemetry WHERE device_id = 'warmup'"))

        wait_for(warmed_up, timeout=60, interval=0.3, what="the first worker to subscribe")
        done = threading.Event()
        rounds: list[int] = []
        publisher = threading.Thread(target=_publish_slowly, args=(broker.url, done, rounds), daemon=True)
        publisher.start()
        wait_for(lambda: (pg.scalar(STREAMED) or 0) > 500, timeout=60,
                 what="the first worker to store some of the stream")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = pg.scalar(STREAMED)
        # Messages keep arriving at the broker while no worker runs: a few rounds of them.
        rounds_at_kill = len(rounds)
        wait_for(lambda: len(rounds) >= rounds_at_kill + 3 or done.is_set(), what="rounds published meanwhile")
        second = _start_ingest(pg, broker.url, protocol=protocol, share_group=share, log=log)
        try:
            publisher.join(120)
            assert done.is_set(), "publisher did not finish"
            wait_for(lambda: pg.scalar(STREAMED) == DEVICES * REPORTS,
                     timeout=90, what=f"all {DEVICES * REPORTS} messages stored (log: {log.read_text()[-2000:]})")
        finally:
            second.terminate()
            second.wait(20)
    finally:
        if first.poll() is None:
            first.kill()
    assert killed_at is not None and 0 < int(killed_at) < DEVICES * REPORTS  # type: ignore[call-overload]
    assert pg.scalar("SELECT count(DISTINCT (device_id, seq)) FROM telemetry WHERE device_id LIKE 'crash-%%'") \
        == DEVICES * REPORTS
    assert pg.scalar("SELECT count(*) FROM device_latest WHERE seq = %s", (REPORTS,)) == DEVICES
