"""The database side of the ingest writer thread (:mod:`telemetry.ingest`): commit a
decoded batch and the alerts it changes, retrying through outages; store what can be stored
of a batch the database refuses; keep daily partitions ahead; run retention and the offline
sweep. Only the writer thread uses a :class:`BatchWriter`, and so its connection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import msgspec
import psycopg

from core.contract import EventType
from core.reports import TelemetryReport
from core.settings import Settings
from telemetry.alert_policy import AlertPolicy
from telemetry.alert_policy_store import load_policy
from telemetry.alerts import AlertRules, evaluate_batch, sweep_escalations, sweep_offline
from telemetry.custody import apply_dock_events, registry_officers
from telemetry.decode import Reason, Rejection
from telemetry.ingest_stats import IngestStats
from telemetry.retention import delete_expired, record_retention
from telemetry.schema import MAINTENANCE_LOCK_KEY, ensure_partitions, features, run_maintenance
from telemetry.storage_jobs import GRACE, StorageHealth, check_and_run, has_policies
from telemetry.store import Batch, RejectedMessage, prepare_connection, write_batch
from telemetry.system_alerts import apply_storage_job_alerts

__all__ = ["BatchWriter", "connect"]

log = logging.getLogger(__name__)


def connect(database_url: str) -> psycopg.Connection:
    # Autocommit, so that every unit of work is an explicit ``transaction()`` block and
    # no read leaves a transaction open (and its locks held) between batches.
    conn = psycopg.connect(database_url, connect_timeout=5, autocommit=True)
    prepare_connection(conn)
    return conn


class BatchWriter:
    """The writer thread's connection and what it writes. :meth:`open` before the rest."""

    def __init__(self, *, settings: Settings, database_url: str, rules: AlertRules, stats: IngestStats,
                 stopping: threading.Event, clock: Callable[[], datetime]) -> None:
        self._settings = settings
        self._database_url = database_url
        self._rules = rules
        self.stats = stats
        self._stopping = stopping
        self._clock = clock
        self._conn: psycopg.Connection | None = None
        self._ready_days: set[date] = set()
        self.feats: frozenset[str] = frozenset()
        self._policy: AlertPolicy | None = None
        #: The last check of TimescaleDB's storage jobs (read by the metrics on scrape).
        self.storage = StorageHealth(checked_at=None)

    def open(self) -> None:
        """Connect, and read the storage features that migration 1 chose and the alert policy."""
        self._conn = connect(self._database_url)
        self.feats = features(self._conn)
        self._policy = load_policy(self._conn)

    @property
    def policy(self) -> AlertPolicy:
        """The alert policy this writer applies (read by :meth:`open`, then :meth:`reload_policy`)."""
        assert self._policy is not None, "open() first"
        return self._policy

    def reload_policy(self) -> bool:
        """Read the alert policy again; on a database error keep the one in force (the next
        reload tries again). True if it was read."""
        try:
            policy = load_policy(self._connection())
        except (psycopg.Error, ValueError) as error:
            log.warning("alert policy not reloaded, the previous one stays in force: %s", error)
            return False
        if self._policy is not None and policy.version != self._policy.version:
            log.info("alert policy %d in force (was %d)", policy.version, self._policy.version)
        self._policy = policy
        return True

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def sweep(self) -> list[dict[str, object]]:
        """Raise offline alerts and escalate unacknowledged ones (none when the database is
        away: the next sweep does it)."""
        if not self._settings.ingest_raise_alerts:
            return []
        try:
            conn = self._connection()
            with conn.transaction():
                return sweep_offline(conn, self._rules, self.policy) + sweep_escalations(conn, self._rules)
        except psycopg.Error as error:
            log.warning("alert sweep failed: %s", error)
            return []

    def write_summaries(self, summaries: list[RejectedMessage]) -> None:
        """Store the last rejection summaries, once, on the way out."""
        try:
            conn = self._connection()
            with conn.transaction():
                write_batch(conn, Batch(rejected=summaries))
        except psycopg.Error as error:  # the counts stay in the metrics
            log.warning("%d rejection summaries not written: %s", len(summaries), error)

    def write(self, batch: Batch) -> list[dict[str, object]]:
        """Commit ``batch`` and its alerts, retrying through database outages until it is
        stored. Returns the alerts it changed; raises ``SystemExit`` if the worker stops
        during an outage (nothing was acknowledged, so the broker keeps the batch)."""
        delay = 0.1
        while True:
            try:
                conn = self._connection()
                self._ensure_partitions(conn, batch)
                try:
                    with conn.transaction():
                        self._write_counted(conn, batch)
                        return self._evaluate(conn, batch)
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

    def _evaluate(self, conn: psycopg.Connection, batch: Batch) -> list[dict[str, object]]:
        if not self._settings.ingest_raise_alerts:
            return []
        return evaluate_batch(conn, batch, self._rules, self.policy)

    def _write_counted(self, conn: psycopg.Connection, batch: Batch) -> None:
        stored_t, stored_e = write_batch(conn, batch)
        # After the events are stored: a late undocked finds its docked among them.
        self.stats.custody.update(apply_dock_events(conn, [(d, e) for d, _, e in batch.events]))
        undocked = sorted({d for d, _, e in batch.events if e.type is EventType.UNDOCKED})
        batch.carried = [(o.device_id, o.officer, o.callsign)
                         for o in registry_officers(conn, undocked).values()] if undocked else []
        self.stats.stored_telemetry += stored_t
        self.stats.stored_events += stored_e
        self.stats.duplicates += len(batch.telemetry) + len(batch.events) - stored_t - stored_e

    def _write_isolated(self, conn: psycopg.Connection, batch: Batch) -> list[dict[str, object]]:
        """Store what can be stored; a message the database refuses becomes a rejection."""
        singles: list[tuple[Batch, str, bytes]] = []
        stored_telemetry: list[tuple[str, datetime, TelemetryReport]] = []
        carried: list[tuple[str, str | None, str | None]] = []
        for d, r, t in batch.telemetry:
            singles.append((Batch(telemetry=[(d, r, t)], new_devices={d} & batch.new_devices),
                            d, msgspec.json.encode(t)))
        for d, r, e in batch.events:
            singles.append((Batch(events=[(d, r, e)], new_devices={d} & batch.new_devices),
                            d, msgspec.json.encode(e)))
        refused: list[RejectedMessage] = list(batch.rejected)
        with conn.transaction():
            for single, device_id, payload in singles:
                try:
                    with conn.transaction():  # a savepoint per message
                        self._write_counted(conn, single)
                    stored_telemetry += single.telemetry
                    carried += single.carried
                except psycopg.Error as error:
                    rejection = Rejection(Reason.REFUSED_BY_DATABASE, f"database refused: {error}"[:500], device_id)
                    refused.append(RejectedMessage(rejection, device_id, payload, datetime.now(timezone.utc)))
            write_batch(conn, Batch(statuses=batch.statuses, rejected=refused,
                                    new_devices=batch.new_devices))
            alerts = self._evaluate(conn, batch)
        batch.counted_rejections[Reason.REFUSED_BY_DATABASE.value] += len(refused) - len(batch.rejected)
        batch.rejected = refused
        batch.telemetry, batch.carried = stored_telemetry, carried  # the live frame shows only what was stored
        return alerts

    def _ensure_partitions(self, conn: psycopg.Connection, batch: Batch) -> None:
        if "native_partitioning" not in self.feats:
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

    def _connection(self) -> psycopg.Connection:
        """The writer thread's connection, opened again after an outage closed it."""
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._database_url)
        return self._conn

    def maintain(self) -> list[dict[str, object]]:
        """Partitions ahead, retention, and TimescaleDB's storage jobs checked (and run where
        the scheduler fails, and alerted on where they fail). Returns the system alerts it
        changed. Raises ``psycopg.Error``; the caller retries later."""
        dropped = run_maintenance(self._connection(), feats=self.feats,
                                  keep=timedelta(days=self._settings.retention_days), now=self._clock())
        if dropped:
            log.info("retention: dropped %d partitions", dropped)
            self._ready_days.clear()
        deleted = delete_expired(self._connection(), retention=record_retention(self._settings),
                                 now=self._clock())
        if any(deleted.values()):
            log.info("retention: deleted %s", ", ".join(f"{n} from {t}" for t, n in deleted.items() if n))
        if has_policies(self.feats):
            return self._check_storage_jobs()
        return []

    def _check_storage_jobs(self) -> list[dict[str, object]]:
        try:
            health = check_and_run(self._connection(), lock_key=MAINTENANCE_LOCK_KEY, clock=self._clock,
                                   grace=GRACE)
        except psycopg.Error as error:  # reported on /metrics; retention and ingest go on
            log.error("storage jobs: cannot check them: %s", error)
            self.storage = replace(self.storage, checked_at=self._clock(), error=str(error).strip()[:300])
            return []
        if health is None:
            return []  # another process holds the maintenance lock and is checking them
        self.storage = health
        for verdict in health.failing:
            log.error("storage job %d (%s on %s) is not looked after: %s", verdict.job.job_id,
                      verdict.job.proc_name, verdict.job.target, verdict.reason)
        for verdict in health.verdicts:
            if verdict.ran_ok is not None:
                log.log(logging.INFO if verdict.ran_ok else logging.ERROR,
                        "storage job %d (%s on %s) %s: ran it ourselves, %s", verdict.job.job_id,
                        verdict.job.proc_name, verdict.job.target, verdict.reason,
                        "succeeded" if verdict.ran_ok else f"failed: {verdict.run_error}")
        if not self._settings.ingest_raise_alerts:
            return []
        conn = self._connection()
        with conn.transaction():
            return apply_storage_job_alerts(conn, health)
