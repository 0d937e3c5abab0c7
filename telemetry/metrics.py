"""Prometheus metrics of an ingest worker, read from its counters when scraped.

Nothing is counted twice on the hot path: the worker already keeps plain counters and
latency histograms (:class:`~telemetry.ingest_stats.IngestStats`), and this collector turns them
into metric families at scrape time, so a scrape costs the worker nothing and 25,000
messages a second cost the metrics nothing. Labels are bounded: a rejection *reason*, a
*channel*; never a device id or an officer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from telemetry.decode import Reason
from telemetry.ingest import IngestWorker
from telemetry.latency import LatencyHistogram
from telemetry.storage_jobs import JobStatus, StorageHealth

__all__ = ["LAG_BUCKETS_S", "IngestCollector", "MetricsServer", "histogram_family", "ingest_registry",
           "storage_families"]

#: Bucket edges in seconds: fine where the targets are (p99 < 0.5 s), coarse for outages.
LAG_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]


def histogram_family(name: str, documentation: str, histogram: LatencyHistogram) -> HistogramMetricFamily:
    """A Prometheus histogram from one of our millisecond histograms."""
    below, total = histogram.cumulative(LAG_BUCKETS_S)
    buckets = [(repr(edge), count) for edge, count in zip(LAG_BUCKETS_S, below)] + [("+Inf", total)]
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=histogram.sum_s)


class IngestCollector(Collector):
    """The metrics of one :class:`IngestWorker` (``watchfloor_ingest_*``)."""

    def __init__(self, worker: IngestWorker, *, client_id: str) -> None:
        self._worker = worker
        self._client_id = client_id

    def collect(self) -> Iterator[Metric]:
        w, s = self._worker, self._worker.stats
        info = GaugeMetricFamily("watchfloor_ingest_info", "This worker: its MQTT client id and protocol",
                                 labels=["client_id", "protocol"])
        info.add_metric([self._client_id, w.protocol_name], 1)
        yield info
        yield CounterMetricFamily("watchfloor_ingest_messages_received", "Messages delivered by the broker "
                                  "(redeliveries included)", value=s.delivered)
        yield CounterMetricFamily("watchfloor_ingest_messages_acknowledged", "Messages committed (stored or "
                                  "rejected) and then acknowledged to the broker", value=s.received)
        stored = CounterMetricFamily("watchfloor_ingest_messages_stored", "Rows newly stored, by channel",
                                     labels=["channel"])
        stored.add_metric(["telemetry"], s.stored_telemetry)
        stored.add_metric(["events"], s.stored_events)
        stored.add_metric(["status"], s.statuses)
        yield stored
        yield CounterMetricFamily("watchfloor_ingest_messages_duplicate", "Redelivered messages already stored "
                                  "(the insert did nothing)", value=s.duplicates)
        rejected = CounterMetricFamily("watchfloor_ingest_messages_rejected", "Messages rejected, by reason",
                                       labels=["reason"])
        counts = dict(s.rejected)  # one copy: the writer may add a reason meanwhile
        for reason in Reason:
            rejected.add_metric([reason.value], counts.get(reason.value, 0))
        yield rejected
        custody = CounterMetricFamily("watchfloor_ingest_dock_events", "Dock events by what they did to custody "
                                      "windows (opened, closed, duplicate, stale, none, no_officer, unknown_device)",
                                      labels=["outcome"])
        for outcome, n in sorted(dict(s.custody).items()):
            custody.add_metric([outcome], n)
        yield custody
        not_kept = CounterMetricFamily("watchfloor_ingest_rejections_not_kept", "Rejected messages counted but not "
                                       "kept row by row (past the first per device, reason and minute)",
                                       labels=["reason"])
        counts = dict(self._worker.sampler.not_kept)
        for reason in Reason:
            not_kept.add_metric([reason.value], counts.get(reason.value, 0))
        yield not_kept
        yield CounterMetricFamily("watchfloor_ingest_batches", "Transactions committed", value=s.batches)
        yield CounterMetricFamily("watchfloor_ingest_database_errors", "Failed attempts to reach or write to "
                                  "the database (each retried; nothing acknowledged meanwhile)",
                                  value=s.database_errors)
        yield CounterMetricFamily("watchfloor_ingest_alert_changes", "Alert changes published",
                                  value=s.alert_changes)
        yield CounterMetricFamily("watchfloor_ingest_live_frames", "Frames of stored unit state published for "
                                  "the API processes' live feed", value=s.live_frames)
        yield histogram_family("watchfloor_ingest_batch_duration_seconds", "From a batch's first write to its "
                               "acknowledgement (database outages included)", s.batch_time)
        yield histogram_family("watchfloor_ingest_publish_to_commit_seconds", "From a message's own timestamp "
                               "to its commit (ingest lag; assumes device clocks are right)", s.commit_lag)
        yield GaugeMetricFamily("watchfloor_ingest_receive_to_commit_seconds", "Last batch: from its oldest "
                                "message's arrival at this worker to the commit", value=s.last_commit_lag_s)
        yield GaugeMetricFamily("watchfloor_ingest_last_commit_timestamp_seconds", "Unix time of the last "
                                "commit (0: none yet); alert when it stops moving under load",
                                value=s.last_commit_at)
        yield GaugeMetricFamily("watchfloor_ingest_queue_depth", "Messages waiting between paho's thread "
                                "and the decoder", value=w.queue_depth)
        yield GaugeMetricFamily("watchfloor_ingest_queue_capacity", "The queue's bound "
                                "(WATCHFLOOR_INGEST_QUEUE_MAX); at it, the broker holds the backlog",
                                value=w.queue_capacity)
        yield GaugeMetricFamily("watchfloor_ingest_broker_connected", "1 while connected to the broker (a "
                                "worker blocked on a full queue notices a lost connection late)",
                                value=1 if w.broker_connected else 0)
        yield CounterMetricFamily("watchfloor_ingest_broker_connections", "Connections to the broker: the first, "
                                  "then one per reconnection", value=w.broker_connections)
        yield from storage_families(w.storage_health)


def storage_families(health: StorageHealth) -> Iterator[Metric]:
    """TimescaleDB's storage jobs as the last check saw them (none on plain PostgreSQL): one
    series per job, labelled by its id, procedure and target (a handful, never a device)."""
    labels = ["job_id", "proc", "target"]
    success = GaugeMetricFamily("watchfloor_storage_job_last_success_timestamp_seconds", "Unix time of the "
                                "job's last success, the scheduler's or Watchfloor's own run_job (0: never)",
                                labels=labels)
    failing = GaugeMetricFamily("watchfloor_storage_job_failing", "1 while the job has had no success, the "
                                "scheduler's or Watchfloor's, for two intervals and an hour: storage not looked after",
                                labels=labels)
    scheduler = GaugeMetricFamily("watchfloor_storage_job_scheduler_failing", "1 while TimescaleDB's scheduler "
                                  "fails the job or runs it late (Watchfloor runs it itself where it may)",
                                  labels=labels)
    failures = CounterMetricFamily("watchfloor_storage_job_scheduler_failures", "Failed runs of the job in "
                                   "TimescaleDB's scheduler (its job_stats.total_failures)", labels=labels)
    still_failing = {v.job.job_id for v in health.failing}
    for verdict in health.verdicts:
        job = verdict.job
        key = [str(job.job_id), job.proc_name, job.target]
        success.add_metric(key, verdict.last_success.timestamp() if verdict.last_success else 0)
        failing.add_metric(key, 1 if job.job_id in still_failing else 0)
        scheduler.add_metric(key, 1 if verdict.status in (JobStatus.FAILING, JobStatus.OVERDUE) else 0)
        failures.add_metric(key, job.total_failures)
    yield from (success, failing, scheduler, failures)
    yield GaugeMetricFamily("watchfloor_storage_jobs_last_check_timestamp_seconds", "Unix time of the last "
                            "check of the storage jobs (0: never, as on plain PostgreSQL)",
                            value=health.checked_at.timestamp() if health.checked_at else 0)
    yield GaugeMetricFamily("watchfloor_storage_jobs_check_error", "1 if the last check could not read the "
                            "jobs (see the log)", value=1 if health.error else 0)


def ingest_registry(worker: IngestWorker, *, client_id: str) -> CollectorRegistry:
    """A registry of its own (no global one: tests run several workers in one process)
    with the worker's metrics and the process's (RSS, CPU, open files)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(IngestCollector(worker, client_id=client_id))
    ProcessCollector(registry=registry)
    return registry


class MetricsServer:
    """``/metrics`` over HTTP on a daemon thread; ``close()`` is idempotent."""

    def __init__(self, registry: CollectorRegistry, *, host: str, port: int) -> None:
        server, thread = start_http_server(port, addr=host, registry=registry)
        self._server: WSGIServer | None = server
        self._thread: threading.Thread = thread
        self.port = int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self._thread.join(5)
