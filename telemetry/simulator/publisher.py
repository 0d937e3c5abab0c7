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

import paho.mqtt.client as paho

from telemetry.mqtt import BrokerAddress, new_client

__all__ = ["ClientPool"]

log = logging.getLogger(__name__)


class ClientPool:
    def __init__(self, address: BrokerAddress, *, prefix: str, count: int,
                 wills: list[str | None], keepalive_s: int = 30) -> None:
        self._address = address
        self._keepalive_s = keepalive_s
        self._selector = selectors.DefaultSelector()
        self._clients: list[paho.Client] = []
        self._up: list[bool] = [False] * count
        self._wanted: list[bool] = [False] * count  # False after a deliberate drop()
        self._retry_at: list[float] = [0.0] * count
        for index in range(count):
            client = new_client(address, client_id=f"{prefix}-{index}", protocol=paho.MQTTv311)
            # A pooled connection carries hundreds of devices: let QoS 1 flow freely.
            client.max_inflight_messages_set(5_000)
            will = wills[index]
            if will is not None:
                client.will_set(will, b"offline", qos=1, retain=True)
            client.on_connect = self._marker(index, True)
            client.on_disconnect = self._marker(index, False)
            self._clients.append(client)

    def _marker(self, index: int, up: bool):  # type: ignore[no-untyped-def]
        def callback(*_: object) -> None:
            self._up[index] = up
        return callback

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

    def connect_all(self, timeout: float = 60.0) -> None:
        for index in range(len(self._clients)):
            self.connect(index)
            if index % 200 == 199:
                self.pump(0)
        deadline = time.monotonic() + timeout
        while not all(self._up) and time.monotonic() < deadline:
            self.pump(0.05)

    def publish(self, index: int, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if self._up[index]:
            self._clients[index].publish(topic, payload, qos=1, retain=retain)

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
            if client.loop_read() != paho.MQTT_ERR_SUCCESS:
                self._forget(key.fileobj)
                self._up[key.data] = False
                self._retry_at[key.data] = time.monotonic() + 2.0
        for client in self._clients:
            if client.want_write():
                client.loop_write()

    def keepalive(self) -> None:
        """Once a second or so: pings, and reconnecting connections that fell by themselves
        (a broker restart), as a camera's firmware would."""
        now = time.monotonic()
        for index, client in enumerate(self._clients):
            if self._up[index]:
                client.loop_misc()
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
        self.pump(0.1)
        for client in self._clients:
            sock = client.socket()
            if sock is not None:
                self._forget(sock)
                sock.close()
