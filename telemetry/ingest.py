"""The ingest loop: bounded inbox -> decode -> one transaction per batch -> acknowledge.

Two stages on two threads, so that decoding the next batch overlaps the database's work
on the current one: the *decoder* collects and validates; the *writer* owns the database
connection, commits, then acknowledges. Between them sits a hand-off of one batch. paho's
thread hands over the messages of each read of the socket together, into an
:class:`telemetry.inbox.Inbox` bounded in messages.

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

This module holds the two threads and what the decoder does; what the writer does to the
database is :class:`telemetry.writer.BatchWriter`, and the counters both keep are
:class:`telemetry.ingest_stats.IngestStats` (importable from here too).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TypeVar

import orjson
import paho.mqtt.client as paho
import psycopg

from core.contract import ALERT_POLICY_TOPIC, ALERTS_TOPIC, CHANNELS, LIVE_UNITS_TOPIC, TOPIC_ROOT
from core.mqtt import BrokerAddress, Inbound, MqttSession, detect_protocol
from core.ratelimit import TokenBuckets
from core.reports import EventReport
from core.settings import Settings
from telemetry.alerts import AlertRules, Geofence
from telemetry.decode import Decoded, PayloadLimits, Reason, Rejection, StatusChange, decode
from telemetry.escalation import EscalationRules
from telemetry.inbox import Inbox
from telemetry.ingest_stats import IngestStats
from telemetry.live_frame import encode_frames
from telemetry.rejection_sampler import RejectionSampler
from telemetry.storage_jobs import StorageHealth
from telemetry.store import Batch, RejectedMessage
from telemetry.writer import BatchWriter

__all__ = ["IngestStats", "IngestWorker", "subscription_topics"]

log = logging.getLogger(__name__)

_MAINTENANCE_EVERY_S = 3600.0
_SUMMARIES_EVERY_S = 5.0  # how often the decoder looks for rejection windows that have closed
# Offline is raised within its timeout plus this (and a batch's time): the 5 s the contract
# promises (docs/operations.md, "Offline per profile"), with room to spare.
_OFFLINE_SWEEP_EVERY_S = 2.0
_REGISTRY_REFRESH_S = 5.0


def subscription_topics(share_group: str) -> list[str]:
    """The filters ingest subscribes to: the devices' topics, in a shared group when one is
    set, and the alert policy's announcements, which every worker must get (never shared)."""
    filters = [f"{TOPIC_ROOT}/+/{channel.value}" for channel in CHANNELS]
    shared = [f"$share/{share_group}/{f}" for f in filters] if share_group else filters
    return [*shared, ALERT_POLICY_TOPIC]


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


class IngestWorker:
    """One ingest process's work. ``run()`` blocks until ``stop()``."""

    def __init__(self, *, settings: Settings, database_url: str, mqtt_url: str,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self._settings = settings
        self._database_url = database_url
        self._address = BrokerAddress.parse(mqtt_url)
        self._clock = clock
        rules = AlertRules(
            battery_warn_pct=settings.alert_battery_warn_pct,
            battery_critical_pct=settings.alert_battery_critical_pct,
            storage_warn_pct=settings.alert_storage_warn_pct,
            gps_lost_after_s=settings.alert_gps_lost_after_s,
            offline_after_s=settings.alert_offline_after_s,
            escalation=EscalationRules(first_after_s=dict(settings.alert_escalate_after_s),
                                       again_after_s=dict(settings.alert_escalate_again_after_s)),
            geofence=Geofence(margin_m=settings.alert_geofence_margin_m, dwell_s=settings.alert_geofence_dwell_s),
        )
        self._limits = PayloadLimits(
            max_payload_bytes=settings.max_payload_bytes,
            max_future_skew=timedelta(seconds=settings.max_future_skew_s),
            max_age=timedelta(days=settings.retention_days),
        )
        # Bounded: when full, paho's network thread waits in put(), so it stops reading
        # the socket and the broker holds the backlog (push back on the producer).
        self._inbox = Inbox(settings.ingest_queue_max)
        self._stopping = threading.Event()
        self.stats = IngestStats()
        self._writer = BatchWriter(settings=settings, database_url=database_url, rules=rules, stats=self.stats,
                                   stopping=self._stopping, clock=clock)
        self._known: set[str] = set()
        self._device_rate = TokenBuckets(rate_per_s=settings.ingest_device_rate_per_s,
                                         burst=settings.ingest_device_burst)
        # Rejections kept row by row per device, reason and minute; the rest counted and summed up.
        self.sampler = RejectionSampler(keep=settings.rejected_keep_per_device_per_min)
        self._sampled_at = time.monotonic()
        self._registry_loaded_at = 0.0
        # Set by the decoder when the alert policy was announced as changed; the writer reads
        # the policy again before it writes the batch that carried the announcement.
        self._policy_announced = threading.Event()
        # One decoded batch may wait while the writer commits the previous one.
        self._decoded: queue.Queue[tuple[list[Inbound], Batch]] = queue.Queue(maxsize=1)
        self._session: MqttSession | None = None
        self._registry_conn: psycopg.Connection | None = None  # the decoder's

    # paho's thread hands over here: the one place where messages cross into our thread.
    def _enqueue(self, inbound: Inbound) -> None:
        self.stats.delivered += len(inbound)
        self._inbox.put(inbound, self._stopping)

    def stop(self) -> None:
        self._stopping.set()

    @property
    def alert_policy_version(self) -> int:
        """The version of the alert policy this worker applies."""
        return self._writer.policy.version

    @property
    def storage_health(self) -> StorageHealth:
        """The last check of TimescaleDB's storage jobs (never checked on plain PostgreSQL)."""
        return self._writer.storage

    @property
    def protocol_name(self) -> str:
        return self._session.protocol_name if self._session is not None else "?"

    @property
    def queue_depth(self) -> int:
        return len(self._inbox)

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
        self._writer.open()
        self._load_registry()
        started_alerts = self._writer.maintain()
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
        self._publish_alerts(started_alerts)  # queued by paho until the session is up
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
            self._writer.close()
            if self._registry_conn is not None:
                self._registry_conn.close()

    def _hand_off(self, work: tuple[list[Inbound], Batch]) -> None:
        """Give a decoded batch to the writer; waits while it still has one (push back)."""
        _put_until_stopped(self._decoded, work, self._stopping)

    def _write_loop(self) -> None:
        """The writer thread: commit each decoded batch, then acknowledge it."""
        next_maintenance = time.monotonic() + _MAINTENANCE_EVERY_S
        next_sweep = time.monotonic() + _OFFLINE_SWEEP_EVERY_S
        # An announcement is applied before the batch that carried it; the periodic re-read
        # is the fallback for one missed (a session lost with the broker, a hand edit).
        refresh_every = self._settings.alert_policy_refresh_s
        next_policy = time.monotonic() + refresh_every
        while True:
            if time.monotonic() >= next_policy:
                next_policy = time.monotonic() + refresh_every
                self._writer.reload_policy()
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + _OFFLINE_SWEEP_EVERY_S
                self._publish_alerts(self._writer.sweep())
            if time.monotonic() >= next_maintenance:
                next_maintenance = time.monotonic() + _MAINTENANCE_EVERY_S
                try:
                    self._publish_alerts(self._writer.maintain())
                except psycopg.Error as error:  # retried in an hour; ingest goes on
                    log.warning("maintenance failed: %s", error)
            try:
                items, batch = self._decoded.get(timeout=0.2)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            if self._policy_announced.is_set():  # set by the decoder before it handed this batch off
                self._policy_announced.clear()
                next_policy = time.monotonic() + refresh_every
                self._writer.reload_policy()
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
        return self._inbox.take(self._settings.ingest_batch_max, first_within=0.2,
                                fill_within=self._settings.ingest_batch_interval_ms / 1000)

    def _decode(self, received: list[Inbound]) -> Batch:
        now = self._clock()
        rate_now = time.monotonic()  # one reading for the batch's rate checks
        batch = Batch()
        keep = self._settings.rejected_payload_keep_bytes
        limits, take = self._limits, self._device_rate.take
        telemetry, events = batch.telemetry, batch.events
        for inbound in received:
            at = datetime.fromtimestamp(inbound.received_at, timezone.utc)
            for topic, payload in zip(inbound.topics, inbound.payloads):
                if topic == ALERT_POLICY_TOPIC:  # no device's message: acknowledged with the batch
                    self._policy_announced.set()
                    continue
                result = decode(topic, payload, now=now, limits=limits)
                if type(result) is Decoded:  # the common case first, in as few steps as it takes
                    device_id = result.device_id
                    if device_id not in self._known:  # not a local: _admit may read the registry again
                        refused = self._admit(device_id, batch)
                        if refused is not None:
                            result = refused
                    if type(result) is Decoded:
                        if take(device_id, now=rate_now) == 0.0:
                            message = result.message
                            if isinstance(message, EventReport):
                                events.append((device_id, at, message))
                            else:
                                telemetry.append((device_id, at, message))
                            continue
                        result = Rejection(Reason.RATE_LIMITED, "over the device's message rate", device_id)
                elif isinstance(result, StatusChange):
                    refused = self._admit(result.device_id, batch)
                    if refused is None:
                        batch.statuses.append((result.device_id, at, result))
                        continue
                    result = refused
                assert isinstance(result, Rejection)
                batch.counted_rejections[result.reason.value] += 1
                batch.rejected += self.sampler.admit(RejectedMessage(result, topic, payload[:keep], at))
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
        alerts = self._writer.write(batch)
        assert self._session is not None
        self._session.ack(items)
        self._publish_alerts(alerts)
        frames = encode_frames(batch)  # after commit: the live picture is what was stored
        for frame in frames:
            self._session.publish(LIVE_UNITS_TOPIC, frame)
        self.stats.live_frames += len(frames)
        s = self.stats
        s.received += sum(len(i) for i in items)
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
        if summaries:
            self._writer.write_summaries(summaries)

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

