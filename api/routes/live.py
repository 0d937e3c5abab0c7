"""The live feed: ``/api/v1/live``.

Protocol (JSON text frames, but the snapshot):

1. the client sends ``{"type": "auth", "token": "<bearer token>"}`` within 5 seconds (a
   browser cannot set headers on a websocket, and a token in the URL ends up in logs);
2. the server sends the snapshot, the one binary message: ``{"type": "snapshot", "format": 2,
   "alerts": [...], "units": {...}}`` deflated, every unit the caller may see as columns and
   the open alerts (:mod:`api.live.snapshot`);
3. then ``{"type": "delta", "units": [...]}`` (only units that changed, at most
   ``live_rate_hz`` a second) and ``{"type": "alerts", "alerts": [...]}`` with the alert
   changes of the same tick.

A client that reconnects starts again at 1 and so gets a fresh snapshot.

The feed lasts as long as the token: at its expiry, or as soon as it is revoked (sign-out,
the user disabled or given another role or areas), the server closes the websocket with
code 4401 and the reason ("token expired", "token revoked"); the client signs in again.
A token refused at step 1 closes it with 4401 too (1008 for a role not on the feed or a
malformed first message).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from psycopg_pool import ConnectionPool
from starlette.websockets import WebSocketState

from api.feed_slots import FeedSlots, Refused
from api.live import LiveClient, LiveHub
from api.live.snapshot import feed_alert, snapshot_message
from api.sign_ins import OidcSignIns
from services.accounts import ON_LIVE_FEED, Principal, TokenIssuer
from services.errors import NotAuthenticated, ServiceError
from services.sessions import TokenVersions
from telemetry import queries

router = APIRouter()

_AUTH_TIMEOUT_S = 5.0
_POLICY_VIOLATION = 1008
#: A private-use code (RFC 6455 4000-4999), after HTTP's 401: the token is over, sign in again.
TOKEN_ENDED = 4401


def _open_alerts(pool: ConnectionPool, who: Principal) -> list[dict[str, object]]:
    with pool.connection() as conn:
        rows = []
        for status in ("open", "acknowledged"):
            rows += queries.list_alerts(conn, boroughs=who.areas, status=status, kinds=who.alert_kinds(),
                                        system=who.sees_system_alerts,
                                        borough=None, limit=1000, offset=0)
    return [feed_alert(row, who) for row in rows]


@router.websocket("/api/v1/live")
async def live(websocket: WebSocket) -> None:
    tokens: TokenIssuer = websocket.app.state.tokens
    sessions: TokenVersions = websocket.app.state.sessions
    hub: LiveHub = websocket.app.state.hub
    slots: FeedSlots = websocket.app.state.limits.feeds  # api/feed_slots.py: caps, close codes
    try:
        slots.enter_waiting()  # counted before the handshake completes, so a burst cannot overshoot
    except Refused as refused:
        await _refuse(websocket, refused)
        return
    try:
        await websocket.accept()
        hello = orjson.loads(await asyncio.wait_for(websocket.receive_text(), _AUTH_TIMEOUT_S))
        if not isinstance(hello, dict) or hello.get("type") != "auth":
            raise ServiceError("the first message must be {\"type\": \"auth\", \"token\": ...}")
        # In a thread: an OIDC token may need the provider's keys fetched (a blocking HTTP call).
        who, sign_in = await run_in_threadpool(tokens.identify, str(hello.get("token", "")))
        if sign_in is not None:  # a provider's token opening the feed first signs in here
            sign_ins: OidcSignIns = websocket.app.state.oidc_sign_ins
            await run_in_threadpool(sign_ins.note, sign_in)
        await run_in_threadpool(sessions.check, who)
        if who.role not in ON_LIVE_FEED:
            raise ServiceError(f"role {who.role.value} is not on the live feed")
    except (asyncio.TimeoutError, orjson.JSONDecodeError, ServiceError, WebSocketDisconnect) as error:
        reason = error.message if isinstance(error, ServiceError) else "authenticate first"
        code = TOKEN_ENDED if isinstance(error, NotAuthenticated) else _POLICY_VIOLATION
        with contextlib.suppress(Exception):
            await websocket.close(code=code, reason=reason[:120])
        return
    finally:
        slots.leave_waiting()
    try:
        slots.enter_feed(who.username)
    except Refused as refused:
        await _refuse(websocket, refused)
        return

    client, units = hub.register(who, websocket)
    sender: asyncio.Task[None] | None = None
    try:
        alerts = await run_in_threadpool(_open_alerts, websocket.app.state.pool, who)
        await websocket.send_bytes(snapshot_message(alerts=alerts, units=units))
        sender = asyncio.create_task(client.send_loop())
        receiver = asyncio.create_task(_drain(websocket))
        watcher = asyncio.create_task(_until_token_ends(client))
        done, _ = await asyncio.wait({sender, receiver, watcher}, return_when=asyncio.FIRST_COMPLETED)
        receiver.cancel()
        watcher.cancel()
        if watcher in done:
            with contextlib.suppress(Exception):
                await websocket.close(code=TOKEN_ENDED, reason=watcher.result())
            return
        for task in done:
            failure = task.exception()
            # A client that went away mid-send is the normal end of a feed, not a fault.
            if task is sender and failure is not None and not isinstance(
                    failure, (WebSocketDisconnect, OSError, RuntimeError)):
                raise failure
    except WebSocketDisconnect:
        pass
    finally:
        slots.leave_feed(who.username)
        hub.unregister(client)
        if sender is not None:
            sender.cancel()
        if websocket.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close()


async def _refuse(websocket: WebSocket, refused: Refused) -> None:
    """Close with the cap's code and reason (accepted first: a close before the handshake is
    an HTTP 403 that says neither)."""
    with contextlib.suppress(Exception):
        if websocket.client_state is WebSocketState.CONNECTING:
            await websocket.accept()
        await websocket.close(code=refused.code, reason=refused.reason[:120])


async def _until_token_ends(client: LiveClient) -> str:
    """Wait until the client's token expires or is revoked; return which."""
    expires_at = client.who.expires_at
    timeout = None if expires_at is None else max(0.0, expires_at - time.time())
    try:
        await asyncio.wait_for(client.ended.wait(), timeout)
    except asyncio.TimeoutError:
        return "token expired"
    return client.end_reason


async def _drain(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends, so that a close is noticed."""
    while True:
        await websocket.receive_text()
