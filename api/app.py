"""The FastAPI application: created by :func:`create_app`, resources owned by its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from psycopg_pool import ConnectionPool

from api import errors, hardening, observability
from api.live import LiveHub
from api.routes import (
    alert_policy,
    alerts,
    audit,
    auth,
    custody,
    dashboard,
    devices,
    docs,
    health,
    incidents,
    live,
    live_view,
    replay,
    reports,
    users,
)
from api.sign_ins import OidcSignIns
from core.settings import Settings
from services import audit as audit_log
from services import device_accounts
from services.accounts import Role, TokenIssuer
from services.audit import AuditConnection
from services.audit_digest import FailureDigest
from services.live_view import LiveView
from services.oidc import oidc_from_settings
from services.sessions import TokenVersions
from telemetry import queries

__all__ = ["WS_DEFLATE", "WS_IMPL", "create_app"]

#: How uvicorn serves the app's websockets. No permessage-deflate: it compresses every frame
#: again for every client (a zlib context each), which undoes encoding a delta once per
#: view; measured in bench/fanout, it was most of the API's CPU with 200 clients.
WS_IMPL = "websockets-sansio"
WS_DEFLATE = False

log = logging.getLogger(__name__)


_REGISTRY_REFRESH_S = 30.0
_FAILURE_SWEEP_S = 5.0


def _write_failures(pool: ConnectionPool, digest: FailureDigest, *, everything: bool = False) -> None:
    """Append the sign-in failure summaries whose window has closed (services/audit_digest.py)."""
    entries = digest.due(everything=everything)
    if entries:
        with pool.connection() as conn:
            for entry in entries:
                audit_log.record(conn, actor=entry.username, action="sign_in_failed", details=entry.details)
            conn.commit()


async def _sweep_failures(pool: ConnectionPool, digest: FailureDigest) -> None:
    while True:
        await asyncio.sleep(_FAILURE_SWEEP_S)
        try:
            await run_in_threadpool(_write_failures, pool, digest)
        except Exception as error:  # the database may be away; the counts wait for the next sweep
            log.warning("sign-in failure summaries not written: %s", error)


_ACCOUNTS_REFRESH_S = 30.0


async def _load_units(pool: ConnectionPool, hub: LiveHub) -> None:
    """Every unit, with its stored state: at start-up, and after frames were lost."""
    def load() -> None:
        with pool.connection() as conn:
            hub.load(queries.units_snapshot(conn))

    await run_in_threadpool(load)


async def _load_registry(pool: ConnectionPool, hub: LiveHub) -> None:
    """The registry alone, and the stored state of the devices new to the feed only: the
    frames keep every other unit's state (a full load is about twice the CPU, for nothing)."""
    def load() -> None:
        with pool.connection() as conn:
            registry = queries.registry_snapshot(conn)
            new = hub.unregistered(registry)
            hub.load_registry(registry, queries.units_snapshot(conn, device_ids=new) if new else [])

    await run_in_threadpool(load)


async def _refresh_registry(pool: ConnectionPool, hub: LiveHub, viewing: LiveView) -> None:
    """Devices registered, moved to another borough or retired after start-up reach the
    feed: at once when an API process announces the change on the broker, and every 30 s
    in any case (for changes made from the command line, or missed while disconnected).
    Each reads the registry alone, but after a broker reconnect (frames were lost with the
    session) every unit's stored state too. Live view reconciles at once too (a retired or
    re-provisioned camera's stream closes)."""
    whole = False
    while True:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(hub.registry_changed.wait(), _REGISTRY_REFRESH_S)
        hub.registry_changed.clear()  # changes announced during the load bring another one
        viewing.registry_changed()
        whole = hub.take_missed() or whole  # kept until a load succeeds
        try:
            await (_load_units if whole else _load_registry)(pool, hub)
            whole = False
        except Exception as error:  # the database may be away; the feed goes on
            log.warning("registry refresh failed: %s", error)


async def _refresh_accounts(sessions: TokenVersions, hub: LiveHub) -> None:
    """Account changes (a user disabled, signed out, given another role) end their tokens in
    this process: at once when announced on the broker, and every 30 s in any case (a change
    from the command line without a broker, or one missed while disconnected). Then every
    live-feed client whose token is over is closed."""
    while True:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(hub.accounts_changed.wait(), _ACCOUNTS_REFRESH_S)
        hub.accounts_changed.clear()  # changes announced during the load bring another one
        clients = hub.clients()
        try:
            await run_in_threadpool(sessions.load)
            ended = await run_in_threadpool(lambda: [(c, sessions.ended(c.who)) for c in clients])
        except Exception as error:  # the database may be away; the cached versions stand
            log.warning("token versions refresh failed: %s", error)
            continue
        for client, reason in ended:
            if reason is not None:
                client.end(reason)


def create_app(*, settings: Settings, database_url: str, mqtt_url: str, signing_secret: str,
               audit_key: bytes | None) -> FastAPI:
    """The API for one process. ``signing_secret`` signs its bearer tokens; ``audit_key`` keys
    the audit chain (None only in tests of an unkeyed chain). ValueError when ``mqtt_url`` has
    accounts and the settings name no device-accounts URL (services/device_accounts.py)."""

    def configure(conn: psycopg.Connection) -> None:
        assert isinstance(conn, AuditConnection)  # the pool's connection_class
        conn.audit_key = audit_key

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool: ConnectionPool[psycopg.Connection] = ConnectionPool(
            database_url, min_size=1, max_size=8, open=False, timeout=10,
            connection_class=AuditConnection, configure=configure)
        pool.open(wait=True, timeout=30)
        hub = LiveHub(mqtt_url=mqtt_url, rate_hz=settings.live_rate_hz, alert_backlog=settings.live_alert_backlog,
                      client_id=f"watchfloor-api-{uuid.uuid4().hex[:8]}")
        app.state.pool, app.state.hub = pool, hub
        # Subscribe first, then load the snapshot: an update in between is applied twice,
        # never lost.
        hub.start()
        await _load_units(pool, hub)
        sessions = TokenVersions(connect=pool.connection)
        await run_in_threadpool(sessions.load)
        app.state.sessions = sessions
        # Live view owns the relay: started here, and closed (every session ended, with its
        # record) before the hub and the pool go.
        viewing = LiveView(settings=settings, pool=pool, hub=hub, sessions=sessions, mqtt_url=mqtt_url,
                           client_id=f"watchfloor-api-lv-{uuid.uuid4().hex[:8]}")
        app.state.live_view = viewing
        refreshers = [asyncio.create_task(_refresh_registry(pool, hub, viewing)),
                      asyncio.create_task(_refresh_accounts(sessions, hub)),
                      asyncio.create_task(_sweep_failures(pool, app.state.sign_in_failures))]
        await viewing.start()
        try:
            yield
        finally:
            for refresher in refreshers:
                refresher.cancel()
            with contextlib.suppress(Exception):
                _write_failures(pool, app.state.sign_in_failures, everything=True)
            await viewing.aclose()
            await hub.stop()
            pool.close()

    app = FastAPI(title="Watchfloor control-room API", version="1", lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # /docs is served offline (api/routes/docs.py)
                  description="Fleet state, history and alerts of body-worn cameras, and the live feed "
                              "(websocket /api/v1/live). Every endpoint but /healthz and /readyz needs a "
                              "bearer token from POST /api/v1/auth/token.")
    app.state.audit_key = audit_key  # the audit route verifies with it
    # The cameras' broker logins, which retiring disables (ValueError: required and unset).
    app.state.device_accounts = device_accounts.configured(settings, mqtt_url=mqtt_url)
    app.state.settings = settings  # for routes whose limits are the force's (e.g. an incident's radius)
    app.state.sign_in_failures = FailureDigest()  # failed sign-ins, aggregated for the audit log
    app.state.areas = settings.force_areas()  # every borough written must be one of these
    app.state.tokens = TokenIssuer(signing_secret, settings.token_ttl_s,
                                   oidc=oidc_from_settings(settings, known_roles=[r.value for r in Role]))
    # A provider's token's first use is its sign-in.
    app.state.oidc_sign_ins = OidcSignIns(database_url, audit_key=audit_key)
    errors.install(app)
    hardening.install(app, settings=settings)  # body limit, security headers, rate limiters
    observability.install(app, metrics_route=settings.api_metrics)  # request ids, access lines, /metrics
    for module in (health, auth, users, devices, custody, alerts, alert_policy, incidents, replay, live, reports,
                   live_view, audit, docs):
        app.include_router(module.router)
    dashboard.install(app, settings=settings)  # the control-room page at /
    return app
