"""``watchfloor demo``: every part on embedded PostgreSQL and rumqttd, with a simulated fleet,
in one process, for a first look (README, Quick start). Nothing here is for production: the
audit key and the signing secret are made for the run, and so are the users' passwords."""

from __future__ import annotations

import argparse
import logging
import socket
import threading
import time
from typing import Any

import psycopg

from core.settings import Settings
from simulator.fleet import FleetProfile
from simulator.run import Simulator
from simulator.video import VideoUplink
from telemetry.embedded import EmbeddedBroker, embedded_database_url
from telemetry.ingest import IngestWorker
from watchfloor.admin_commands import audit_key
from watchfloor.camera_video import provision_in_background
from watchfloor.demo_incident import open_demo_incident
from watchfloor.running import migrate_first, register_fleet, report_ingest, stop_on_signals

__all__ = ["cmd_demo"]


def cmd_demo(settings: Settings, args: argparse.Namespace) -> None:
    api_socket = _reserve_api_port(settings.api_host, args.port)
    try:
        _run_demo(settings, args, api_socket)
    finally:
        api_socket.close()


def _reserve_api_port(host: str, port: int) -> socket.socket:
    """The API's port, bound before anything else starts: the simulated cameras' connections
    take ephemeral ports, and one of them took the API's while the demo was setting up (in CI,
    at 1,200 cameras). A port the kernel holds as bound is never handed out to a connection."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds its own
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise SystemExit(f"the API could not start on {host}:{port} ({error.strerror}; port in use? try --port)")
    return sock


def _run_demo(settings: Settings, args: argparse.Namespace, api_socket: socket.socket) -> None:
    broker: EmbeddedBroker | None = None
    if settings.mqtt_url:
        mqtt_url = settings.mqtt_url
    else:
        broker = EmbeddedBroker(settings.data_dir / "broker").start()
        mqtt_url = broker.url
        settings = settings.model_copy(update={"ingest_share_group": ""})
    try:
        db_url = settings.database_url or embedded_database_url(settings.data_dir)
        applied, feats = migrate_first(settings, db_url)
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
        register_fleet(db_url, sim)
        incident = open_demo_incident(db_url, sim, audit_key=key)
        worker = IngestWorker(settings=settings, database_url=db_url, mqtt_url=mqtt_url)
        done = stop_on_signals(worker, sim)
        ready = threading.Event()
        ingest_thread = threading.Thread(target=worker.run, kwargs={"ready": ready}, name="ingest")
        ingest_thread.start()
        ready.wait(30)
        sim_thread = threading.Thread(target=sim.run, kwargs={"duration_s": args.duration}, name="simulator")
        sim_thread.start()
        print(f"  fleet:    {len(sim.units)} simulated cameras over 32 boroughs, reporting every {args.interval}s")
        if incident is not None:
            print(f"  incident: #{incident} in progress, firearms units assigned (sign in as firearms)")
        try:
            server, api_thread = _start_demo_api(settings, db_url, mqtt_url, api_socket, key)
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
        threading.Thread(target=report_ingest, args=(worker, sim, args.report_every), daemon=True).start()
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


def _start_demo_api(settings: Settings, db_url: str, mqtt_url: str, api_socket: socket.socket,
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
    host, port = api_socket.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           ws=WS_IMPL, ws_per_message_deflate=WS_DEFLATE, ws_max_size=WS_MAX_BYTES,
                                           proxy_headers=False))  # api/client_address.py reads them
    thread = threading.Thread(target=server.run, kwargs={"sockets": [api_socket]}, name="api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise SystemExit(f"the API could not start on {host}:{port}")
    return server, thread
