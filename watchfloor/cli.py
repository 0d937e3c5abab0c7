"""``watchfloor``: the command line. Each subcommand builds the settings and runs one part."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg

from core.logs import configure_logging
from core.settings import Settings
from simulator.camera import CameraPolicy
from simulator.fleet import FleetProfile
from simulator.run import Simulator
from telemetry.ingest import IngestWorker
from telemetry.retention import delete_expired, record_retention
from telemetry.schema import MAINTENANCE_LOCK_KEY, features, migrate, run_maintenance
from telemetry.storage_jobs import GRACE, check_and_run, has_policies
from telemetry.system_alerts import apply_storage_job_alerts
from watchfloor.admin_commands import add_parsers as add_admin_parsers
from watchfloor.admin_commands import audit_key, cli_actor, database_url
from watchfloor.camera_video import provision_to_file, uplink_from_files
from watchfloor.demo import cmd_demo
from watchfloor.parsers import HelpFormatter, command, group
from watchfloor.running import (
    migrate_first,
    register_fleet,
    report_ingest,
    status_logger,
    status_printer,
    stop_on_signals,
)
from watchfloor.user_commands import add_parsers as add_user_parsers

__all__ = ["main"]

log = logging.getLogger("watchfloor")


def _mqtt_url(settings: Settings) -> str:
    if not settings.mqtt_url:
        sys.exit("WATCHFLOOR_MQTT_URL is not set (`watchfloor demo` starts an embedded broker)")
    return settings.mqtt_url


def cmd_db_migrate(settings: Settings, args: argparse.Namespace) -> None:
    from telemetry.roles import grant_runtime

    url = settings.migrate_database_url or database_url(settings)
    role = args.runtime_role or settings.database_runtime_role
    with psycopg.connect(url) as conn:
        applied = migrate(conn, retention=timedelta(days=settings.retention_days),
                          compress_after=timedelta(days=settings.compress_after_days),
                          timescaledb=settings.timescaledb)
        if role:
            try:
                grant_runtime(conn, role=role)
            except ValueError as error:
                sys.exit(str(error))
            conn.commit()
        feats = features(conn)
    print("applied:", ", ".join(applied) if applied else "nothing (up to date)")
    print("storage features:", ", ".join(sorted(feats)))
    if role:
        print(f"runtime role {role}: may read and write the operational tables, only append to the audit log")


def cmd_db_maintain(settings: Settings, args: argparse.Namespace) -> None:
    # As the owner when given: dropping TimescaleDB chunks by hand needs ownership.
    with psycopg.connect(settings.migrate_database_url or database_url(settings)) as conn:
        dropped = run_maintenance(conn, feats=features(conn), keep=timedelta(days=settings.retention_days),
                                  now=datetime.now(timezone.utc))
        deleted = delete_expired(conn, retention=record_retention(settings), now=datetime.now(timezone.utc))
        feats = features(conn)
        health = (check_and_run(conn, lock_key=MAINTENANCE_LOCK_KEY, clock=lambda: datetime.now(timezone.utc),
                                grace=GRACE) if has_policies(feats) else None)
        alerted: list[dict[str, object]] = []
        if health is not None:
            # Not on the live feed (no broker here): the control room reads it over REST and
            # at its next snapshot.
            with conn.transaction():
                alerted = apply_storage_job_alerts(conn, health)
    print(f"partitions dropped: {dropped}")
    print("rows deleted:", ", ".join(f"{table} {count}" for table, count in deleted.items()))
    if not has_policies(feats):
        return
    if health is None:
        print("storage jobs: not checked (another process holds the maintenance lock)")
        return
    for alert in alerted:
        print(f"system alert {alert['id']} {alert['kind']} {alert['subject']}: {alert['status']}")
    for verdict in health.verdicts:
        job = verdict.job
        ran = "" if verdict.ran_ok is None else (
            "; ran it: ok" if verdict.ran_ok else f"; ran it: FAILED: {verdict.run_error}")
        print(f"storage job {job.job_id} {job.proc_name} on {job.target}: {verdict.status}"
              f" ({verdict.reason}){ran}")
    failed = [v for v in health.verdicts if v in health.failing or v.ran_ok is False]
    if failed:
        sys.exit(f"storage jobs failing: {', '.join(str(v.job.job_id) for v in failed)}")


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> None:
    url = database_url(settings)
    migrate_first(settings, url)
    worker = IngestWorker(settings=settings, database_url=url, mqtt_url=_mqtt_url(settings))
    if settings.metrics_port:
        from telemetry.metrics import MetricsServer, ingest_registry

        registry = ingest_registry(worker, client_id=settings.ingest_client_id)
        MetricsServer(registry, host=settings.metrics_host, port=settings.metrics_port)  # a daemon thread
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    stop_on_signals(worker)
    # With JSON logs, stdout must carry JSON objects only: the status line becomes a log record.
    emit = status_logger if settings.log_format == "json" else status_printer
    threading.Thread(target=report_ingest, args=(worker, None), kwargs={"emit": emit}, daemon=True).start()
    worker.run()


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> None:
    sim = Simulator(mqtt_url=_mqtt_url(settings), devices=args.devices, interval_s=args.interval,
                    seed=args.seed, connections=args.connections, first=args.first,
                    profile=FleetProfile(watch_me_per_h=args.watch_me_per_h),
                    camera_policy=CameraPolicy(decline_share=args.decline_share))
    if args.register:
        register_fleet(database_url(settings), sim)
    secrets_file = args.secrets_file or settings.simulator_secrets_file
    if args.provision:
        if secrets_file is None:
            sys.exit("--provision writes the devices' secrets: give --secrets-file")
        made = provision_to_file(database_url(settings), sim.units, secrets_file, actor=cli_actor(),
                                 audit_key=audit_key(settings))
        print(f"provisioned {made} devices; their secrets are in {secrets_file}", flush=True)
    video = uplink_from_files(api_url=args.api_url or settings.simulator_api_url, secrets_file=secrets_file)
    if video is not None:
        sim.attach_video(video.open())
    stop_on_signals(sim)
    mode = "one connection each" if sim.dedicated else f"{sim.connections} shared connections"
    print(f"simulating {len(sim.units)} devices every {args.interval}s (seed {args.seed}, {mode})", flush=True)
    threading.Thread(target=_report_simulator, args=(sim, args.report_every), daemon=True).start()
    try:
        sim.run(duration_s=args.duration)
    finally:
        if video is not None:
            video.close()


def _report_simulator(sim: Simulator, every_s: float) -> None:
    last, last_at = 0, time.monotonic()
    while True:
        time.sleep(every_s)
        now, published = time.monotonic(), sim.stats.published
        print(f"simulator: published {published} ({(published - last) / (now - last_at):.0f}/s), "
              f"behind schedule {sim.stats.late_s * 1000:.0f} ms, dropped (backlog) {sim.dropped}", flush=True)
        last, last_at = published, now


def cmd_api(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from api.app import WS_DEFLATE, WS_IMPL, create_app
    from api.hardening import WS_MAX_BYTES

    try:
        secret = settings.signing_secret()
    except ValueError as error:
        sys.exit(str(error))
    url = database_url(settings)
    key = audit_key(settings, required=True)
    migrate_first(settings, url)
    try:
        app = create_app(settings=settings, database_url=url, mqtt_url=_mqtt_url(settings), signing_secret=secret,
                         audit_key=key)
    except ValueError as error:
        sys.exit(str(error))
    uvicorn.run(app, host=args.host or settings.api_host, port=args.port or settings.api_port,
                log_level=args.log_level.lower(), ws=WS_IMPL,
                ws_per_message_deflate=WS_DEFLATE, ws_max_size=WS_MAX_BYTES,
                # Forwarded headers are read by api/client_address.py, from
                # WATCHFLOOR_TRUSTED_PROXIES only; uvicorn's own reading would trust its defaults.
                proxy_headers=False,
                # Our logging (text or JSON) and our access lines (with request ids) instead of uvicorn's.
                log_config=None, access_log=False)


_DB_ENV = ("WATCHFLOOR_DATABASE_URL", "WATCHFLOOR_TIMESCALEDB", "WATCHFLOOR_RETENTION_DAYS")
_MQTT_ENV = ("WATCHFLOOR_MQTT_URL", "WATCHFLOOR_MQTT_PROTOCOL")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watchfloor", description="Watchfloor: body-worn camera fleet telemetry, alerts and the control-room API.",
        formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--log-level", default="INFO", choices=_LOG_LEVELS, type=str.upper,
                        help="how much to log")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def fleet_options(p: argparse.ArgumentParser, devices: int) -> None:
        p.add_argument("--devices", type=int, default=devices, help="number of simulated cameras")
        p.add_argument("--interval", type=float, default=1.0, help="seconds between reports of one camera")
        p.add_argument("--seed", type=int, default=1, help="seed for a repeatable fleet")
        p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: run)")

    demo = command(sub, "demo", help="embedded database and broker, ingest, the API and a simulated fleet",
                   env=("WATCHFLOOR_DATA_DIR", "WATCHFLOOR_DATABASE_URL (optional: an external database)",
                        "WATCHFLOOR_MQTT_URL (optional: an external broker)", "WATCHFLOOR_API_HOST"),
                   run=cmd_demo)
    fleet_options(demo, 300)
    demo.add_argument("--report-every", type=float, default=10.0, help="seconds between status lines")
    demo.add_argument("--port", type=int, default=8080, help="the API's port")
    demo.add_argument("--watch-me-per-h", type=float, default=0.05,
                      help="how often each officer asks to be watched live (per hour)")
    demo.add_argument("--access-log", action="store_true",
                      help="log every HTTP request (off: the status lines stay readable)")

    sim = command(sub, "simulate", help="publish a simulated fleet to the broker",
                  env=(*_MQTT_ENV, "WATCHFLOOR_DATABASE_URL (with --register or --provision)",
                       "WATCHFLOOR_SIMULATOR_API_URL", "WATCHFLOOR_SIMULATOR_SECRETS_FILE"), run=cmd_simulate)
    fleet_options(sim, 1000)
    sim.add_argument("--connections", type=int, default=None,
                     help="MQTT connections (default: one per device up to 2,000 devices, else 200)")
    sim.add_argument("--register", action="store_true", help="write the fleet into the device registry")
    sim.add_argument("--first", type=int, default=0,
                     help="index of the first device, to split one fleet over several processes")
    sim.add_argument("--report-every", type=float, default=10.0, help="seconds between status lines")
    sim.add_argument("--api-url", default=None,
                     help="the API that takes the cameras' WHIP streams (default: WATCHFLOOR_SIMULATOR_API_URL)")
    sim.add_argument("--secrets-file", type=Path, default=None,
                     help="JSON {device_id: secret} for WHIP (default: WATCHFLOOR_SIMULATOR_SECRETS_FILE); "
                          "without it cameras decline live-view requests")
    sim.add_argument("--decline-share", type=float, default=0.15,
                     help="share of live-view requests the simulated officers decline (0 to 1)")
    sim.add_argument("--provision", action="store_true",
                     help="give every device a new secret (registering it) and write them to --secrets-file")
    sim.add_argument("--watch-me-per-h", type=float, default=0.0,
                     help="how often each officer asks to be watched live (per hour)")

    command(sub, "ingest", help="store telemetry from the broker (run several to scale out)",
            env=(*_DB_ENV, *_MQTT_ENV, "WATCHFLOOR_INGEST_CLIENT_ID", "WATCHFLOOR_INGEST_SHARE_GROUP",
                 "WATCHFLOOR_METRICS_PORT"), run=cmd_ingest)

    api = command(sub, "api", help="the control-room API and live feed",
                  env=(*_DB_ENV, *_MQTT_ENV, "WATCHFLOOR_AUTH_SECRET or WATCHFLOOR_AUTH_SECRET_FILE (required)",
                       "WATCHFLOOR_API_HOST", "WATCHFLOOR_API_PORT", "WATCHFLOOR_OIDC_ISSUER",
                       "WATCHFLOOR_TRUSTED_PROXIES (behind a proxy)"), run=cmd_api)
    api.add_argument("--host", default=None, help="listen address (default: WATCHFLOOR_API_HOST, 127.0.0.1)")
    api.add_argument("--port", type=int, default=None, help="port (default: WATCHFLOOR_API_PORT, 8080)")

    add_user_parsers(sub, db_env=_DB_ENV)
    add_admin_parsers(sub)  # devices, broker add-user, audit verify

    db = group(sub, "db", help="database administration")
    migrate_cmd = command(db, "migrate", help="apply pending schema migrations as the tables' owner, and grant "
                          "the runtime role what the API and ingest need",
                          env=("WATCHFLOOR_MIGRATE_DATABASE_URL (the owner; default WATCHFLOOR_DATABASE_URL)",
                               "WATCHFLOOR_DATABASE_RUNTIME_ROLE"), run=cmd_db_migrate)
    migrate_cmd.add_argument("--runtime-role", default=None, metavar="NAME",
                             help="the role the API and ingest connect as (an existing role that owns nothing)")
    command(db, "maintain", help="create partitions ahead, apply retention, check TimescaleDB's storage jobs"
            " (and run those its scheduler fails)",
            env=(*_DB_ENV, "WATCHFLOOR_REJECTED_RETENTION_DAYS", "WATCHFLOOR_ALERTS_RETENTION_DAYS",
                 "WATCHFLOOR_VIEWINGS_RETENTION_DAYS"), run=cmd_db_maintain)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("watchfloor")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = Settings()
    configure_logging(fmt=settings.log_format, level=args.log_level)
    from services.audit import AuditKeyMissing

    try:
        args.run(settings, args)
    except AuditKeyMissing as error:  # an audited command without the key: say what to set
        sys.exit(str(error))
