"""The ingest loop: bounded inbox -> decode -> one transaction per batch -> acknowledge.

Two stages on two threads, so that decoding the next batch overlaps the database's work
on the current one: the *decoder* collects and validates; the *writer* owns the database
connection, commits, then acknowledges. Between them sits a hand-off of one batch.

A message is acknowledged to the broker only after the transaction that stores it (or
stores its rejection) has committed. If the process dies, or the database is away, the
broker still holds everything unacknowledged and delivers it again; the store's keys turn
the second copy into a no-op. While the database is away nothing is acknowledged, and
the broker stops sending once its in-flight window to this worker is full (Receive Maximum
= ``ingest_queue_max`` over MQTT 5; the broker's ``max_inflight_messages`` over 3.1.1), so
the inbox never has to block paho's thread, which keeps the connection alive. Memory stays
bounded by ``ingest_queue_max`` plus two batches (one being written, one handed off); if
the window were larger than the inbox, paho's thread would block on it and push back all
the same, but the broker would drop the silent connection after 1.5 keep-alives.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import TypeVar

import orjson
import paho.mqtt.client as paho
import psycopg

from core.contract import ALERTS_TOPIC, CHANNELS, TOPIC_ROOT, Event
from core.mqtt import BrokerAddress, Inbound, MqttSession, detect_protocol
from core.ratelimit import TokenBuckets
from core.settings import Settings
from telemetry.alerts import AlertRules, evaluate_batch, sweep_offline
from telemetry.decode import Decoded, PayloadLimits, Reason, Rejection, StatusChange, decode
from telemetry.latency import LatencyHistogram
from telemetry.rejection_sampler import RejectionSampler
from telemetry.retention import delete_expired, record_retention
from telemetry.schema import ensure_partitions, features, run_maintenance
from telemetry.store import Batch, RejectedMessage, prepare_connection, write_batch

__all__ = ["IngestStats", "IngestWorker", "subscription_topics"]

log = logging.getLogger(__name__)

_MAINTENANCE_EVERY_S = 3600.0
_SUMMARIES_EVERY_S = 5.0  # how often the decoder looks for rejection windows that have closed
_OFFLINE_SWEEP_EVERY_S = 5.0
_REGISTRY_REFRESH_S = 5.0


def subscription_topics(share_group: str) -> list[str]:
    """The filters ingest subscribes to, in a shared group when one is set."""
    filters = [f"{TOPIC_ROOT}/+/{channel.value}" for channel in CHANNELS]
    return [f"$share/{share_group}/{f}" for f in filters] if share_group else filters


T = TypeVar("T")


def _put_until_stopped(target: queue.Queue[T], item: T, stopping: threading.Event) -> None:
    """Put ``item``, waiting while ``target`` is full (that wait is the backpressure),
    but give up once the worker is stopping."""
    try:
        target.put_nowait(item)
        return
    except queue.Full:
        pass
    while not stopping.is_set():
        try:
            target.put(item, timeout=0.5)
            return
        except queue.Full:
            continue


@dataclass
class IngestStats:
    """Counters for logs and metrics (telemetry/metrics.py reads them when scraped). Written by
    the writer thread only, but for `delivered`."""

    received: int = 0
    stored_telemetry: int = 0
    stored_events: int = 0
    statuses: int = 0
    duplicates: int = 0
    alert_changes: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    database_errors: int = 0
    last_batch_s: float = 0.0
    last_commit_lag_s: float = 0.0  # from the oldest message's arrival to its commit
    last_commit_at: float = 0.0  # time.time() of the last commit; 0 before the first
    delivered: int = 0  # handed over by paho (redeliveries included); written by paho's thread only
    # How long a batch took from the start of its transaction to its acknowledgement.
    batch_time: LatencyHistogram = field(default_factory=LatencyHistogram)
    # From the device's timestamp to the commit: publish-to-commit when clocks agree.
    commit_lag: LatencyHistogram = field(default_factory=LatencyHistogram)


class IngestWorker:
    """One ingest process's work. ``run()`` blocks until ``stop()``."""

    def __init__(self, *, settings: Settings, database_url: str, mqtt_url: str,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self._settings = settings
        self._database_url = database_url
        self._address = BrokerAddress.parse(mqtt_url)
        self._clock = clock
        self._rules = AlertRules(
            battery_warn_pct=settings.alert_battery_warn_pct,
            battery_critical_pct=settings.alert_battery_critical_pct,
            storage_warn_pct=settings.alert_storage_warn_pct,
            gps_lost_after_s=settings.alert_gps_lost_after_s,
            offline_after_s=settings.alert_offline_after_s,
        )
        self._limits = PayloadLimits(
            max_payload_bytes=settings.max_payload_bytes,
            max_future_skew=timedelta(seconds=settings.max_future_skew_s),
            max_age=timedelta(days=settings.retention_days),
        )
        # Bounded: when full, paho's network thread waits in put(), so it stops reading
        # the socket and the broker holds the backlog (push back on the producer).
        self._inbox: queue.Queue[Inbound] = queue.Queue(maxsize=settings.ingest_queue_max)
        self._stopping = threading.Event()
        self.stats = IngestStats()
        self._known: set[str] = set()
        self._device_rate = TokenBuckets(rate_per_s=settings.ingest_device_rate_per_s,
                                         burst=settings.ingest_device_burst)
        # Rejections kept row by row per device, reason and minute; the rest counted and summed up.
        self.sampler = RejectionSampler(keep=settings.rejected_keep_per_device_per_min)
        self._sampled_at = time.monotonic()
        self._registry_loaded_at = 0.0
        self._ready_days: set[date] = set()
        # One decoded batch may wait while the writer commits the previous one.
        self._decoded: queue.Queue[tuple[list[Inbound], Batch]] = queue.Queue(maxsize=1)
        self._session: MqttSession | None = None
        self._conn: psycopg.Connection | None = None  # the writer's
        self._registry_conn: psycopg.Connection | None = None  # the decoder's

    # paho's thread hands over here: the one place where a message crosses into our thread.
    def _enqueue(self, message: Inbound) -> None:
        self.stats.delivered += 1
        _put_until_stopped(self._inbox, message, self._stopping)

    def stop(self) -> None:
        self._stopping.set()

    @property
    def protocol_name(self) -> str:
        return self._session.protocol_name if self._session is not None else "?"

    @property
    def queue_depth(self) -> int:
        return self._inbox.qsize()

    @property
    def queue_capacity(self) -> int:
        return self._inbox.maxsize

    @property
    def broker_connected(self) -> bool:
        return self._session is not None and self._session.connected.is_set()

    @property
    def broker_connections(self) -> int:
        return self._session.connections if self._session is not None else 0

    def run(self, ready: threading.Event | None = None) -> None:
        settings = self._settings
        self._conn = self._connect_database()
        self._feats = features(self._conn)
        self._load_registry()
        self._maintain()
        protocol = self._choose_protocol()
        self._session = MqttSession(
            self._address,
            client_id=settings.ingest_client_id,
            topics=subscription_topics(settings.ingest_share_group),
            protocol=protocol,
            session_expiry_s=settings.mqtt_session_expiry_s,
            receive_maximum=settings.ingest_queue_max,  # MQTT 5; over 3.1.1 the broker's max_inflight_messages
            keepalive_s=settings.mqtt_keepalive_s,
            deliver=self._enqueue,
        )
        writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        writer.start()
        self._session.start()
        if not self._session.wait_connected(30):
            log.warning("broker not reachable yet; paho keeps trying")
        if ready is not None:
            ready.set()
        try:
            while not self._stopping.is_set() and writer.is_alive():
                items = self._collect()
                if items:
                    self._hand_off((items, self._decode(items)))
        finally:
            self._stopping.set()
            writer.join()
            self._write_summaries()
            self._session.stop()
            for conn in (self._conn, self._registry_conn):
                if conn is not None:
                    conn.close()

    def _hand_off(self, work: tuple[list[Inbound], Batch]) -> None:
        """Give a decoded batch to the writer; waits while it still has one (push back)."""
        _put_until_stopped(self._decoded, work, self._stopping)

    def _write_loop(self) -> None:
        """The writer thread: commit each decoded batch, then acknowledge it."""
        next_maintenance = time.monotonic() + _MAINTENANCE_EVERY_S
        next_sweep = time.monotonic() + _OFFLINE_SWEEP_EVERY_S
        while True:
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + _OFFLINE_SWEEP_EVERY_S
                self._sweep()
            if time.monotonic() >= next_maintenance:
                next_maintenance = time.monotonic() + _MAINTENANCE_EVERY_S
                try:
                    self._maintain()
                except psycopg.Error as error:  # retried in an hour; ingest goes on
                    log.warning("maintenance failed: %s", error)
            try:
                items, batch = self._decoded.get(timeout=0.2)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            try:
                self._store(items, batch)
            except SystemExit:
                return  # stopped during an outage; the broker redelivers the batch

    def _choose_protocol(self) -> int:
        chosen = self._settings.mqtt_protocol
        if chosen == "5":
            return paho.MQTTv5
        if chosen == "3.1.1":
            return paho.MQTTv311
        return detect_protocol(self._address, client_id=self._settings.ingest_client_id)

    def _collect(self) -> list[Inbound]:
        """Up to ``ingest_batch_max`` messages, waiting at most one batch interval."""
        interval = self._settings.ingest_batch_interval_ms / 1000
        try:
            first = self._inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        items = [first]
        deadline = time.monotonic() + interval
        limit = self._settings.ingest_batch_max
        while len(items) < limit:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                time.sleep(min(remaining, 0.002))
        return items

    def _decode(self, items: list[Inbound]) -> Batch:
        now = self._clock()
        batch = Batch()
        keep = self._settings.rejected_payload_keep_bytes
        for item in items:
            received = datetime.fromtimestamp(item.received_at, timezone.utc)
            result = decode(item.topic, item.payload, now=now, limits=self._limits)
            if isinstance(result, (Decoded, StatusChange)):
                refused = self._admit(result.device_id, batch)
                if refused is not None:
                    result = refused
            if isinstance(result, Decoded) and self._device_rate.take(result.device_id) > 0.0:
                result = Rejection(Reason.RATE_LIMITED, "over the device's message rate", result.device_id)
            if isinstance(result, Rejection):
                batch.counted_rejections[result.reason.value] += 1
                batch.rejected += self.sampler.admit(RejectedMessage(result, item.topic, item.payload[:keep], received))
            elif isinstance(result, StatusChange):
                batch.statuses.append((result.device_id, received, result))
            elif isinstance(result.message, Event):
                batch.events.append((result.device_id, received, result.message))
            else:
                batch.telemetry.append((result.device_id, received, result.message))
        if time.monotonic() - self._sampled_at >= _SUMMARIES_EVERY_S:
            self._sampled_at = time.monotonic()
            batch.rejected += self.sampler.due(now)
        return batch

    def _admit(self, device_id: str, batch: Batch) -> Rejection | None:
        """Registry check: an unknown device is refused, or registered on first sight.

        Runs on the decoder thread, which alone owns ``_known``. A device is taken as known
        as soon as its batch is handed off: the writer retries that batch until it commits.
        """
        if device_id in self._known:
            return None
        if not self._settings.require_registration:
            batch.new_devices.add(device_id)
            self._known.add(device_id)
            return None
        if time.monotonic() - self._registry_loaded_at > _REGISTRY_REFRESH_S:
            self._load_registry()
            if device_id in self._known:
                return None
        return Rejection(Reason.UNKNOWN_DEVICE, "device is not registered (or retired)", device_id)

    def _store(self, items: list[Inbound], batch: Batch) -> None:
        started = time.monotonic()
        alerts = self._write(batch)
        assert self._session is not None
        self._session.ack((i.generation, i.mid) for i in items if i.qos > 0)
        self._publish_alerts(alerts)
        s = self.stats
        s.received += len(items)
        s.batches += 1
        s.rejected.update(batch.counted_rejections)  # summary rows are not counted twice
        s.statuses += len(batch.statuses)
        s.last_batch_s = time.monotonic() - started
        s.batch_time.record(s.last_batch_s)
        committed = time.time()
        s.last_commit_at = committed
        s.last_commit_lag_s = committed - min(i.received_at for i in items)
        for _, _, message in batch.telemetry:
            s.commit_lag.record(committed - message.ts.timestamp())
        for _, _, event in batch.events:
            s.commit_lag.record(committed - event.ts.timestamp())

    def _publish_alerts(self, alerts: list[dict[str, object]]) -> None:
        """Tell every API process (after commit: an alert on the feed is in the database)."""
        assert self._session is not None
        for alert in alerts:
            self._session.publish(ALERTS_TOPIC, orjson.dumps(alert))
        self.stats.alert_changes += len(alerts)

    def _write_summaries(self) -> None:
        """On the way out (the writer has stopped): the rejection summaries of open windows."""
        summaries = self.sampler.due(self._clock(), everything=True)
        if not summaries:
            return
        try:
            conn = self._writer_connection()
            with conn.transaction():
                write_batch(conn, Batch(rejected=summaries))
        except psycopg.Error as error:  # the counts stay in the metrics
            log.warning("%d rejection summaries not written: %s", len(summaries), error)

    def _sweep(self) -> None:
        try:
            conn = self._writer_connection()
            with conn.transaction():
                alerts = sweep_offline(conn, self._rules)
        except psycopg.Error as error:
            log.warning("offline sweep failed: %s", error)
            return
        self._publish_alerts(alerts)

    def _write(self, batch: Batch) -> list[dict[str, object]]:
        """Commit ``batch`` and its alerts, retrying through database outages until it is
        stored. Returns the alerts it changed."""
        delay = 0.1
        while True:
            try:
                conn = self._writer_connection()
                self._ensure_partitions(conn, batch)
                try:
                    with conn.transaction():
                        self._write_counted(conn, batch)
                        return evaluate_batch(conn, batch, self._rules)
                except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as error:
                    log.error("batch refused by the database (%s); storing message by message", error)
                    return self._write_isolated(conn, batch)
            except psycopg.OperationalError as error:
                self.stats.database_errors += 1
                log.warning("database unavailable (%s); retrying in %.1fs, nothing acknowledged",
                            error, delay)
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                if self._stopping.wait(delay):
                    raise SystemExit("stopped during a database outage; the broker keeps the batch")
                delay = min(delay * 2, 5.0)

    def _write_counted(self, conn: psycopg.Connection, batch: Batch) -> None:
        stored_t, stored_e = write_batch(conn, batch)
        self.stats.stored_telemetry += stored_t
        self.stats.stored_events += stored_e
        self.stats.duplicates += len(batch.telemetry) + len(batch.events) - stored_t - stored_e

    def _write_isolated(self, conn: psycopg.Connection, batch: Batch) -> list[dict[str, object]]:
        """Store what can be stored; a message the database refuses becomes a rejection."""
        singles: list[tuple[Batch, str, bytes]] = []
        for d, r, t in batch.telemetry:
            singles.append((Batch(telemetry=[(d, r, t)], new_devices={d} & batch.new_devices),
                            d, t.model_dump_json().encode()))
        for d, r, e in batch.events:
            singles.append((Batch(events=[(d, r, e)], new_devices={d} & batch.new_devices),
                            d, e.model_dump_json().encode()))
        refused: list[RejectedMessage] = list(batch.rejected)
        with conn.transaction():
            for single, device_id, payload in singles:
                try:
                    with conn.transaction():  # a savepoint per message
                        self._write_counted(conn, single)
                except psycopg.Error as error:
                    rejection = Rejection(Reason.REFUSED_BY_DATABASE, f"database refused: {error}"[:500], device_id)
                    refused.append(RejectedMessage(rejection, device_id, payload, datetime.now(timezone.utc)))
            write_batch(conn, Batch(statuses=batch.statuses, rejected=refused,
                                    new_devices=batch.new_devices))
            alerts = evaluate_batch(conn, batch, self._rules)
        batch.counted_rejections[Reason.REFUSED_BY_DATABASE.value] += len(refused) - len(batch.rejected)
        batch.rejected = refused
        return alerts

    def _ensure_partitions(self, conn: psycopg.Connection, batch: Batch) -> None:
        if "native_partitioning" not in self._feats:
            return
        stamps = [t.ts for _, _, t in batch.telemetry] + [e.ts for _, _, e in batch.events]
        if not stamps:
            return
        first, last = (min(stamps).astimezone(timezone.utc).date(), max(stamps).astimezone(timezone.utc).date())
        days = {first + timedelta(days=n) for n in range((last - first).days + 1)}
        missing = days - self._ready_days
        if missing:
            ensure_partitions(conn, missing)
            self._ready_days |= missing

    def _writer_connection(self) -> psycopg.Connection:
        """The writer thread's connection, opened again after an outage closed it."""
        if self._conn is None or self._conn.closed:
            self._conn = self._connect_database()
        return self._conn

    def _maintain(self) -> None:
        dropped = run_maintenance(self._writer_connection(), feats=self._feats,
                                  keep=timedelta(days=self._settings.retention_days), now=self._clock())
        if dropped:
            log.info("retention: dropped %d partitions", dropped)
            self._ready_days.clear()
        deleted = delete_expired(self._writer_connection(), retention=record_retention(self._settings),
                                 now=self._clock())
        if any(deleted.values()):
            log.info("retention: deleted %s", ", ".join(f"{n} from {t}" for t, n in deleted.items() if n))

    def _load_registry(self) -> None:
        """(Re)read the registry on the decoder's own connection; keep the old one on error."""
        self._registry_loaded_at = time.monotonic()
        try:
            if self._registry_conn is None or self._registry_conn.closed:
                self._registry_conn = psycopg.connect(self._database_url, connect_timeout=5, autocommit=True)
            rows = self._registry_conn.execute("SELECT device_id FROM devices WHERE retired_at IS NULL").fetchall()
        except psycopg.OperationalError as error:
            log.warning("registry not refreshed: %s", error)
            if self._registry_conn is not None:
                self._registry_conn.close()
            return
        self._known = {r[0] for r in rows}

    def _connect_database(self) -> psycopg.Connection:
        # Autocommit, so that every unit of work is an explicit ``transaction()`` block and
        # no read leaves a transaction open (and its locks held) between batches.
        conn = psycopg.connect(self._database_url, connect_timeout=5, autocommit=True)
        prepare_connection(conn)
        return conn
