"""Live view in one API process: consent, the relay's sessions, and what everyone is told.

:class:`LiveView` is owned by the app's lifespan. It owns

* the relay (:class:`streaming.Relay`): cameras publish to it over WHIP, viewers play from
  it over WHEP, and its events (a viewer joined or left, a camera vanished) come back here;
* a broker connection of its own (:class:`services.live_view.broker.LiveViewBroker`): it
  sends commands to cameras (``live_view_request``, ``live_view_stop``, ``live_view_status``
  with who watches and why, so a camera always shows its officer who is watching), reads their replies and the
  events that carry consent (``watch_me``) or end it (``recording_stopped``, ``docked``), and
  publishes every live-view change on :data:`LIVE_VIEW_TOPIC`, which every API process (this
  one too) pushes to its websocket clients and acts on (a consent ended elsewhere closes the
  stream here);
* the idle timers (no viewer attached for ``live_view_idle_stop_s``: the stream stops) and a
  sweeper that expires unanswered requests and consents that never became a stream,
  reconciles the streams here against the consents in the database (a consent ended by
  another process whose announcement was lost, or by the registry: the stream closes), and
  holds every viewer to their authorisation for the whole viewing (token, role, areas, and
  the maximum length).

This class is the adapter: the decisions are pure functions in
:mod:`services.live_view.workflow`, :mod:`services.live_view.viewers` (and
:mod:`services.consent`) that return effects as data, which :meth:`LiveView._apply`
performs; the transactions are in :mod:`services.live_view.records`.

State lives in PostgreSQL (:mod:`services.viewings`), so any process answers questions
about requests, consent and viewers. Media does not: a camera's WHIP session and its
viewers' WHEP sessions must reach the same process (route ``/api/v1/whip/{id}`` and
``/api/v1/whep/{id}`` by device id at the load balancer), as with any SFU.

Over 400 lines on purpose: it is one adapter around one set of in-process state (the streams,
viewers, slots and idle timers of this process), which WHIP, WHEP, the relay's events and the
broker's messages all change; split further, each part would reach into the others' state.
Everything that can be pure or stand alone is elsewhere in this package.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn, Protocol, TypeVar

import anyio.to_thread
import orjson
import psycopg
from psycopg_pool import ConnectionPool
from pydantic import ValidationError

from core.commands import CommandReply, CommandType
from core.contract import Channel, Event
from core.settings import Settings
from services import viewings
from services.accounts import Principal, Role
from services.consent import VIEWING_ROLES, clean_reason
from services.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotAuthenticated,
    NotFound,
    TooManyRequests,
    UnusableOffer,
)
from services.live_view import records
from services.live_view.broker import LIVE_VIEW_TOPIC, LiveViewBroker
from services.live_view.effects import Announce, ArmIdle, CancelIdle, CloseStream, Effect, SendCommand
from services.live_view.viewers import (
    ViewCheck,
    Watcher,
    WearerView,
    after_viewer_joined,
    after_viewer_left,
    on_idle_timeout,
    viewer_end_reason,
    viewing_end_for_stream,
    viewing_over,
)
from services.live_view.workflow import (
    IgnoreEvent,
    after_change,
    after_consent_ended,
    after_consent_started,
    after_publisher_gone,
    after_reconcile,
    after_request_answered,
    after_stream_started,
    after_sweep,
    reply_answer,
)
from services.registry import verify_device_secret
from services.sessions import TokenVersions
from services.viewer_slots import SlotRefused, ViewerCaps, ViewerSlots
from streaming import IceServerConfig, InvalidOffer, NoSuchStream, OfferLimits, Relay, RelayEvent, Session

__all__ = ["LiveView", "Notifier", "ice_servers"]

log = logging.getLogger(__name__)

_SWEEP_S = 2.0
_RECORDED_WAIT_S = 10.0
# A WHEP request waits this long for an accepted camera to dial in (WHIP, ICE, DTLS): seconds
# on a quiet network, but more than 10 on a loaded API process, where a shorter wait refused
# viewers with 409 "not live" for a stream that came up moments later.
_STREAM_WAIT_S, _STREAM_POLL_S = 30.0, 0.25
_ANSWER_WAIT_S = 10.0  # a camera's WHIP waits this long for its answer to a pending request to be recorded
# Announcements that a request to a camera was answered (or will not be): they wake its WHIP.
_ANSWERS = frozenset({"accepted", "declined", "expired", "consent_started"})

T = TypeVar("T")


@dataclass
class _Viewer:
    session_id: str
    device_id: str
    username: str
    slot: int  # in LiveView._slots, given back when the session ends
    role: str
    display_name: str | None
    reason: str
    who: Principal  # held to its authorisation at every sweep
    recorded: asyncio.Event = field(default_factory=asyncio.Event)  # its record is committed
    joined_at: datetime | None = None  # connected (it counts, and the wearer sees it) since
    started: float = field(default_factory=time.monotonic)  # for the maximum length


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


class LiveView:
    """Live view for one API process (see the module's docstring); ``start`` and ``aclose``
    belong to the app's lifespan, the rest to the routes."""

    def __init__(self, *, settings: Settings, pool: ConnectionPool, hub: Notifier, sessions: TokenVersions,
                 mqtt_url: str, client_id: str) -> None:
        self._settings = settings
        self._sessions = sessions
        self._pool = pool
        self._hub = hub
        self._broker = LiveViewBroker(mqtt_url=mqtt_url, client_id=client_id,
                                      command_expires_s=settings.live_view_request_timeout_s,
                                      inbox_max=settings.live_view_inbox_max,
                                      per_device_per_s=settings.live_view_intake_per_device_per_s,
                                      per_device_burst=settings.live_view_intake_per_device_burst)
        self._relay: Relay | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # short ones: a relay event, an idle stop
        self._loops: list[asyncio.Task[None]] = []  # the dispatcher and the sweeper
        self._publishers: dict[str, str] = {}  # device id -> its WHIP session here
        self._consent_of: dict[str, int] = {}  # WHIP session here -> the consent it streams under
        self._wake = asyncio.Event()  # the registry changed: sweep now
        self._viewers: dict[str, _Viewer] = {}  # WHEP session id -> who
        self._closing: dict[str, str] = {}  # session id -> why this process closed it
        # viewer session id -> (how its viewing ended, why its stream ended), set when the stream
        # ends: the relay's own viewer_ended events for them may be handled first.
        self._stream_gone: dict[str, tuple[str, str | None]] = {}
        self._idle: dict[str, asyncio.TimerHandle] = {}
        self._slots = ViewerSlots(ViewerCaps(per_user=settings.live_view_max_sessions_per_user,
                                             per_camera=settings.live_view_max_viewers_per_camera,
                                             per_process=settings.live_view_max_viewers))
        self.idle_held = 0  # idle timeouts that kept a stream for its officer's open watch_me alert
        self.events_ignored: Counter[str] = Counter()  # watch_me events that granted nothing, by why
        # device id -> the WHIP POSTs waiting for the answer to a pending request (woken by its announcement)
        self._answer_waiters: dict[str, set[asyncio.Event]] = {}
        self.whip_waiting = 0  # WHIP POSTs waiting for an answer now

    @property
    def inbox_dropped(self) -> int:
        """Broker messages dropped because the inbox was full (see :mod:`.broker`)."""
        return self._broker.dropped

    @property
    def intake_over_rate(self) -> int:
        """Cameras' messages dropped over their own rate, before the inbox (see :mod:`.broker`)."""
        return self._broker.over_rate

    # lifecycle (owned by the app's lifespan)

    @property
    def relay(self) -> Relay:
        assert self._relay is not None, "LiveView.start() first"
        return self._relay

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        limits = OfferLimits(allow_private_candidates=self._settings.relay_allow_private_candidates)
        self._relay = Relay(ice_servers=ice_servers(self._settings), on_event=self._on_relay_event,
                            offer_limits=limits)
        self._broker.start()
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._dispatch_forever()), loop.create_task(self._sweep_forever())]

    async def aclose(self) -> None:
        """End every session of this process with its records, then stop."""
        self._cancel_all_idle()
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
        self._cancel_all_idle()
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
        self._broker.close()

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

    async def _apply(self, effects: Iterable[Effect]) -> None:
        """Perform the workflow's effects, in order."""
        for effect in effects:
            if isinstance(effect, SendCommand):
                self._broker.send(effect)
            elif isinstance(effect, Announce):
                self._broker.announce(effect)
            elif isinstance(effect, CloseStream):
                await self._close_publisher(effect.device_id, effect.reason)
            elif isinstance(effect, ArmIdle):
                self._arm_idle(effect.device_id)
            elif isinstance(effect, CancelIdle):
                if (handle := self._idle.pop(effect.device_id, None)) is not None:
                    handle.cancel()

    # the broker's messages, on the event loop

    async def _dispatch_forever(self) -> None:
        inbox = self._broker.inbox
        while True:
            topic, payload = await inbox.get()
            try:
                if topic == LIVE_VIEW_TOPIC:
                    await self._on_change(payload)
                elif topic.endswith("/" + Channel.COMMAND_REPLIES.value):
                    await self._on_reply(topic.split("/")[-2], payload)
                else:
                    await self._on_event(topic.split("/")[-2], payload)
            except Exception:  # one bad message must not stop live view
                log.exception("live view: handling a message on %s failed", topic)

    def registry_changed(self) -> None:
        """A registry change was announced (a device retired or given a new secret ended its
        consent, services/registry.py): reconcile now rather than at the next sweep."""
        self._wake.set()

    async def _sweep_forever(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _SWEEP_S)
            self._wake.clear()
            try:
                await self._sweep()
            except Exception as error:  # the database may be away; try again next time
                log.warning("live view sweep failed: %s", error)

    async def _sweep(self) -> None:
        now = datetime.now(timezone.utc)
        idle = timedelta(seconds=self._settings.live_view_idle_stop_s)
        expired, stale = await self._db(lambda conn: records.sweep(conn, now=now, idle=idle))
        await self._apply(after_sweep(expired, stale))
        await self._reconcile()
        await self._hold_viewers()

    async def _reconcile(self) -> None:
        """Close the streams here whose consent has ended in the database, whatever was lost
        on the way (:func:`after_reconcile`): one query per sweep."""
        under = {self._consent_of[s]: d for d, s in self._publishers.items() if s in self._consent_of}
        if not under:
            return
        ended = await self._db(lambda conn: records.ended_consents(conn, list(under)))
        # Still the stream of that consent (the camera may have dialled in again meanwhile).
        ended = [row for row in ended
                 if self._consent_of.get(self._publishers.get(row["device_id"], "")) == row["consent_id"]]
        await self._apply(after_reconcile(ended))

    async def _hold_viewers(self) -> None:
        """End each viewing whose authorisation ended, or that reached the maximum length
        (:func:`viewing_over`). Tokens are checked in memory (TokenVersions, re-loaded on
        every account announcement); the units are read once per unit watched, not per viewer."""
        watching = [v for v in self._viewers.values() if v.recorded.is_set()]
        if not watching:
            return
        units = await self._db(lambda conn: records.units(conn, {v.device_id for v in watching}))
        # Blocking only when the cache is behind a token (a user changed since the last load).
        tokens = await anyio.to_thread.run_sync(lambda: [self._sessions.ended(v.who) for v in watching])
        now = time.monotonic()
        for viewer, token_ended in zip(watching, tokens, strict=True):
            reason = viewing_over(viewer.who, units.get(viewer.device_id), token_ended=token_ended,
                                  watched_s=now - viewer.started, max_s=self._settings.live_view_max_viewing_s)
            if reason is not None and viewer.session_id in self._viewers:
                log.info("live view: %s's viewing of %s ends: %s", viewer.username, viewer.device_id, reason)
                await self.relay.close(viewer.session_id, reason=reason)
                await self._viewer_gone(viewer.session_id, reason)

    async def _on_change(self, payload: bytes) -> None:
        """A live-view change from any API process: push it to this process's clients who
        may watch the unit; a consent that ended elsewhere closes the stream here."""
        change = orjson.loads(payload)
        device_id = str(change.get("device_id"))
        self._hub.push(payload.decode(), device_id=device_id, roles=VIEWING_ROLES)
        if change.get("event") in _ANSWERS:
            for answered in self._answer_waiters.get(device_id, ()):
                answered.set()
        await self._apply(after_change(change, publishing_here=device_id in self._publishers))

    # the camera's side of consent

    async def _on_reply(self, device_id: str, payload: bytes) -> None:
        try:
            reply = CommandReply.model_validate_json(payload)
        except ValidationError:
            log.info("live view: a malformed command reply from %s", device_id)
            return
        answer = reply_answer(reply.status, reply.detail)
        if answer is None:
            return
        row, consent = await self._db(lambda conn: records.answer_request(
            conn, device_id=device_id, request_id=reply.id, answer=answer))
        await self._apply(after_request_answered(device_id, row, consent))

    async def _on_event(self, device_id: str, payload: bytes) -> None:
        try:
            event = Event.model_validate_json(payload)
        except ValidationError:
            return  # ingest counts bad input
        kind = event.type.value
        now, max_age = datetime.now(timezone.utc), self._settings.live_view_event_max_age_s
        outcome = await self._db(lambda conn: records.camera_event(conn, device_id=device_id, kind=kind, ts=event.ts,
                                                                   seq=event.seq, now=now, max_age_s=max_age))
        if isinstance(outcome, IgnoreEvent):
            self.events_ignored[outcome.reason] += 1
            log.info("live view: %s's %s (ts %s, seq %d) grants no consent: %s", device_id, kind,
                     event.ts.isoformat(), event.seq, outcome.reason)
            return
        if outcome is None:
            return
        change, consent = outcome
        if change == "consent_ended":
            await self._apply(after_consent_ended(device_id, consent, consent["end_reason"]))
        else:
            await self._apply(after_consent_started(device_id, consent))

    # the control room's request

    async def request(self, who: Principal, device_id: str, reason_raw: str,
                      incident_id: int | None = None) -> dict[str, Any]:
        """Ask the camera (or grant at once, by policy); returns the request as recorded.
        ``incident_id``: the incident the request is made for (see :func:`records.request`)."""
        reason = clean_reason(reason_raw)
        if reason is None:
            raise InvalidRequest("reason: 3 to 200 printable characters are required")
        request_id = f"lv-{uuid.uuid4().hex[:20]}"
        expires = datetime.now(timezone.utc) + timedelta(seconds=self._settings.live_view_request_timeout_s)
        settings = self._settings
        done = await self._db(lambda conn: records.request(
            conn, who=who, device_id=device_id, request_id=request_id, reason=reason, expires=expires,
            policy_firearms_recording=settings.live_view_policy_firearms_recording,
            policy_max_reading_age_s=settings.live_view_policy_max_reading_age_s,
            covers_same_requester=settings.live_view_consent_covers_same_requester,
            covers_same_incident=settings.live_view_consent_covers_same_incident, incident_id=incident_id))
        if done.denied is not None:
            raise done.denied.error()
        row, policy = done.row, done.policy
        assert row is not None
        effects: list[Effect] = []
        if row["status"] == "pending" or policy is not None:
            # The camera is asked; under policy it is told (it must show its officer it is live).
            effects.append(SendCommand(device_id, CommandType.LIVE_VIEW_REQUEST,
                                       {"requested_by": who.username, "reason": reason,
                                        "basis": policy.value if policy is not None else "ask"},
                                       command_id=request_id))
        effects.append(Announce("requested" if row["status"] == "pending" else "accepted", device_id,
                                {"request": row, "consent": done.consent}))
        await self._apply(effects)
        return row

    async def stop(self, who: Principal, device_id: str) -> dict[str, Any]:
        """The control room ends the consent in force (and so the stream)."""
        denied, ended = await self._db(lambda conn: records.stop(conn, who=who, device_id=device_id))
        if denied is not None:
            raise denied.error()
        assert ended is not None
        await self._apply(after_consent_ended(device_id, ended, "stopped_by_control_room"))
        return ended

    # WHIP: the camera publishes

    async def publish(self, device_id: str, secret: str, offer: str) -> Session:
        consent = await self._consent_for_whip(device_id, secret)
        if consent is None:
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
        updated = await self._db(lambda conn: records.take_over_stream(
            conn, consent=consent, device_id=device_id, session_id=session.id, moved=moved, keep=local))
        if updated is None:  # the consent ended while the session was being set up
            await self._close_publisher(device_id, "consent_ended")
            raise Forbidden(f"the consent for {device_id} ended")
        self._consent_of[session.id] = updated["consent_id"]
        await self._apply(after_stream_started(device_id, updated))
        return session

    async def _consent_for_whip(self, device_id: str, secret: str) -> dict[str, Any] | None:
        """The consent a camera's WHIP POST publishes under (None: none in force).

        A camera that accepts a request dials in as it replies, and its reply reaches the
        database through the broker and an API process: its WHIP may come first. While a
        request to it is pending, the POST waits (at most ``_ANSWER_WAIT_S``) for the answer to
        be recorded (any process's announcement of it wakes the wait), so the camera is not
        refused a consent its officer has just given. Only after its secret is checked: nobody
        else can make a request wait.
        """
        deadline = time.monotonic() + _ANSWER_WAIT_S
        while True:
            # Registered before the read, so an answer recorded just after it is not missed.
            answered = asyncio.Event()
            waiters = self._answer_waiters.setdefault(device_id, set())
            waiters.add(answered)
            try:
                verified, consent, pending = await self._db(lambda conn: (
                    verify_device_secret(conn, device_id=device_id, secret=secret),
                    viewings.active_consent(conn, device_id), viewings.pending_request(conn, device_id)))
                if not verified:
                    raise NotAuthenticated("not this device's secret")
                left = deadline - time.monotonic()
                if consent is not None or not pending or left <= 0:
                    return consent
                self.whip_waiting += 1
                try:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(answered.wait(), left)
                finally:
                    self.whip_waiting -= 1
            finally:
                waiters.discard(answered)
                if not waiters:
                    self._answer_waiters.pop(device_id, None)

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
        self._consent_of.pop(session_id, None)
        await self._apply([CancelIdle(device_id)])
        reason = self._closing.pop(session_id, None) or "camera_lost"
        watching = [v for v in self._viewers.values() if v.device_id == device_id]
        for viewer in watching:
            self._stream_gone[viewer.session_id] = (viewing_end_for_stream(reason), reason)
        for viewer in watching:
            with contextlib.suppress(Exception):
                await self.relay.close(viewer.session_id, reason="stream_ended")
            await self._viewer_gone(viewer.session_id, "stream_ended")
        ended, current = await self._db(lambda conn: records.end_publisher_consent(
            conn, device_id=device_id, session_id=session_id, reason=reason))
        await self._apply(after_publisher_gone(device_id, reason, ended=ended, current=current))

    # WHEP: a viewer plays

    async def view(self, who: Principal, device_id: str, reason_raw: str | None, offer: str) -> Session:
        reason = clean_reason(reason_raw)

        def check(conn: psycopg.Connection, final: bool) -> tuple[ViewCheck, dict[str, Any] | None]:
            return records.check_viewer(conn, who=who, device_id=device_id, reason=reason, final=final,
                                        publishing_here=self.relay.is_publishing(device_id))

        # A viewer who asks as soon as the camera accepted finds it still dialling in: wait a
        # little (only once the caller may watch) rather than refuse.
        deadline = time.monotonic() + _STREAM_WAIT_S
        verdict, consent = await self._db(lambda conn: check(conn, False))
        while verdict.waiting and time.monotonic() < deadline:
            await asyncio.sleep(_STREAM_POLL_S)
            verdict, consent = await self._db(lambda conn: check(conn, False))
        if verdict.waiting:
            verdict, consent = await self._db(lambda conn: check(conn, True))
        denied = verdict.denied
        if denied is not None:
            raise denied.error()
        assert consent is not None and reason is not None
        slot = self._slots.take(username=who.username, device_id=device_id)
        if isinstance(slot, SlotRefused):
            await self._refuse_over_cap(who, device_id, reason, slot)
        try:
            session = await self.relay.view(device_id, offer)
        except NoSuchStream:
            self._slots.give_back(slot)
            await self._db(lambda conn: records.refuse_viewing(conn, who=who, device_id=device_id, reason=reason,
                                                               refused="the stream ended", audited=False))
            raise Conflict(f"{device_id} is not live") from None
        except InvalidOffer as error:
            self._slots.give_back(slot)
            raise UnusableOffer(f"the SDP offer cannot start a session: {error}") from None
        except BaseException:  # cancelled (the client went away) or the relay is closing
            self._slots.give_back(slot)
            raise
        viewer = _Viewer(session.id, device_id, who.username, slot, who.role.value, who.display_name, reason, who)
        self._viewers[session.id] = viewer
        try:
            await self._db(lambda conn: records.start_viewing(conn, who=who, device_id=device_id,
                                                              session_id=session.id, reason=reason,
                                                              consent_id=consent["consent_id"]))
        finally:
            viewer.recorded.set()
        # A session being set up keeps the stream; it counts as a viewer (told to the camera and
        # the control room) once connected: the relay's viewer_joined event.
        await self._apply([CancelIdle(device_id)])
        return session

    async def _refuse_over_cap(self, who: Principal, device_id: str, reason: str, refused: SlotRefused) -> NoReturn:
        """Record the refusal like any other, and raise: 409 for the caller's or the camera's
        cap (a session must end first), 429 for the process's (others' sessions end too;
        one that never connects is gone within the relay's set-up timeout, 30 s)."""
        await self._db(lambda conn: records.refuse_viewing(conn, who=who, device_id=device_id, reason=reason,
                                                           refused=refused.message))
        if refused.kind == "process":
            raise TooManyRequests(refused.message, retry_after_s=30)
        raise Conflict(refused.message)

    async def unview(self, who: Principal, device_id: str, session_id: str) -> None:
        viewer = self._viewers.get(session_id)
        if viewer is None or viewer.device_id != device_id or viewer.username != who.username:
            raise NotFound("no such WHEP session of yours")
        await self.relay.close(session_id, reason="viewer_stopped")
        await self._viewer_gone(session_id, "viewer_stopped")

    async def _wearer_view(self, device_id: str) -> WearerView:
        """Who watches the stream here (connected, in the order they joined) and why it is
        allowed: what the camera shows its officer."""
        basis, reason = await self._db(lambda conn: records.consent_summary(conn, device_id))
        watchers = sorted((Watcher(v.username, v.display_name, v.role, v.joined_at, v.reason)
                           for v in self._viewers.values() if v.device_id == device_id and v.joined_at is not None),
                          key=lambda w: w.since)
        return WearerView(watchers, basis, reason)

    async def _viewer_gone(self, session_id: str, reason: str) -> None:
        """``reason``: how the viewing ended, unless its stream ended first (then that says)."""
        reason, cause = self._stream_gone.pop(session_id, (reason, None))
        viewer = self._viewers.pop(session_id, None)
        if viewer is None:
            return  # handled already
        self._slots.give_back(viewer.slot)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(viewer.recorded.wait(), _RECORDED_WAIT_S)
        await self._db(lambda conn: records.end_viewing(conn, session_id=session_id, username=viewer.username,
                                                        device_id=viewer.device_id, reason=reason,
                                                        cause=cause))
        device_id = viewer.device_id
        view = await self._wearer_view(device_id) if device_id in self._publishers else None
        await self._apply(after_viewer_left(device_id, viewer.username, reason, view=view,
                                            sees=self._settings.live_view_wearer_sees))

    # the relay's events (a viewer connected; a session that ended on its own: failed, closed,
    # timed out)

    def _on_relay_event(self, event: RelayEvent) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._spawn, self._relay_event(event))

    async def _relay_event(self, event: RelayEvent) -> None:
        try:
            if event.kind == "viewer_ended":
                await self._viewer_gone(event.session_id, viewer_end_reason(event.reason))
            elif event.kind == "publisher_ended":
                await self._publisher_gone(event.stream_id, event.session_id, event.reason or "closed")
            elif event.kind == "viewer_joined" and (viewer := self._viewers.get(event.session_id)) is not None:
                viewer.joined_at = datetime.now(timezone.utc)
                view = await self._wearer_view(viewer.device_id)
                await self._apply(after_viewer_joined(viewer.device_id, viewer.username, view,
                                                      sees=self._settings.live_view_wearer_sees))
        except Exception:
            log.exception("live view: handling %s failed", event.kind)

    # no viewer attached for a while: the stream stops

    def _arm_idle(self, device_id: str) -> None:
        if (handle := self._idle.pop(device_id, None)) is not None:
            handle.cancel()
        loop = asyncio.get_running_loop()
        self._idle[device_id] = loop.call_later(self._settings.live_view_idle_stop_s,
                                                lambda: self._spawn(self._idle_stop(device_id)))

    def _cancel_all_idle(self) -> None:
        for handle in self._idle.values():
            handle.cancel()
        self._idle.clear()

    async def _idle_stop(self, device_id: str) -> None:
        self._idle.pop(device_id, None)
        publishing = device_id in self._publishers
        viewers = self.relay.viewer_count(device_id) if publishing else 0
        basis, watch_me_open = (await self._db(lambda conn: records.idle_facts(conn, device_id))
                                if publishing and viewers == 0 else (None, False))
        effects = on_idle_timeout(device_id, publishing=publishing, viewers=viewers, basis=basis,
                                  watch_me_open=watch_me_open)
        if any(isinstance(e, ArmIdle) for e in effects):
            self.idle_held += 1  # kept for its officer's open watch_me alert
        await self._apply(effects)
