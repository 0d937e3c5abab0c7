"""paho driven from an asyncio event loop (telemetry.mqtt.LoopDriver), against a real Mosquitto."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from telemetry.mqtt import BrokerAddress, BufferedClient, LoopDriver, new_client
from tests.support import publish_all
from watchfloor.mosquitto import MosquittoProcess

TOPIC = "watchfloor/test/loop"


class _Receiver:
    """A subscriber on a LoopDriver that records, on the loop, what it receives."""

    def __init__(self, url: str) -> None:
        address = BrokerAddress.parse(url)
        self.client: BufferedClient = new_client(address, client_id="loop-driver-test", protocol=paho.MQTTv311)
        self.client.on_connect = self._on_connect  # type: ignore[assignment]
        self.client.on_message = self._on_message  # type: ignore[assignment]
        self.driver = LoopDriver(self.client, host=address.host, port=address.port, keepalive_s=5, retry_s=0.2)
        self.received: list[bytes] = []
        self.threads: set[int] = set()
        self.connections = 0

    def _on_connect(self, client: paho.Client, u: object, f: object, reason: object, p: object) -> None:
        self.connections += 1
        client.subscribe([(TOPIC, 1), (f"{TOPIC}/echo", 1)])

    def _on_message(self, client: paho.Client, u: object, message: paho.MQTTMessage) -> None:
        self.threads.add(threading.get_ident())
        self.received.append(bytes(message.payload))


async def _until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def test_messages_are_read_on_the_loop_and_the_connection_survives_a_broker_restart(
        mosquitto: MosquittoProcess) -> None:
    """Every message arrives on the event loop's own thread (no paho thread); publishes made
    from another thread go out; when the broker restarts, the driver dials again by itself."""

    async def scenario() -> None:
        receiver = _Receiver(mosquitto.url)
        receiver.driver.start()
        try:
            await _until(lambda: receiver.connections == 1, timeout=10, what="the first connection")
            await asyncio.sleep(0.2)  # the SUBACK
            await asyncio.to_thread(publish_all, mosquitto.url, [(TOPIC, b"%d" % i) for i in range(500)])
            await _until(lambda: len(receiver.received) == 500, timeout=10, what="500 messages")
            assert receiver.threads == {threading.get_ident()}

            # A route in the thread pool publishes on the same connection.
            await asyncio.to_thread(receiver.client.publish, f"{TOPIC}/echo", b"from a thread", 1)
            await _until(lambda: b"from a thread" in receiver.received, timeout=10, what="the echo")

            mosquitto.stop()
            mosquitto.start()
            await _until(lambda: receiver.connections == 2, timeout=15, what="a reconnection")
            await asyncio.sleep(0.2)
            await asyncio.to_thread(publish_all, mosquitto.url, [(TOPIC, b"after")])
            await _until(lambda: b"after" in receiver.received, timeout=10, what="a message after the restart")
        finally:
            await receiver.driver.stop()
        assert not receiver.client.is_connected()

    asyncio.run(scenario())


def test_an_unreachable_broker_is_retried_until_it_appears(tmp_path: Path) -> None:
    """Started before its broker, the driver keeps dialling and connects once the broker is up."""
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    broker = MosquittoProcess(tmp_path / "mosquitto")

    async def scenario() -> None:
        receiver = _Receiver(broker.url)
        receiver.driver.start()
        try:
            await asyncio.sleep(0.6)  # a few failed dials
            assert receiver.connections == 0
            await asyncio.to_thread(broker.start)
            await _until(lambda: receiver.connections == 1, timeout=10, what="the connection")
        finally:
            await receiver.driver.stop()
            broker.stop()

    asyncio.run(scenario())
