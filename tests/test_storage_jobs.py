"""The decision over TimescaleDB's storage jobs (telemetry/storage_jobs.py): which are failing,
overdue or paused, and which Watchfloor runs itself; and their metrics. Pure, but for the
last test (an ingest worker on TimescaleDB); the jobs' effects are tested in tests/test_schema.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from telemetry.metrics import ingest_registry, storage_families
from telemetry.storage_jobs import GRACE, JobState, JobStatus, StorageHealth, has_policies, judge
from tests.helpers.db import Database, _database
from tests.helpers.telemetry import make_settings, running_worker
from watchfloor.mosquitto import MosquittoProcess

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def _job(**changes: object) -> JobState:
    base = JobState(job_id=1000, proc_name="policy_compression", target="telemetry", scheduled=True,
                    schedule_interval=12 * HOUR, created_at=NOW - timedelta(days=10),
                    last_success=NOW - 2 * HOUR, last_run_status="Success", total_failures=0, last_error=None)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_job_whose_last_run_succeeded_recently_is_left_to_the_scheduler() -> None:
    """A recent success: ok, not run by Watchfloor."""
    [verdict] = judge([_job()], now=NOW, grace=GRACE)
    assert verdict.status is JobStatus.OK and not verdict.run


def test_a_job_the_scheduler_failed_is_run_and_says_why() -> None:
    """The scheduler's last run failed (the "cannot drop portal" case) and it never
    succeeded: failing, run it, and the error is in the reason."""
    job = _job(last_run_status="Failed", last_success=None, total_failures=7, created_at=NOW - HOUR,
               last_error='cannot drop portal "" while it is being set up')
    [verdict] = judge([job], now=NOW, grace=GRACE)
    assert verdict.status is JobStatus.FAILING and verdict.run
    assert "cannot drop portal" in verdict.reason


def test_a_job_the_scheduler_fails_is_run_once_per_its_interval() -> None:
    """Where the scheduler fails, Watchfloor does what it would have done: run the job again
    once its interval has passed since the last success (ours included), not at every check."""
    fresh = _job(last_run_status="Failed", last_success=NOW - 30 * timedelta(minutes=1))
    due = _job(last_run_status="Failed", last_success=NOW - 12 * HOUR)
    verdicts = judge([fresh, due], now=NOW, grace=GRACE)
    assert [v.status for v in verdicts] == [JobStatus.FAILING, JobStatus.FAILING]
    assert [v.run for v in verdicts] == [False, True]


def test_a_job_with_no_success_for_two_intervals_is_overdue_even_without_a_failure() -> None:
    """A stopped scheduler fails nothing: a job silent for more than two intervals plus the
    grace is overdue and run; one just inside that is not."""
    late = _job(last_success=NOW - 24 * HOUR - GRACE - timedelta(seconds=1))
    inside = _job(last_success=NOW - 24 * HOUR)
    never = _job(last_success=None, last_run_status=None, created_at=NOW - timedelta(days=2))
    young = _job(last_success=None, last_run_status=None, created_at=NOW - HOUR)
    verdicts = judge([late, inside, never, young], now=NOW, grace=GRACE)
    assert [v.status for v in verdicts] == [JobStatus.OVERDUE, JobStatus.OK, JobStatus.OVERDUE, JobStatus.OK]
    assert [v.run for v in verdicts] == [True, False, True, False]
    assert "never" in verdicts[2].reason


def test_a_job_this_role_may_not_run_is_not_attempted_and_says_who_may() -> None:
    """The runtime role is not the jobs' owner: it judges them but leaves run_job to
    `watchfloor db maintain` as the owner, and the reason says so."""
    [verdict] = judge([_job(last_run_status="Failed", last_success=None, created_at=NOW - HOUR, may_run=False)],
                      now=NOW, grace=GRACE)
    assert verdict.status is JobStatus.FAILING and not verdict.run
    assert "owner" in verdict.reason


def test_a_paused_job_is_reported_and_never_run() -> None:
    """A job switched off on purpose is someone's decision: reported, not run, not failing."""
    [verdict] = judge([_job(scheduled=False, last_run_status="Failed", last_success=None,
                            created_at=NOW - timedelta(days=30))], now=NOW, grace=GRACE)
    assert verdict.status is JobStatus.PAUSED and not verdict.run
    assert StorageHealth(checked_at=NOW, verdicts=(verdict,)).failing == ()


def test_storage_is_failing_where_a_job_is_overdue_and_this_check_did_not_run_it() -> None:
    """Overdue and run successfully now: looked after. Overdue and the run failed (or was not
    allowed): failing. A job the scheduler fails but that succeeded recently: not failing."""
    old = NOW - timedelta(days=3)
    rescued, lost, barred, covered = judge(
        [_job(job_id=1, last_success=old), _job(job_id=2, last_success=old),
         _job(job_id=3, last_success=old, may_run=False),
         _job(job_id=4, last_run_status="Failed", last_success=NOW - HOUR)], now=NOW, grace=GRACE)
    health = StorageHealth(checked_at=NOW, verdicts=(
        replace(rescued, ran_ok=True, last_success=NOW),
        replace(lost, ran_ok=False, run_error="permission denied"),
        barred, covered,
    ))
    assert [v.job.job_id for v in health.failing] == [2, 3]


def test_only_databases_with_timescale_policies_have_jobs_to_check() -> None:
    """Plain PostgreSQL (and an Apache-only TimescaleDB) keeps its own retention: nothing to check."""
    assert not has_policies(frozenset({"native_partitioning"}))
    assert not has_policies(frozenset({"timescaledb"}))
    assert has_policies(frozenset({"timescaledb", "compression", "retention_policy", "continuous_aggregate"}))


class _Health(Collector):
    def __init__(self, health: StorageHealth) -> None:
        self._health = health

    def collect(self):  # type: ignore[no-untyped-def]
        return storage_families(self._health)


def _scrape(health: StorageHealth) -> dict[tuple[str, str], float]:
    """Each sample as exposed, by name and its job id ('' without one)."""
    registry = CollectorRegistry()
    registry.register(_Health(health))
    text = generate_latest(registry).decode()
    return {(sample.name, sample.labels.get("job_id", "")): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_give_each_jobs_last_success_and_whether_storage_is_failing() -> None:
    """Per job: the last success as a Unix time, the scheduler's failures, scheduler_failing
    where we cover for it, and failing 1 only where storage is not looked after."""
    old = NOW - timedelta(days=3)
    rescued, lost = judge([_job(job_id=1000, total_failures=3, last_run_status="Failed", last_success=old),
                           _job(job_id=1001, proc_name="policy_retention", last_success=None,
                                last_run_status="Failed")], now=NOW, grace=GRACE)
    samples = _scrape(StorageHealth(checked_at=NOW, verdicts=(replace(rescued, ran_ok=True, last_success=NOW),
                                                               replace(lost, ran_ok=False, last_success=None))))
    assert samples[("watchfloor_storage_job_last_success_timestamp_seconds", "1000")] == NOW.timestamp()
    assert samples[("watchfloor_storage_job_last_success_timestamp_seconds", "1001")] == 0
    assert samples[("watchfloor_storage_job_failing", "1000")] == 0
    assert samples[("watchfloor_storage_job_failing", "1001")] == 1
    assert samples[("watchfloor_storage_job_scheduler_failing", "1000")] == 1
    assert samples[("watchfloor_storage_job_scheduler_failures_total", "1000")] == 3
    assert samples[("watchfloor_storage_jobs_last_check_timestamp_seconds", "")] == NOW.timestamp()


def test_metrics_say_never_checked_on_plain_postgresql() -> None:
    """No jobs: no per-job series, and the last check is 0."""
    samples = _scrape(StorageHealth(checked_at=None))
    assert samples[("watchfloor_storage_jobs_last_check_timestamp_seconds", "")] == 0
    assert not any(name == "watchfloor_storage_job_failing" for name, _ in samples)


@pytest.fixture
def timescale_db(request: pytest.FixtureRequest) -> Iterator[Database]:
    yield from _database(request, "timescale")


def test_ingest_checks_the_storage_jobs_at_start_and_exports_them(timescale_db: Database,
                                                                  mosquitto: MosquittoProcess) -> None:
    """On TimescaleDB an ingest worker checks every policy job when it starts; each is either
    left to a working scheduler or run by the worker (where the scheduler fails, as on
    PostgreSQL 15.20 with TimescaleDB 2.28.3), none is left failing, and /metrics says so."""
    settings = make_settings()
    with running_worker(database_url=timescale_db.url, mqtt_url=mosquitto.url, settings=settings) as worker:
        health = worker.storage_health
        registry = ingest_registry(worker, client_id=settings.ingest_client_id)
        text = generate_latest(registry).decode()
    assert health.checked_at is not None and health.error is None
    assert len(health.verdicts) == 5
    assert all(not v.run or v.ran_ok is True for v in health.verdicts), health.verdicts
    assert health.failing == ()
    samples = {(s.name, s.labels.get("job_id", "")): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    for verdict in health.verdicts:
        key = str(verdict.job.job_id)
        assert samples[("watchfloor_storage_job_failing", key)] == 0
        if verdict.ran_ok:
            assert samples[("watchfloor_storage_job_last_success_timestamp_seconds", key)] > 0
