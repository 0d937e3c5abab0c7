"""``watchfloor``: the command line. Each subcommand builds the settings and runs one part."""

from __future__ import annotations

import argparse
import getpass
import importlib.metadata
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg

from core.areas import unknown_areas
from core.logs import configure_logging
from core.settings import Settings
from services.accounts import ALL_AREAS
from services.registry import DeviceRecord, upsert_devices
from simulator.camera import CameraPolicy
from simulator.fleet import FleetProfile
from simulator.run import Simulator
from simulator.video import VideoUplink
from telemetry.embedded import EmbeddedBroker, embedded_database_url
from telemetry.ingest import IngestWorker
from telemetry.retention import delete_expired, record_retention
from telemetry.schema import features, migrate, run_maintenance
from watchfloor.admin_commands import add_parsers as add_admin_parsers
from watchfloor.admin_commands import announce_account, audit_key, cli_actor, database_url, prepare_database
from watchfloor.camera_video import provision_in_background, provision_to_file, uplink_from_files
from watchfloor.parsers import HelpFormatter, command, group

__all__ = ["main"]

log = logging.getLogger("watchfloor")


def _mqtt_url(settings: Settings) -> str:
    if not settings.mqtt_url:
        sys.exit("WATCHFLOOR_MQTT_URL is not set (`watchfloor demo` starts an embedded broker)")
    return settings.mqtt_url


def _migrate(settings: Settings, url: str) -> tuple[list[str], frozenset[str]]:
    applied = prepare_database(settings, url)
    with psycopg.connect(url) as conn:
        return applied, features(conn)


def _register(url: str, sim: Simulator) -> None:
    with psycopg.connect(url) as conn:
        upsert_devices(conn, (DeviceRecord(u.device_id, u.callsign, u.officer, u.borough.name, u.role)
                              for u in sim.units))


def _stop_on_signals(*stoppers: threading.Event | IngestWorker | Simulator) -> threading.Event:
    done = threading.Event()

    def handler(signum: int, frame: object) -> None:
        done.set()
        for s in stoppers:
            s.set() if isinstance(s, threading.Event) else s.stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return done


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
    print(f"partitions dropped: {dropped}")
    print("rows deleted:", ", ".join(f"{table} {count}" for table, count in deleted.items()))


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> None:
    url = database_url(settings)
    _migrate(settings, url)
    worker = IngestWorker(settings=settings, database_url=url, mqtt_url=_mqtt_url(settings))
    if settings.metrics_port:
        from telemetry.metrics import MetricsServer, ingest_registry

        registry = ingest_registry(worker, client_id=settings.ingest_client_id)
        MetricsServer(registry, host=settings.metrics_host, port=settings.metrics_port)  # a daemon thread
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    _stop_on_signals(worker)
    # With JSON logs, stdout must carry JSON objects only: the status line becomes a log record.
    emit = _status_logger if settings.log_format == "json" else _status_printer
    threading.Thread(target=_report, args=(worker, None), kwargs={"emit": emit}, daemon=True).start()
    worker.run()


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> None:
    sim = Simulator(mqtt_url=_mqtt_url(settings), devices=args.devices, interval_s=args.interval,
                    seed=args.seed, connections=args.connections, first=args.first,
                    profile=FleetProfile(watch_me_per_h=args.watch_me_per_h),
                    camera_policy=CameraPolicy(decline_share=args.decline_share))
    if args.register:
        _register(database_url(settings), sim)
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
    _stop_on_signals(sim)
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


def _status_printer(line: str) -> None:
    print(line, flush=True)


def _status_logger(line: str) -> None:
    log.info(line, extra={"event": "ingest_status"})


def _report(worker: IngestWorker, sim: Simulator | None, every_s: float = 10.0,
            emit: Callable[[str], None] = _status_printer) -> None:
    while True:
        time.sleep(every_s)
        s = worker.stats
        rejected = ", ".join(f"{k}={v}" for k, v in sorted(s.rejected.items())) or "none"
        line = (f"ingest: received {s.received}, stored {s.stored_telemetry} telemetry + "
                f"{s.stored_events} events, duplicates {s.duplicates}, rejected {rejected}, "
                f"queue {worker.queue_depth}, commit lag {s.last_commit_lag_s * 1000:.0f} ms")
        if sim is not None:
            line += f"; simulator published {sim.stats.published}"
        emit(line)


def cmd_demo(settings: Settings, args: argparse.Namespace) -> None:
    broker: EmbeddedBroker | None = None
    if settings.mqtt_url:
        mqtt_url = settings.mqtt_url
    else:
        broker = EmbeddedBroker(settings.data_dir / "broker").start()
        mqtt_url = broker.url
        settings = settings.model_copy(update={"ingest_share_group": ""})
    try:
        db_url = settings.database_url or embedded_database_url(settings.data_dir)
        applied, feats = _migrate(settings, db_url)
        key = _demo_audit_key(settings)
        print("Watchfloor demo", flush=True)
        where = "external" if settings.database_url else f"embedded PostgreSQL in {settings.data_dir / 'pg'}"
        print(f"  database: {where} ({', '.join(sorted(feats))})")
        print(f"  broker:   {mqtt_url} ({'embedded rumqttd' if broker else 'external'})")
        # Live view end to end: cameras answer requests, and stream over WHIP to the demo's API
        # with secrets provisioned on a thread as the demo starts.
        secrets: dict[str, str] = {}
        video = VideoUplink(api_url=f"http://127.0.0.1:{args.port}", secrets=secrets).open()
        sim = Simulator(mqtt_url=mqtt_url, devices=args.devices, interval_s=args.interval, seed=args.seed,
                        client_prefix="watchfloor-demo-sim", video=video,
                        profile=FleetProfile(watch_me_per_h=args.watch_me_per_h))
        _register(db_url, sim)
        worker = IngestWorker(settings=settings, database_url=db_url, mqtt_url=mqtt_url)
        done = _stop_on_signals(worker, sim)
        ready = threading.Event()
        ingest_thread = threading.Thread(target=worker.run, kwargs={"ready": ready}, name="ingest")
        ingest_thread.start()
        ready.wait(30)
        sim_thread = threading.Thread(target=sim.run, kwargs={"duration_s": args.duration}, name="simulator")
        sim_thread.start()
        print(f"  fleet:    {len(sim.units)} simulated cameras over 32 boroughs, reporting every {args.interval}s")
        try:
            server, api_thread = _start_demo_api(settings, db_url, mqtt_url, args.port, key)
            if not args.access_log:  # a line per request would bury the status lines
                logging.getLogger("watchfloor.access").setLevel(logging.WARNING)
        except SystemExit:  # stop what already runs, or its threads keep the process alive
            sim.stop()
            sim_thread.join()
            video.close()
            worker.stop()
            ingest_thread.join()
            raise
        # After the API is up: each secret is an argon2 hash, and they would slow its start.
        provisioning = provision_in_background(db_url, sim.units, secrets, stop=done, audit_key=key)
        print(f"  dashboard: http://{settings.api_host}:{args.port}/ (sign in as one of the users above)")
        print(f"  api:      http://{settings.api_host}:{args.port}/docs (live feed: ws://{settings.api_host}:"
              f"{args.port}/api/v1/live)")
        print(f"  try:      psql '{db_url}' -c 'select * from device_latest limit 5'")
        print("  video:    POST /api/v1/devices/{id}/live-view as an operator; cameras answer (15% decline) and "
              "stream over WHIP; watch at /api/v1/whep/{id}")
        print("  Ctrl-C stops everything.", flush=True)
        threading.Thread(target=_report, args=(worker, sim, args.report_every), daemon=True).start()
        sim_thread.join()
        deadline = time.monotonic() + 10.0  # let ingest take in what the simulator sent last
        while not done.is_set() and worker.stats.received < sim.stats.published and time.monotonic() < deadline:
            time.sleep(0.1)
        done.set()  # ends the provisioning too: it must not outlive the database (Ctrl-C at 2,500 cameras)
        provisioning.join()
        video.close()
        server.should_exit = True
        api_thread.join(20)
        worker.stop()
        ingest_thread.join()
        s = worker.stats
        print(f"demo finished: published {sim.stats.published}, received {s.received}, "
              f"stored {s.stored_telemetry} telemetry + {s.stored_events} events", flush=True)
    finally:
        if broker is not None:
            broker.stop()


def _demo_audit_key(settings: Settings) -> bytes:
    """The configured audit key, or one kept in the data directory: the demo's database lives
    beside it, so this shows the keyed chain working, not the separation production needs."""
    configured = audit_key(settings)
    if configured is not None:
        return configured
    import secrets

    path = settings.data_dir / "audit.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()


def _start_demo_api(settings: Settings, db_url: str, mqtt_url: str, port: int,
                    audit_key: bytes) -> tuple[Any, threading.Thread]:
    """The API on a thread, with a signing secret made for this run and a user per role."""
    import secrets

    import uvicorn

    from api.app import WS_DEFLATE, WS_IMPL, create_app
    from api.hardening import WS_MAX_BYTES
    from services.accounts import Role, add_user

    secret = settings.auth_secret.get_secret_value() if settings.auth_secret else secrets.token_urlsafe(48)
    users = [("operator", Role.OPERATOR, ["*"]), ("operator-westminster", Role.OPERATOR, ["Westminster"]),
             ("firearms", Role.FIREARMS_COMMANDER, ["*"]), ("fleet", Role.FLEET_MANAGER, ["*"]),
             ("auditor", Role.AUDITOR, ["*"]), ("admin", Role.ADMIN, ["*"])]
    print("  users (demo only; passwords are new every run):")
    with psycopg.connect(db_url) as conn:
        for name, role, areas in users:
            password = secrets.token_urlsafe(12)
            add_user(conn, username=name, password=password, role=role, areas=areas)
            print(f"            {name:<22} {password}  ({role.value}, {','.join(areas)})")
    try:
        app = create_app(settings=settings, database_url=db_url, mqtt_url=mqtt_url, signing_secret=secret,
                         audit_key=audit_key)
    except ValueError as error:  # a broker with accounts and no device-accounts URL
        raise SystemExit(str(error))
    server = uvicorn.Server(uvicorn.Config(app, host=settings.api_host, port=port, log_level="warning",
                                           ws=WS_IMPL, ws_per_message_deflate=WS_DEFLATE, ws_max_size=WS_MAX_BYTES,
                                           proxy_headers=False))  # api/client_address.py reads them
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise SystemExit(f"the API could not start on {settings.api_host}:{port} (port in use? try --port)")
    return server, thread


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
    _migrate(settings, url)
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


def _new_password(username: str) -> str:
    """Prompted for twice on a terminal, so it never sits in the shell's history or in ``ps``;
    read from standard input's first line when that is not a terminal (a provisioning script)."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass(f"password for {username}: ")
    if getpass.getpass("again: ") != password:
        sys.exit("the passwords differ")
    return password


def cmd_users_add(settings: Settings, args: argparse.Namespace) -> None:
    from services import audit
    from services.accounts import Role, add_user

    url = database_url(settings)  # before the prompt: a user should not type a password for nothing
    areas = [a.strip() for a in args.areas.split(",")]
    unknown = unknown_areas([a for a in areas if a != ALL_AREAS], settings.force_areas())
    if unknown:
        sys.exit(f"unknown area {', '.join(map(repr, unknown))}: not one of the force's areas")
    password = _new_password(args.username)
    _migrate(settings, url)
    with audit.connect(url, key=audit_key(settings)) as conn:
        try:
            add_user(conn, username=args.username, password=password, role=Role(args.role),
                     areas=areas, display_name=args.name)
        except ValueError as error:
            sys.exit(str(error))
        audit.record(conn, actor=cli_actor(), action="user_changed",
                     details={"username": args.username, "role": args.role, "areas": areas,
                              "change": "added or replaced"})
    # After the commit: a replaced user's tokens carry the old role and areas, and are over.
    announce_account(settings, args.username, "replaced")
    print(f"user {args.username}: {args.role} in {args.areas}")


def cmd_users_list(settings: Settings, args: argparse.Namespace) -> None:
    from services.accounts import list_users

    with psycopg.connect(database_url(settings)) as conn:
        users = list_users(conn)
    print(f"{'USER':<24} {'ROLE':<19} {'STATE':<9} {'AREAS':<30} NAME")
    for u in users:
        print(f"{u.username:<24} {u.role.value:<19} {'disabled' if u.disabled else 'enabled':<9} "
              f"{','.join(u.areas):<30} {u.display_name or ''}")
    print(f"{len(users)} users")


def _change_user(settings: Settings, username: str, change: str) -> None:
    from services import audit
    from services.accounts import disable_user, remove_user

    act = {"disabled": disable_user, "removed": remove_user}[change]
    with audit.connect(database_url(settings), key=audit_key(settings)) as conn:
        if not act(conn, username=username):
            sys.exit(f"no such user: {username}" + (" (or already disabled)" if change == "disabled" else ""))
        audit.record(conn, actor=cli_actor(), action="user_changed", details={"username": username, "change": change})
    announce_account(settings, username, change)  # after the commit: their tokens are over
    print(f"user {username}: {change}")


def cmd_users_disable(settings: Settings, args: argparse.Namespace) -> None:
    _change_user(settings, args.username, "disabled")


def cmd_users_remove(settings: Settings, args: argparse.Namespace) -> None:
    _change_user(settings, args.username, "removed")


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

    users = group(sub, "users", help="local users (sign-in with a password; OIDC users are the provider's)")
    users_env = (_DB_ENV[0], "WATCHFLOOR_MQTT_URL (optional: ends the user's tokens on every API process at once)")
    add = command(users, "add", help="create or replace a local user (prompts for the password; audited)",
                  env=users_env, run=cmd_users_add)
    add.add_argument("username")
    add.add_argument("--role", required=True,
                     choices=["operator", "firearms_commander", "fleet_manager", "auditor", "admin"])
    add.add_argument("--areas", default="*", help="comma-separated boroughs, or * for all")
    add.add_argument("--name", default=None, help="display name")
    command(users, "list", help="every local user, with role, areas and state", env=_DB_ENV[:1], run=cmd_users_list)
    for name, what, run in (("disable", "refuse the user's sign-ins and end their tokens (audited)",
                             cmd_users_disable),
                            ("remove", "delete a local user; the audit log keeps the name (audited)",
                             cmd_users_remove)):
        command(users, name, help=what, env=users_env, run=run).add_argument("username")

    add_admin_parsers(sub)  # devices, broker add-user, audit verify

    db = group(sub, "db", help="database administration")
    migrate_cmd = command(db, "migrate", help="apply pending schema migrations as the tables' owner, and grant "
                          "the runtime role what the API and ingest need",
                          env=("WATCHFLOOR_MIGRATE_DATABASE_URL (the owner; default WATCHFLOOR_DATABASE_URL)",
                               "WATCHFLOOR_DATABASE_RUNTIME_ROLE"), run=cmd_db_migrate)
    migrate_cmd.add_argument("--runtime-role", default=None, metavar="NAME",
                             help="the role the API and ingest connect as (an existing role that owns nothing)")
    command(db, "maintain", help="create partitions ahead and apply retention",
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
