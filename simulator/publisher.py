"""Many paho clients driven from one thread with a selector, for the simulator.

A thread per client (paho's ``loop_start``) cannot scale to a fleet, so this drives paho's
``loop_read`` / ``loop_write`` / ``loop_misc`` itself. Each connection either belongs to
one device (with that device's Last Will: ``offline``, retained) or carries a share of the
fleet when there are more devices than the machine has file descriptors for.
"""

from __future__ import annotations

import logging
import selectors
import time
from collections import deque

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from core.mqtt import BrokerAddress, new_client
from core.paho_internals import CorkedClient

__all__ = ["ClientPool"]

log = logging.getLogger(__name__)

# A connection whose socket cannot take more than this is backlogged: its devices' reports
# are dropped (and counted), as a camera's own send buffer would overflow.
_MAX_BACKLOG_BYTES = 1024 * 1024


class ClientPool:
    def __init__(self, address: BrokerAddress, *, prefix: str, count: int,
                 wills: list[str | None], keepalive_s: int = 30,
                 subscriptions: list[list[str]] | None = None) -> None:
        self._address = address
        self._keepalive_s = keepalive_s
        self._selector = selectors.DefaultSelector()
        self._clients: list[CorkedClient] = []
        self._dirty: set[int] = set()  # connections with bytes still to send
        self.dropped = 0
        self._up: list[bool] = [False] * count
        self._wanted: list[bool] = [False] * count  # False after a deliberate drop()
        self._retry_at: list[float] = [0.0] * count
        # Messages to the devices (commands), read in pump() on this thread; bounded: past
        # this the oldest are dropped, as a camera's own inbox would overflow.
        self.inbox: deque[tuple[str, bytes]] = deque(maxlen=10_000)
        for index in range(count):
            client = new_client(address, client_id=f"{prefix}-{index}", protocol=paho.MQTTv311, cls=CorkedClient)
            # A pooled connection carries hundreds of devices: let QoS 1 flow, but bound
            # what waits for a PUBACK (the rest is dropped and counted, never hoarded).
            client.max_inflight_messages_set(1_000)
            client.max_queued_messages_set(1_000)
            will = wills[index]
            if will is not None:
                client.will_set(will, b"offline", qos=1, retain=True)
            client.on_connect = self._connected(index, (subscriptions or [])[index] if subscriptions else [])
            client.on_message = self._received
            client.on_disconnect = self._marker(index, False)
            self._clients.append(client)

    def _marker(self, index: int, up: bool):  # type: ignore[no-untyped-def]
        def callback(*_: object) -> None:
            self._up[index] = up
        return callback

    def _connected(self, index: int, topics: list[str]):  # type: ignore[no-untyped-def]
        def callback(client: paho.Client, *_: object) -> None:
            self._up[index] = True
            if topics:  # a clean session: subscribe again on every connect
                client.subscribe([(topic, 1) for topic in topics])
                self._dirty.add(index)
        return callback

    def _received(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        self.inbox.append((message.topic, bytes(message.payload)))

    def is_up(self, index: int) -> bool:
        return self._up[index]

    def connect(self, index: int) -> None:
        client = self._clients[index]
        self._wanted[index] = True
        self._retry_at[index] = time.monotonic() + 5.0  # give the CONNACK time to come
        try:
            client.connect(self._address.host, self._address.port, keepalive=self._keepalive_s)
        except OSError as error:
            log.warning("connection %d: %s", index, error)
            self._retry_at[index] = time.monotonic() + 2.0
            return
        sock = client.socket()
        if sock is not None:
            self._selector.register(sock, selectors.EVENT_READ, index)
            self._dirty.add(index)  # the CONNECT

    def connect_all(self, timeout: float = 60.0) -> None:
        for index in range(len(self._clients)):
            self.connect(index)
            if index % 200 == 199:
                self.pump(0)
        deadline = time.monotonic() + timeout
        while not all(self._up) and time.monotonic() < deadline:
            self.pump(0.05)

    def publish(self, index: int, topic: str, payload: bytes, *, retain: bool = False) -> None:
        client = self._clients[index]
        if not self._up[index]:
            return
        if client.backlog > _MAX_BACKLOG_BYTES:
            self.dropped += 1
            return
        if client.publish(topic, payload, qos=1, retain=retain).rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
        self._dirty.add(index)

    def drop(self, index: int) -> None:
        """Lose the connection without a DISCONNECT, as a camera out of coverage would:
        the broker publishes the Last Will."""
        client = self._clients[index]
        sock = client.socket()
        if sock is not None:
            self._forget(sock)
            sock.close()
        self._up[index] = False
        self._wanted[index] = False

    def _forget(self, sock: object) -> None:
        try:
            self._selector.unregister(sock)  # type: ignore[arg-type]
        except (KeyError, ValueError):
            pass

    def pump(self, timeout: float) -> None:
        """Read what arrived, write what is pending, keep connections alive."""
        for key, _ in self._selector.select(timeout):
            client = self._clients[key.data]
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._forget(key.fileobj)
                self._up[key.data] = False
                self._retry_at[key.data] = time.monotonic() + 2.0
        for index in list(self._dirty):
            client = self._clients[index]
            if client.want_write():  # packets paho could not hand over yet
                client.loop_write()
            if client.flush():
                self._dirty.discard(index)

    def keepalive(self) -> None:
        """Once a second or so: pings, and reconnecting connections that fell by themselves
        (a broker restart), as a camera's firmware would."""
        now = time.monotonic()
        for index, client in enumerate(self._clients):
            if self._up[index]:
                client.loop_misc()
                self._dirty.add(index)  # a PINGREQ may be waiting
            elif self._wanted[index] and now >= self._retry_at[index]:
                self._retry_at[index] = now + 2.0
                sock = client.socket()
                if sock is not None:
                    self._forget(sock)
                self.connect(index)

    def close(self) -> None:
        for index, client in enumerate(self._clients):
            if self._up[index]:
                client.disconnect()
                self._dirty.add(index)
        self.pump(0.1)
        for client in self._clients:
            sock = client.socket()
            if sock is not None:
                self._forget(sock)
                sock.close()
