"""Live view in one API process: consent, the relay's sessions, and what everyone is told.

:class:`LiveView` is owned by the app's lifespan. It owns

* the relay (:class:`streaming.Relay`): cameras publish to it over WHIP, viewers play from
  it over WHEP, and its events (a viewer joined or left, a camera vanished) come back here;
* a broker connection of its own: it sends commands to cameras (``live_view_request``,
  ``live_view_stop``, ``live_view_status`` with the viewer count, so a camera always knows
  it is watched), reads their replies and the events that carry consent (``watch_me``) or end
  it (``recording_stopped``, ``docked``), and publishes every live-view change on
  :data:`LIVE_VIEW_TOPIC`, which every API process (this one too) pushes to its websocket
  clients and acts on (a consent ended elsewhere closes the stream here);
* the idle timers (no viewer attached for ``live_view_idle_stop_s``: the stream stops) and a
  sweeper that expires unanswered requests and consents that never became a stream.

State lives in PostgreSQL (:mod:`services.viewings`), so any process answers questions
about requests, consent and viewers. Media does not: a camera's WHIP session and its
viewers' WHEP sessions must reach the same process (route ``/api/v1/whip/{id}`` and
``/api/v1/whep/{id}`` by device id at the load balancer), as with any SFU.

paho's thread meets the event loop in one place, :meth:`LiveView._from_broker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn, Protocol, TypeVar

import anyio.to_thread
import orjson
import paho.mqtt.client as paho
import psycopg
from psycopg_pool import ConnectionPool
from pydantic import ValidationError

from core.commands import CommandReply, CommandType, ReplyStatus, command
from core.contract import TOPIC_ROOT, Channel, Event, topic_for
from core.mqtt import BrokerAddress, BufferedClient, new_client
from core.settings import Settings
from services import audit, viewings
from services.accounts import Principal, Role
from services.consent import (
    VIEWING_ROLES,
    Basis,
    Denied,
    UnitFacts,
    clean_reason,
    may_watch,
    plan_request,
    stop_reason_for_event,
)
from services.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotAuthenticated,
    NotFound,
    TooManyRequests,
    UnusableOffer,
)
from services.registry import verify_device_secret
from services.viewer_slots import SlotRefused, ViewerCaps, ViewerSlots
from streaming import IceServerConfig, InvalidOffer, NoSuchStream, OfferLimits, Relay, RelayEvent, Session

__all__ = ["LIVE_VIEW_TOPIC", "LiveView", "Notifier", "ice_servers"]

log = logging.getLogger(__name__)

#: Live-view changes, published by whichever API process made them, read by every API process.
LIVE_VIEW_TOPIC = "watchfloor/v1/live-view"
_REPLIES = f"{TOPIC_ROOT}/+/{Channel.COMMAND_REPLIES.value}"
_EVENTS = f"{TOPIC_ROOT}/+/{Channel.EVENTS.value}"
# Only these events matter here; the rest of the fleet's events are skipped on paho's thread
# by a substring test, before any parsing.
_CONSENT_EVENTS = (b'"watch_me"', b'"recording_stopped"', b'"docked"')
_INBOX_MAX = 10_000
_SWEEP_S = 2.0
_RECORDED_WAIT_S = 10.0
# A viewing still open this long after its consent ended was served by a process that died.
_ORPHAN_AFTER = timedelta(seconds=30)
_STREAM_WAIT_S, _STREAM_POLL_S = 10.0, 0.25  # a WHEP request waits this long for an accepted camera

T = TypeVar("T")
# The relay's words for how a viewer's session ended, in the record's words.
_VIEWER_END = {"publisher_ended": "stream_ended", "connection_failed": "connection_lost",
               "connection_closed": "connection_lost", "setup_timeout": "never_connected",
               "relay_closed": "server_stopping"}


@dataclass
class _Viewer:
    session_id: str
    device_id: str
    username: str
    slot: int  # in LiveView._slots, given back when the session ends
    recorded: asyncio.Event = field(default_factory=asyncio.Event)  # its record is committed


class Notifier(Protocol):
    """Where live-view changes go to the control room: the live feed (``api.live.LiveHub``)."""

    def push(self, frame: str, *, device_id: str, roles: frozenset[Role]) -> int: ...


def ice_servers(settings: Settings) -> tuple[IceServerConfig, ...]:
    """The relay's STUN/TURN servers, from ``WATCHFLOOR_RELAY_ICE_SERVERS`` (RTCIceServer JSON)."""
    servers = []
    for entry in settings.relay_ice_servers:
        urls = entry.get("urls", ())
        servers.append(IceServerConfig(urls=(urls,) if isinstance(urls, str) else tuple(urls),
                                       username=entry.get("username"), credential=entry.get("credential")))
    return tuple(servers)


def _raise(denied: Denied) -> None:
    raise {"forbidden": Forbidden, "not_found": NotFound, "conflict": Conflict}[denied.kind](denied.message)


def _facts(conn: psycopg.Connection, device_id: str) -> UnitFacts | None:
    row = viewings.unit_for_live_view(conn, device_id)
    return UnitFacts.from_row(row) if row is not None else None


class LiveView:
    """Live view for one API process (see the module's docstring); ``start`` and ``aclose``
    belong to the app's lifespan, the rest to the routes."""

    def __init__(self, *, settings: Settings, pool: ConnectionPool, hub: Notifier, mqtt_url: str,
                 client_id: str) -> None:
        self._settings = settings
        self._pool = pool
        self._hub = hub
        self._address = BrokerAddress.parse(mqtt_url)
        self._client: BufferedClient = new_client(self._address, client_id=client_id, protocol=paho.MQTTv311)
        self._client.on_connect = self._on_connect  # type: ignore[assignment]
        self._client.on_message = self._on_message  # type: ignore[assignment]
        self._relay: Relay | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: asyncio.Queue[tuple[str, bytes]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # short ones: a relay event, an idle stop
        self._loops: list[asyncio.Task[None]] = []  # the dispatcher and the sweeper
        self._publishers: dict[str, str] = {}  # device id -> its WHIP session here
        self._viewers: dict[str, _Viewer] = {}  # WHEP session id -> who
        self._closing: dict[str, str] = {}  # session id -> why this process closed it
        self._idle: dict[str, asyncio.TimerHandle] = {}
        self._slots = ViewerSlots(ViewerCaps(per_user=settings.live_view_max_sessions_per_user,
                                             per_camera=settings.live_view_max_viewers_per_camera,
                                             per_process=settings.live_view_max_viewers))
        self.inbox_dropped = 0

    # lifecycle (owned by the app's lifespan)

    @property
    def relay(self) -> Relay:
        assert self._relay is not None, "LiveView.start() first"
        return self._relay

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._inbox = asyncio.Queue(maxsize=_INBOX_MAX)
        limits = OfferLimits(allow_private_candidates=self._settings.relay_allow_private_candidates)
        self._relay = Relay(ice_servers=ice_servers(self._settings), on_event=self._on_relay_event,
                            offer_limits=limits)
        self._client.connect_async(self._address.host, self._address.port, keepalive=30)
        self._client.loop_start()
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._dispatch_forever()), loop.create_task(self._sweep_forever())]

    async def aclose(self) -> None:
        """End every session of this process with its records, then stop."""
        for handle in self._idle.values():
            handle.cancel()
        self._idle.clear()
        if self._relay is not None:
            # Each step on its own: a failure to close one peer must not leave its record open.
            for session_id in list(self._viewers):
                with contextlib.suppress(Exception):
                    await self._relay.close(session_id, reason="server_stopping")
                with contextlib.suppress(Exception):
                    await self._viewer_gone(session_id, "server_stopping")
            for device_id, session_id in list(self._publishers.items()):
                self._closing[session_id] = "server_stopping"
                with contextlib.suppress(Exception):
                    await self._relay.close(session_id, reason="server_stopping")
                with contextlib.suppress(Exception):
                    await self._publisher_gone(device_id, session_id, "server_stopping")
        for handle in self._idle.values():
            handle.cancel()
        self._idle.clear()
        if self._relay is not None:
            await self._relay.aclose()
        # Let the handlers of the sessions just closed finish their records (cancelled, they
        # could stop before their transaction), then stop the loops.
        for _ in range(3):  # bounded: a handler may start another (a viewer's end, its count)
            if not self._tasks:
                break
            await asyncio.wait(list(self._tasks), timeout=_RECORDED_WAIT_S)
            for task in list(self._tasks):
                if not task.done():
                    task.cancel()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._client.disconnect()
        self._client.loop_stop()

    def _spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _db(self, work: Callable[[psycopg.Connection], T]) -> T:
        """``work`` in one transaction on a pooled connection (committed unless it raises)."""
        def run() -> T:
            with self._pool.connection() as conn:
                return work(conn)
        return await anyio.to_thread.run_sync(run)

    # paho's thread

    def _on_connect(self, client: paho.Client, u: object, f: object, reason: object, p: object) -> None:
        client.subscribe([(_REPLIES, 1), (_EVENTS, 1), (LIVE_VIEW_TOPIC, 1)])

    def _on_message(self, client: paho.Client, u: object, message: paho.MQTTMessage) -> None:
        payload = bytes(message.payload)
        if message.topic.endswith("/events") and not any(e in payload for e in _CONSENT_EVENTS):
            return
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._from_broker, message.topic, payload)
            except RuntimeError:  # the loop closed under us: the app is stopping
                pass

    # the event loop

    def _from_broker(self, topic: str, payload: bytes) -> None:
        """Where paho's thread hands a message over. The inbox is bounded: when full (the
        database stalled for a long time) the message is dropped, counted and logged; a
        request then expires instead of being answered."""
        assert self._inbox is not None
        try:
            self._inbox.put_nowait((topic, payload))
        except asyncio.QueueFull:
            self.inbox_dropped += 1
            log.warning("live view: inbox full, dropped a message on %s", topic)

    async def _dispatch_forever(self) -> None:
        assert self._inbox is not None
        while True:
            topic, payload = await self._inbox.get()
            try:
                if topic == LIVE_VIEW_TOPIC:
                    await self._on_change(payload)
                elif topic.endswith("/" + Channel.COMMAND_REPLIES.value):
                    await self._on_reply(topic.split("/")[-2], payload)
                else:
                    await self._on_event(topic.split("/")[-2], payload)
            except Exception:  # one bad message must not stop live view
                log.exception("live view: handling a message on %s failed", topic)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_S)
            try:
                await self._sweep()
            except Exception as error:  # the database may be away; try again next time
                log.warning("live view sweep failed: %s", error)

    async def _sweep(self) -> None:
        now = datetime.now(timezone.utc)
        idle = timedelta(seconds=self._settings.live_view_idle_stop_s)

        def work(conn: psycopg.Connection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            expired = viewings.expire_requests(conn, now=now)
            for row in expired:
                audit.record(conn, actor="system", action="live_view_declined", device_id=row["device_id"],
                             details={"request_id": row["request_id"], "detail": row["detail"], "expired": True})
            stale = viewings.stale_consents(conn, granted_before=now - idle)
            stale += viewings.end_policy_consents_not_recording(conn)
            for row in stale:
                audit.record(conn, actor="system", action="live_view_ended", device_id=row["device_id"],
                             details={"consent_id": row["consent_id"], "basis": row["basis"],
                                      "reason": row["end_reason"]})
            for row in viewings.end_orphaned_viewings(conn, consent_ended_before=now - _ORPHAN_AFTER):
                audit.record(conn, actor=row["viewer"], action="viewing_ended", device_id=row["device_id"],
                             details={"session_id": row["session_id"], "reason": "consent_ended"})
            return expired, stale

        expired, stale = await self._db(work)
        for row in expired:
            self._announce("expired", row["device_id"], request=row)
        for row in stale:
            self._command(row["device_id"], CommandType.LIVE_VIEW_STOP, {"reason": row["end_reason"]})
            self._announce("consent_ended", row["device_id"], consent=row, reason=row["end_reason"])
            await self._close_publisher(row["device_id"], row["end_reason"])

    # telling cameras and every API process

    def _command(self, device_id: str, kind: CommandType, params: dict[str, Any],
                 command_id: str | None = None) -> str:
        command_id = command_id or f"c-{uuid.uuid4().hex[:16]}"
        payload = command(command_id=command_id, kind=kind, params=params,
                          expires_s=self._settings.live_view_request_timeout_s)
        self._client.publish(topic_for(device_id, Channel.COMMANDS), payload, qos=1)
        return command_id

    def _announce(self, event: str, device_id: str, **fields: Any) -> None:
        body = {"type": "live_view", "event": event, "device_id": device_id, **fields}
        request = fields.get("request")
        if request is not None:  # a request's answer, flat as well: what a client matches on
            body.update(request_id=request["request_id"], status=request["status"], detail=request["detail"])
        self._client.publish(LIVE_VIEW_TOPIC, orjson.dumps(body), qos=1)

    def _tell_camera_viewers(self, device_id: str) -> int:
        count = self.relay.viewer_count(device_id) if self.relay.is_publishing(device_id) else 0
        self._command(device_id, CommandType.LIVE_VIEW_STATUS, {"viewers": count})
        return count

    async def _on_change(self, payload: bytes) -> None:
        """A live-view change from any API process: push it to this process's clients who
        may watch the unit; a consent that ended elsewhere closes the stream here."""
        change = orjson.loads(payload)
        device_id = str(change.get("device_id"))
        self._hub.push(payload.decode(), device_id=device_id, roles=VIEWING_ROLES)
        if change.get("event") == "consent_ended" and device_id in self._publishers:
            await self._close_publisher(device_id, str(change.get("reason") or "consent_ended"))

    # the camera's side of consent

    async def _on_reply(self, device_id: str, payload: bytes) -> None:
        try:
            answer = CommandReply.model_validate_json(payload)
        except ValidationError:
            log.info("live view: a malformed command reply from %s", device_id)
            return
        if answer.status not in (ReplyStatus.ACCEPTED, ReplyStatus.DECLINED, ReplyStatus.FAILED,
                                 ReplyStatus.EXPIRED):
            return  # "done" answers a status or stop command: nothing to record

        # The camera's words are shown to people and stored: printable characters only.
        detail = "".join(c for c in answer.detail if c.isprintable()) if answer.detail else None

        def work(conn: psycopg.Connection) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
            accepted = answer.status is ReplyStatus.ACCEPTED
            row = viewings.answer_request(conn, request_id=answer.id, device_id=device_id,
                                       status="accepted" if accepted else "declined",
                                       detail=detail or (None if accepted else answer.status.value))
            if row is None:
                return None, None  # not a pending request of this camera, or another process was first
            consent = None
            if accepted:
                consent = viewings.grant_consent(conn, device_id=device_id, basis=Basis.ACCEPTED_REQUEST.value,
                                              request_id=answer.id)
            audit.record(conn, actor=f"device:{device_id}",
                         action="live_view_accepted" if accepted else "live_view_declined", device_id=device_id,
                         details={"request_id": answer.id, "requested_by": row["requested_by"],
                                  "detail": row["detail"], "basis": Basis.ACCEPTED_REQUEST.value if accepted else None})
            return row, consent

        row, consent = await self._db(work)
        if row is not None:
            self._announce(row["status"], device_id, request=row, consent=consent)

    async def _on_event(self, device_id: str, payload: bytes) -> None:
        try:
            event = Event.model_validate_json(payload)
        except ValidationError:
            return  # ingest counts bad input
        kind = event.type.value

        def work(conn: psycopg.Connection) -> tuple[str, dict[str, Any]] | None:
            if kind == "watch_me":
                unit = viewings.unit_for_live_view(conn, device_id)
                if unit is None or unit["retired"]:
                    return None  # not a device in service: nothing it sends grants consent
                granted = viewings.grant_consent(conn, device_id=device_id, basis=Basis.OFFICER_REQUEST.value,
                                              request_id=None)
                if granted is None:
                    return None  # consent in force already, or another process granted it
                audit.record(conn, actor=f"device:{device_id}", action="live_view_accepted", device_id=device_id,
                             details={"basis": Basis.OFFICER_REQUEST.value, "consent_id": granted["consent_id"]})
                return "consent_started", granted
            consent = viewings.active_consent(conn, device_id)
            if consent is None:
                return None
            reason = stop_reason_for_event(kind, Basis(consent["basis"]))
            if reason is None:
                return None
            ended = viewings.end_consent(conn, device_id=device_id, reason=reason, consent_id=consent["consent_id"])
            if ended is None:
                return None
            audit.record(conn, actor=f"device:{device_id}", action="live_view_ended", device_id=device_id,
                         details={"consent_id": ended["consent_id"], "basis": ended["basis"], "reason": reason})
            return "consent_ended", ended

        outcome = await self._db(work)
        if outcome is None:
            return
        change, consent = outcome
        if change == "consent_ended":
            self._command(device_id, CommandType.LIVE_VIEW_STOP, {"reason": consent["end_reason"]})
            self._announce(change, device_id, consent=consent, reason=consent["end_reason"])
            await self._close_publisher(device_id, consent["end_reason"])
        else:
            self._announce(change, device_id, consent=consent)

    # the control room's request

    async def request(self, who: Principal, device_id: str, reason_raw: str) -> dict[str, Any]:
        """Ask the camera (or grant at once, by policy); returns the request as recorded."""
        reason = clean_reason(reason_raw)
        if reason is None:
            raise InvalidRequest("reason: 3 to 200 printable characters are required")
        request_id = f"lv-{uuid.uuid4().hex[:20]}"
        expires = datetime.now(timezone.utc) + timedelta(seconds=self._settings.live_view_request_timeout_s)

        def work(conn: psycopg.Connection) -> tuple[Denied | None, dict[str, Any] | None, dict[str, Any] | None,
                                                    Basis | None]:
            unit = _facts(conn, device_id)
            denied = may_watch(who, unit)
            if denied is not None or unit is None:
                return denied, None, None, None
            row = viewings.create_request(conn, request_id=request_id, device_id=device_id, requested_by=who.username,
                                       reason=reason, expires_at=expires)
            audit.record(conn, actor=who.username, action="live_view_requested", device_id=device_id,
                         details={"request_id": request_id, "reason": reason})
            consent = viewings.active_consent(conn, device_id)
            if consent is not None:
                row = viewings.answer_request(conn, request_id=request_id, device_id=device_id, status="accepted",
                                           detail=f"consent already in force ({consent['basis']})") or row
                return None, row, consent, None
            plan = plan_request(unit, policy_firearms_recording=self._settings.live_view_policy_firearms_recording)
            if plan.ask:
                return None, row, None, None
            assert plan.basis is not None
            consent = viewings.grant_consent(conn, device_id=device_id, basis=plan.basis.value, request_id=request_id)
            row = viewings.answer_request(conn, request_id=request_id, device_id=device_id, status="accepted",
                                       detail="by policy: a firearms unit that is recording") or row
            audit.record(conn, actor="policy", action="live_view_accepted", device_id=device_id,
                         details={"request_id": request_id, "basis": plan.basis.value})
            return None, row, consent, plan.basis

        denied, row, consent, policy = await self._db(work)
        if denied is not None:
            _raise(denied)
        assert row is not None
        if row["status"] == "pending" or policy is not None:
            # The camera is asked; under policy it is told (it must show its officer it is live).
            self._command(device_id, CommandType.LIVE_VIEW_REQUEST,
                          {"requested_by": who.username, "reason": reason,
                           "basis": policy.value if policy is not None else "ask"}, command_id=request_id)
        self._announce("requested" if row["status"] == "pending" else "accepted", device_id, request=row,
                       consent=consent)
        return row

    async def stop(self, who: Principal, device_id: str) -> dict[str, Any]:
        """The control room ends the consent in force (and so the stream)."""
        def work(conn: psycopg.Connection) -> tuple[Denied | None, dict[str, Any] | None]:
            denied = may_watch(who, _facts(conn, device_id))
            if denied is not None:
                return denied, None
            ended = viewings.end_consent(conn, device_id=device_id, reason="stopped_by_control_room")
            if ended is None:
                return Denied("conflict", f"{device_id} is not live"), None
            audit.record(conn, actor=who.username, action="live_view_ended", device_id=device_id,
                         details={"consent_id": ended["consent_id"], "reason": "stopped_by_control_room"})
            return None, ended

        denied, ended = await self._db(work)
        if denied is not None:
            _raise(denied)
        assert ended is not None
        self._command(device_id, CommandType.LIVE_VIEW_STOP, {"reason": "stopped_by_control_room"})
        self._announce("consent_ended", device_id, consent=ended, reason="stopped_by_control_room")
        await self._close_publisher(device_id, "stopped_by_control_room")
        return ended

    # WHIP: the camera publishes

    async def publish(self, device_id: str, secret: str, offer: str) -> Session:
        def work(conn: psycopg.Connection) -> dict[str, Any] | None | bool:
            if not verify_device_secret(conn, device_id=device_id, secret=secret):
                return False
            return viewings.active_consent(conn, device_id)

        consent = await self._db(work)
        if consent is False:
            raise NotAuthenticated("not this device's secret")
        if not isinstance(consent, dict):
            raise Forbidden(f"no consent in force for {device_id}: live view needs the officer's agreement or policy")
        # Publishing again here (a camera back from a network blip) replaces its old session;
        # the relay keeps the viewers, which see the new one from its next keyframe. A session
        # recorded by another API process is taken over too: that process died, or the
        # balancer moved the camera; the camera proved who it is, and the old process's
        # session, when it ends, no longer speaks for the consent.
        previous = self._publishers.get(device_id)
        try:
            session = await self.relay.publish(device_id, offer)
        except InvalidOffer as error:
            raise UnusableOffer(f"the SDP offer cannot start a session: {error}") from None
        self._publishers[device_id] = session.id
        # Recorded by another process: its viewings cannot go on here (their records end).
        moved = consent["publisher_session"] not in (None, previous)
        local = [v.session_id for v in self._viewers.values() if v.device_id == device_id]

        def record(conn: psycopg.Connection) -> dict[str, Any] | None:
            updated = viewings.set_publisher(conn, consent_id=consent["consent_id"], session_id=session.id)
            if updated is not None and moved:
                for row in viewings.end_viewings_elsewhere(conn, consent_id=consent["consent_id"], keep=local,
                                                        reason="stream_moved"):
                    audit.record(conn, actor=row["viewer"], action="viewing_ended", device_id=device_id,
                                 details={"session_id": row["session_id"], "reason": "stream_moved"})
            return updated

        updated = await self._db(record)
        if updated is None:  # the consent ended while the session was being set up
            await self._close_publisher(device_id, "consent_ended")
            raise Forbidden(f"the consent for {device_id} ended")
        self._announce("stream_started", device_id, consent=updated, viewers=0)
        self._arm_idle(device_id)
        return session

    async def unpublish(self, device_id: str, session_id: str, secret: str) -> None:
        """The camera ends its stream (its officer stopped it): WHIP DELETE."""
        ok = await self._db(lambda conn: verify_device_secret(conn, device_id=device_id, secret=secret))
        if not ok:
            raise NotAuthenticated("not this device's secret")
        if self._publishers.get(device_id) != session_id:
            raise NotFound("no such WHIP session")
        await self._close_publisher(device_id, "officer_stopped")

    async def _close_publisher(self, device_id: str, reason: str) -> None:
        session_id = self._publishers.get(device_id)
        if session_id is None:
            return
        self._closing[session_id] = reason
        await self.relay.close(session_id, reason=reason)
        await self._publisher_gone(device_id, session_id, reason)

    async def _publisher_gone(self, device_id: str, session_id: str, relay_reason: str) -> None:
        """The camera's session ended, whoever ended it: its viewers go, and so does the consent."""
        if self._publishers.get(device_id) != session_id:
            return  # handled already
        del self._publishers[device_id]
        if (handle := self._idle.pop(device_id, None)) is not None:
            handle.cancel()
        reason = self._closing.pop(session_id, None) or "camera_lost"
        for viewer in [v for v in self._viewers.values() if v.device_id == device_id]:
            with contextlib.suppress(Exception):
                await self.relay.close(viewer.session_id, reason="stream_ended")
            await self._viewer_gone(viewer.session_id, "stream_ended")

        def work(conn: psycopg.Connection) -> tuple[dict[str, Any] | None, bool]:
            """(the consent this ended, whether the stream that ended was the unit's)."""
            consent = viewings.active_consent(conn, device_id)
            if consent is None:
                return None, True  # ended already (and announced by whoever ended it)
            if consent["publisher_session"] != session_id:
                return None, False  # the camera publishes elsewhere now (taken over)
            ended = viewings.end_consent(conn, device_id=device_id, reason=reason, consent_id=consent["consent_id"])
            if ended is not None:
                audit.record(conn, actor=f"device:{device_id}" if reason in ("officer_stopped", "camera_lost")
                             else "system", action="live_view_ended", device_id=device_id,
                             details={"consent_id": ended["consent_id"], "basis": ended["basis"], "reason": reason})
            return ended, True

        ended, current = await self._db(work)
        if ended is not None:
            if reason != "officer_stopped":
                self._command(device_id, CommandType.LIVE_VIEW_STOP, {"reason": reason})
            self._announce("consent_ended", device_id, consent=ended, reason=reason)
        if current:
            self._announce("stream_ended", device_id, reason=reason, viewers=0)

    # WHEP: a viewer plays

    async def view(self, who: Principal, device_id: str, reason_raw: str | None, offer: str) -> Session:
        reason = clean_reason(reason_raw)

        def check(conn: psycopg.Connection, final: bool) -> tuple[Denied | None, dict[str, Any] | None, bool]:
            """(refusal, consent, still waiting for the camera's stream)."""
            denied = may_watch(who, _facts(conn, device_id))
            consent = None
            if denied is None and reason is None:
                denied = Denied("forbidden", "a reason is required to watch (header X-Viewing-Reason, 3 to 200 "
                                             "characters)")
            if denied is None:
                consent = viewings.active_consent(conn, device_id)
                if consent is None:
                    denied = Denied("conflict", f"{device_id} is not live (no consent in force)")
                elif consent["publisher_session"] is None:
                    if not final:
                        return None, None, True
                    denied = Denied("conflict", f"{device_id} has consent but its camera has not started streaming")
                elif not self.relay.is_publishing(device_id):
                    denied = Denied("conflict", f"{device_id} streams through another API process")
            if denied is not None:
                viewings.refuse_viewing(conn, device_id=device_id, viewer=who.username, role=who.role.value,
                                     reason=reason, refused=denied.message)
                audit.record(conn, actor=who.username, action="viewing_refused", device_id=device_id,
                             details={"reason": reason, "refused": denied.message})
            return denied, consent, False

        # A viewer who asks as soon as the camera accepted finds it still dialling in: wait a
        # little (only once the caller may watch) rather than refuse.
        deadline = time.monotonic() + _STREAM_WAIT_S
        denied, consent, waiting = await self._db(lambda conn: check(conn, False))
        while waiting and time.monotonic() < deadline:
            await asyncio.sleep(_STREAM_POLL_S)
            denied, consent, waiting = await self._db(lambda conn: check(conn, False))
        if waiting:
            denied, consent, _ = await self._db(lambda conn: check(conn, True))
        if denied is not None:
            _raise(denied)
        assert consent is not None and reason is not None
        slot = self._slots.take(username=who.username, device_id=device_id)
        if isinstance(slot, SlotRefused):
            await self._refuse_over_cap(who, device_id, reason, slot)
        try:
            session = await self.relay.view(device_id, offer)
        except NoSuchStream:
            self._slots.give_back(slot)
            await self._db(lambda conn: viewings.refuse_viewing(conn, device_id=device_id, viewer=who.username,
                                                             role=who.role.value, reason=reason,
                                                             refused="the stream ended"))
            raise Conflict(f"{device_id} is not live") from None
        except InvalidOffer as error:
            self._slots.give_back(slot)
            raise UnusableOffer(f"the SDP offer cannot start a session: {error}") from None
        except BaseException:  # cancelled (the client went away) or the relay is closing
            self._slots.give_back(slot)
            raise
        viewer = _Viewer(session.id, device_id, who.username, slot)
        self._viewers[session.id] = viewer

        def record(conn: psycopg.Connection) -> dict[str, Any]:
            row = viewings.start_viewing(conn, session_id=session.id, device_id=device_id, viewer=who.username,
                                      role=who.role.value, reason=reason, consent_id=consent["consent_id"])
            audit.record(conn, actor=who.username, action="viewing_started", device_id=device_id,
                         details={"session_id": session.id, "reason": reason, "consent_id": consent["consent_id"]})
            return row

        try:
            await self._db(record)
        finally:
            viewer.recorded.set()
        # A session being set up keeps the stream; it counts as a viewer (told to the camera and
        # the control room) once connected: the relay's viewer_joined event.
        if (handle := self._idle.pop(device_id, None)) is not None:
            handle.cancel()
        return session

    async def _refuse_over_cap(self, who: Principal, device_id: str, reason: str, refused: SlotRefused) -> NoReturn:
        """Record the refusal like any other, and raise: 409 for the caller's or the camera's
        cap (a session must end first), 429 for the process's (others' sessions end too;
        one that never connects is gone within the relay's set-up timeout, 30 s)."""
        def work(conn: psycopg.Connection) -> None:
            viewings.refuse_viewing(conn, device_id=device_id, viewer=who.username, role=who.role.value,
                                    reason=reason, refused=refused.message)
            audit.record(conn, actor=who.username, action="viewing_refused", device_id=device_id,
                         details={"reason": reason, "refused": refused.message})

        await self._db(work)
        if refused.kind == "process":
            raise TooManyRequests(refused.message, retry_after_s=30)
        raise Conflict(refused.message)

    async def unview(self, who: Principal, device_id: str, session_id: str) -> None:
        viewer = self._viewers.get(session_id)
        if viewer is None or viewer.device_id != device_id or viewer.username != who.username:
            raise NotFound("no such WHEP session of yours")
        await self.relay.close(session_id, reason="viewer_left")
        await self._viewer_gone(session_id, "viewer_left")

    def _viewer_joined(self, device_id: str, username: str) -> None:
        """A viewer's peer connection is connected: now it watches."""
        if (handle := self._idle.pop(device_id, None)) is not None:
            handle.cancel()
        count = self._tell_camera_viewers(device_id)
        self._announce("viewer_joined", device_id, viewer=username, viewers=count)

    async def _viewer_gone(self, session_id: str, reason: str) -> None:
        viewer = self._viewers.pop(session_id, None)
        if viewer is None:
            return  # handled already
        self._slots.give_back(viewer.slot)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(viewer.recorded.wait(), _RECORDED_WAIT_S)

        def work(conn: psycopg.Connection) -> None:
            row = viewings.end_viewing(conn, session_id=session_id, reason=reason)
            if row is not None:
                seconds = (row["ended_at"] - row["started_at"]).total_seconds()
                audit.record(conn, actor=viewer.username, action="viewing_ended", device_id=viewer.device_id,
                             details={"session_id": session_id, "reason": reason, "duration_s": round(seconds, 1)})

        await self._db(work)
        device_id = viewer.device_id
        count = self._tell_camera_viewers(device_id) if device_id in self._publishers else 0
        self._announce("viewer_left", device_id, viewer=viewer.username, viewers=count, reason=reason)
        if count == 0 and device_id in self._publishers:
            self._arm_idle(device_id)

    # the relay's events (a viewer connected; a session that ended on its own: failed, closed,
    # timed out)

    def _on_relay_event(self, event: RelayEvent) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._spawn, self._relay_event(event))

    async def _relay_event(self, event: RelayEvent) -> None:
        try:
            if event.kind == "viewer_ended":
                await self._viewer_gone(event.session_id, _VIEWER_END.get(event.reason, event.reason or "closed"))
            elif event.kind == "publisher_ended":
                await self._publisher_gone(event.stream_id, event.session_id, event.reason or "closed")
            elif event.kind == "viewer_joined" and (viewer := self._viewers.get(event.session_id)) is not None:
                self._viewer_joined(viewer.device_id, viewer.username)
        except Exception:
            log.exception("live view: handling %s failed", event.kind)

    # no viewer attached for a while: the stream stops

    def _arm_idle(self, device_id: str) -> None:
        if (handle := self._idle.pop(device_id, None)) is not None:
            handle.cancel()
        loop = asyncio.get_running_loop()
        self._idle[device_id] = loop.call_later(self._settings.live_view_idle_stop_s,
                                                lambda: self._spawn(self._idle_stop(device_id)))

    async def _idle_stop(self, device_id: str) -> None:
        self._idle.pop(device_id, None)
        if device_id not in self._publishers or self.relay.viewer_count(device_id) > 0:
            return
        await self._close_publisher(device_id, "no_viewers")
