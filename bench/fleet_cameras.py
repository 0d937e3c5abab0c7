"""Many cameras in one cheap process, for bench/broker_fleet.py: each its own TLS connection and
dynamic-security login (username and client id = its device id), over asyncio with the
hand-built packets of bench/mqtt_packets.py.

    python bench/fleet_cameras.py PORT CA_FILE FIRST COUNT SEED [--keepalive 30] [--concurrency 200]

Cameras ``cam-FIRST`` … connect as a camera does (docs/mqtt-contract.md): clean session, a Last
Will of ``offline`` (QoS 1, retained) on its status topic, then ``online`` (retained); they
send a PINGREQ when they have sent nothing for the keep-alive, as paho does. The process reads
one command a line on stdin and answers each with one JSON line on stdout:

* ``connect``: every camera at once, at most ``--concurrency`` handshakes in flight;
* ``idle SECONDS``: only keep-alives for that long;
* ``publish RATE SECONDS``: telemetry at QoS 1, RATE a second in all, round robin;
* ``quit``: DISCONNECT all and exit.

Every wait is bounded; the answers say what was offered, sent and acknowledged, so the caller
can see this process falling behind its schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import ssl
import sys
import time
from pathlib import Path

from loadgen import telemetry_payload, utc_now
from mqtt_packets import CONNACK, DISCONNECT, PINGREQ, PINGRESP, PUBACK, connect_packet, publish_packet, split_packets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.contract import Channel, topic_for  # noqa: E402

#: How long one camera may take from TCP connect to CONNACK, and all of them to be acknowledged.
CONNECT_TIMEOUT_S = 60.0
ACK_TIMEOUT_S = 30.0
TICK_S = 0.01


def device_id(index: int) -> str:
    return f"cam-{index:05d}"


def secret_for(seed: str, device: str) -> str:
    """Each camera's own secret, derived so that the broker's file and the generators agree
    without passing 22,000 secrets around."""
    return hmac.new(seed.encode(), device.encode(), hashlib.sha256).hexdigest()


class Camera(asyncio.Protocol):
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending = b""
        self.last_sent = 0.0
        self.packet_id = 0
        self.seq = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        packets, self.pending = split_packets(self.pending + data)
        for kind, body in packets:
            if kind == PUBACK:
                self.fleet.acked += 1
            elif kind == PINGRESP:
                self.fleet.pongs += 1
            elif kind == CONNACK and not self.connack.done():
                self.connack.set_result(body[1])

    def connection_lost(self, exc: Exception | None) -> None:
        if self.connack.done():
            self.fleet.lost += 1
        else:
            self.connack.set_exception(ConnectionError("closed before CONNACK"))

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        self.last_sent = time.monotonic()

    def publish(self, topic: bytes, payload: bytes, *, retain: bool = False) -> None:
        self.packet_id = self.packet_id % 65535 + 1
        self.send(publish_packet(topic, payload, self.packet_id, retain=retain))


class Fleet:
    def __init__(self, port: int, ca: str, first: int, count: int, seed: str, keepalive: int,
                 concurrency: int) -> None:
        self.port, self.first, self.count, self.seed = port, first, count, seed
        self.keepalive, self.concurrency = keepalive, concurrency
        self.tls = ssl.create_default_context(cafile=ca)
        self.cameras: list[tuple[Camera, bytes]] = []  # (connection, its telemetry topic)
        self.acked = self.pongs = self.lost = self.pings = 0
        self.failed: dict[str, int] = {}

    async def _connect_one(self, index: int, gate: asyncio.Semaphore) -> None:
        device = device_id(index)
        loop = asyncio.get_running_loop()
        async with gate:
            try:
                _, camera = await asyncio.wait_for(
                    loop.create_connection(lambda: Camera(self), "127.0.0.1", self.port, ssl=self.tls,
                                           server_hostname="127.0.0.1"), CONNECT_TIMEOUT_S)
                status = topic_for(device, Channel.STATUS)
                camera.send(connect_packet(device, keepalive=self.keepalive, username=device,
                                           password=secret_for(self.seed, device), will=(status, b"offline")))
                code = await asyncio.wait_for(camera.connack, CONNECT_TIMEOUT_S)
            except (OSError, ssl.SSLError, ConnectionError, asyncio.TimeoutError) as error:
                self.failed[type(error).__name__] = self.failed.get(type(error).__name__, 0) + 1
                return
        if code:
            self.failed[f"CONNACK {code}"] = self.failed.get(f"CONNACK {code}", 0) + 1
            assert camera.transport is not None
            camera.transport.close()
            return
        camera.publish(status.encode(), b"online", retain=True)
        self.cameras.append((camera, topic_for(device, Channel.TELEMETRY).encode()))

    async def connect(self) -> dict[str, object]:
        gate = asyncio.Semaphore(self.concurrency)
        started = time.monotonic()
        await asyncio.gather(*(self._connect_one(i, gate) for i in range(self.first, self.first + self.count)))
        finished = time.monotonic()
        acked = await self._acks_reach(len(self.cameras))
        return {"event": "connected", "connected": len(self.cameras), "failed": self.failed,
                "started": started, "finished": finished, "online_acked": acked}

    async def _acks_reach(self, target: int) -> int:
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while self.acked < target and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.acked

    async def keep_alive(self) -> None:
        """PINGREQ from each camera that has sent nothing for the keep-alive (paho's rule)."""
        while True:
            await asyncio.sleep(0.5)
            stale = time.monotonic() - self.keepalive
            for camera, _ in self.cameras:
                if camera.last_sent < stale and camera.transport is not None and not camera.transport.is_closing():
                    camera.send(PINGREQ)
                    self.pings += 1

    async def idle(self, seconds: float) -> dict[str, object]:
        pings, pongs, lost = self.pings, self.pongs, self.lost
        await asyncio.sleep(seconds)
        return {"event": "idle", "pings": self.pings - pings, "pongs": self.pongs - pongs, "lost": self.lost - lost}

    async def publish(self, rate: float, seconds: float) -> dict[str, object]:
        acked0, lost0 = self.acked, self.lost
        sent, behind = 0, 0.0
        n = len(self.cameras)
        started = time.monotonic()
        while n:
            elapsed = time.monotonic() - started
            if elapsed >= seconds:
                break
            due = int(rate * min(elapsed + TICK_S, seconds)) - sent
            # How far behind its schedule this process was: what it owed past the current tick.
            behind = max(behind, max(0, int(rate * elapsed) - sent) / rate)
            if due > 0:
                now = utc_now()
                for _ in range(due):
                    camera, topic = self.cameras[sent % n]
                    camera.seq += 1
                    camera.publish(topic, telemetry_payload(camera.seq, sent % n, now))
                    sent += 1
            await asyncio.sleep(max(0.0, started + elapsed + TICK_S - time.monotonic()))
        acked = await self._acks_reach(acked0 + sent) - acked0
        return {"event": "published", "offered": int(rate * seconds), "sent": sent, "acked": acked,
                "behind_s": round(behind, 3), "lost": self.lost - lost0}

    def quit(self) -> None:
        for camera, _ in self.cameras:
            if camera.transport is not None and not camera.transport.is_closing():
                camera.transport.write(DISCONNECT)
                camera.transport.close()


async def serve(fleet: Fleet) -> None:
    loop = asyncio.get_running_loop()
    pinger = asyncio.create_task(fleet.keep_alive())
    print(json.dumps({"event": "ready"}), flush=True)
    try:
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line or line[0] == "quit":
                return
            if line[0] == "connect":
                answer = await fleet.connect()
            elif line[0] == "idle":
                answer = await fleet.idle(float(line[1]))
            elif line[0] == "publish":
                answer = await fleet.publish(float(line[1]), float(line[2]))
            else:
                answer = {"event": "error", "unknown": line[0]}
            print(json.dumps(answer), flush=True)
    finally:
        pinger.cancel()
        fleet.quit()
        await asyncio.sleep(0.2)  # let the DISCONNECTs and TLS close notifies go out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int)
    parser.add_argument("ca")
    parser.add_argument("first", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("seed")
    parser.add_argument("--keepalive", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(serve(Fleet(args.port, args.ca, args.first, args.count, args.seed, args.keepalive,
                            args.concurrency)))


if __name__ == "__main__":
    main()
