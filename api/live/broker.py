"""The live feed's broker connection: the paho adapter, and nothing else.

Each API process subscribes to the live-units frames ingest publishes after each commit
(a direct subscription, so every process sees every worker's frames), never to the devices'
topics, and to the alert, registry and account announcements. paho calls :meth:`FeedConnection._on_message`
on its own thread; that hands every message to one function, ``deliver`` (the hub's
:meth:`api.live.handover.Handover.put`, whose docstring says what it does with each and
why nothing it holds can block paho's thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import paho.mqtt.client as paho

from core.contract import ACCOUNTS_TOPIC, ALERTS_TOPIC, LIVE_UNITS_TOPIC, REGISTRY_TOPIC
from core.mqtt import BrokerAddress, BufferedClient, new_client

__all__ = ["FeedConnection"]


class FeedConnection:
    """A clean MQTT 3.1.1 session, everything at QoS 1 (one frame carries a batch of units).

    ``reconnected`` is called (on paho's thread) on every connection after the first: what
    was published while the session was away is lost with it, so the owner rebuilds from
    the database."""

    def __init__(self, *, mqtt_url: str, client_id: str, deliver: Callable[[str, bytes], None],
                 reconnected: Callable[[], None]) -> None:
        self._address = BrokerAddress.parse(mqtt_url)
        self._deliver = deliver
        self._reconnected = reconnected
        self._connections = 0
        self._client: BufferedClient = new_client(self._address, client_id=client_id, protocol=paho.MQTTv311)
        # paho types its callback setters as a union that mypy reduces to Never.
        self._client.on_connect = self._on_connect  # type: ignore[assignment]
        self._client.on_message = self._on_message  # type: ignore[assignment]
        self._client.on_disconnect = self._on_disconnect  # type: ignore[assignment]
        self.connected = threading.Event()

    def start(self) -> None:
        self._client.connect_async(self._address.host, self._address.port, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1, queued: paho sends it from its own thread."""
        self._client.publish(topic, payload, qos=1)

    # paho's thread

    def _on_connect(self, client: paho.Client, u: object, f: object, reason: object, p: object) -> None:
        client.subscribe([(LIVE_UNITS_TOPIC, 1), (ALERTS_TOPIC, 1), (REGISTRY_TOPIC, 1), (ACCOUNTS_TOPIC, 1)])
        self._connections += 1
        self.connected.set()
        if self._connections > 1:
            self._reconnected()

    def _on_disconnect(self, client: paho.Client, u: object, f: object, reason: object, p: object) -> None:
        self.connected.clear()  # /readyz reports the broker away until paho reconnects

    def _on_message(self, client: paho.Client, u: object, message: paho.MQTTMessage) -> None:
        self._deliver(message.topic, bytes(message.payload))
