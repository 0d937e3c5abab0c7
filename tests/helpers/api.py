"""Running the API for tests: a real uvicorn server on a spare port, in this process."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import uvicorn
import websockets
from fastapi import FastAPI

from api.app import WS_DEFLATE, WS_IMPL, create_app
from api.live.snapshot import read_message
from core.settings import Settings
from services.accounts import Role, add_user
from telemetry.embedded import free_port
from telemetry.ingest import IngestWorker
from tests.helpers.db import MACHINE_PG, Database, _with_database, require_machine_pg
from tests.helpers.environment import require_executable
from tests.helpers.telemetry import publish_all
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess


@dataclass
class ApiWithIngest:
    """An API server (``base``) and an in-process ingest worker on one broker and database."""

    base: str
    mqtt_url: str
    db: Database
    worker: IngestWorker

    def publish(self, messages: list[tuple[str, bytes]]) -> None:
        """Publish ``messages`` and wait until ingest has received them all."""
        before = self.worker.stats.received
        publish_all(self.mqtt_url, messages)
        wait_for(lambda: self.worker.stats.received >= before + len(messages), what="ingest")


SECRET = "test-secret-" + "x" * 40
#: What a `watchfloor api` process needs besides SECRET: it keys the audit chain (services/audit.py).
API_PROCESS_ENV = {"WATCHFLOOR_AUTH_SECRET": SECRET, "WATCHFLOOR_AUDIT_KEY": "test-audit-key-" + "k" * 40}
PASSWORD = "correct horse battery staple"

USERS: dict[str, tuple[Role, list[str]]] = {
    "op-all": (Role.OPERATOR, ["*"]),
    "op-west": (Role.OPERATOR, ["Westminster"]),
    "afo-cmd": (Role.FIREARMS_COMMANDER, ["*"]),
    "fleet": (Role.FLEET_MANAGER, ["*"]),
    "audit": (Role.AUDITOR, ["*"]),
    "admin": (Role.ADMIN, ["*"]),
}


def add_test_users(conn: Any) -> None:
    for name, (role, areas) in USERS.items():
        add_user(conn, username=name, password=PASSWORD, role=role, areas=areas)


@dataclass
class ApiServer:
    base: str
    app: FastAPI


@contextmanager
def running_api(*, database_url: str, mqtt_url: str, settings: Settings,
                audit_key: bytes | None = None) -> Iterator[ApiServer]:
    """An API server on 127.0.0.1 (uvicorn, in a thread of this process); with ``audit_key``, it
    writes a keyed audit chain (tests that append entries from plain connections leave it out)."""
    port = free_port()
    app = create_app(settings=settings, database_url=database_url, mqtt_url=mqtt_url, signing_secret=SECRET,
                     audit_key=audit_key)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", ws=WS_IMPL,
                                           ws_per_message_deflate=WS_DEFLATE, proxy_headers=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "API did not start"
        time.sleep(0.05)
    try:
        yield ApiServer(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(20)


@contextmanager
def api_on_machine(tmp_path_factory: pytest.TempPathFactory, *, settings: Settings,
                   seed: Callable[[psycopg.Connection], None]) -> Iterator[tuple[Database, ApiServer]]:
    """A module's shared API: a database of its own on the machine's PostgreSQL (plain path)
    with the test users and what ``seed`` adds, a Mosquitto from the shipped configuration,
    and an API server on both. Skips where the machine has neither."""
    require_machine_pg()
    require_executable("mosquitto")
    broker = MosquittoProcess(tmp_path_factory.mktemp("mosquitto")).start()
    try:
        for db in _with_database(MACHINE_PG, "plain"):
            with db.connect() as conn:
                add_test_users(conn)
                seed(conn)
            with running_api(database_url=db.url, mqtt_url=broker.url, settings=settings) as server:
                yield db, server
    finally:
        broker.stop()


def token(base: str, username: str) -> str:
    response = httpx.post(f"{base}/api/v1/auth/token", json={"username": username, "password": PASSWORD})
    response.raise_for_status()
    return str(response.json()["access_token"])


def client(base: str, username: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token(base, username)}"}, timeout=10)


class LiveReader:
    """A websocket client of /api/v1/live on a thread of its own, collecting frames."""

    def __init__(self, base: str, bearer: str | None) -> None:
        self.url = base.replace("http://", "ws://") + "/api/v1/live"
        self.bearer = bearer
        self.frames: list[dict[str, Any]] = []  # as a client reads them (api.live.snapshot.read_message)
        self.received_at: list[float] = []
        self.closed: tuple[int, str] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        try:
            async with websockets.connect(self.url, max_size=64 * 1024 * 1024, max_queue=None,
                                          open_timeout=10) as ws:
                if self.bearer is not None:
                    await ws.send(orjson.dumps({"type": "auth", "token": self.bearer}).decode())
                while not self._stop.is_set():
                    try:
                        raw = await asyncio.wait_for(ws.recv(), 0.2)
                    except asyncio.TimeoutError:
                        continue
                    with self._lock:
                        self.frames.append(read_message(raw))
                        self.received_at.append(time.time())
        except websockets.ConnectionClosed as closed:
            self.closed = (closed.rcvd.code if closed.rcvd else 1006, closed.rcvd.reason if closed.rcvd else "")

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [f for f in self.frames if f["type"] == kind]

    def latest_unit(self, device_id: str) -> dict[str, Any] | None:
        """The unit as a client holds it: its snapshot entry with every delta merged in (a
        delta carries only the fields that changed), None once a delta removed it; a new
        snapshot starts again."""
        return self.units().get(device_id)

    def units(self) -> dict[str, dict[str, Any]]:
        """Every unit as the client holds it (``latest_unit`` of each), in one pass."""
        held: dict[str, dict[str, Any]] = {}
        with self._lock:
            for frame in self.frames:
                if frame["type"] == "snapshot":
                    held = {}
                for device_id in frame.get("removed", []):
                    held.pop(device_id, None)
                for u in frame.get("units", []):
                    held[u["device_id"]] = {**held.get(u["device_id"], {}), **u}
        return held

    def unit_frames(self) -> list[dict[str, Any]]:
        """The snapshots and deltas received so far, in order (a copy)."""
        with self._lock:
            return [f for f in self.frames if f["type"] in ("snapshot", "delta")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


class StalledClient:
    """A websocket client that authenticates and then never reads: a raw socket with a tiny
    receive window, so the server's sends to it stall within kilobytes."""

    def __init__(self, base: str, bearer: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8_192)  # before connect: fixes the window
        self.sock.connect((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /api/v1/live HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(1)
        assert b" 101 " in response.split(b"\r\n")[0], response
        payload = orjson.dumps({"type": "auth", "token": bearer})
        mask = os.urandom(4)
        header = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") if len(payload) > 125 else \
            bytes([0x81, 0x80 | len(payload)])
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def close(self) -> None:
        self.sock.close()
