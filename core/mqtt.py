"""The paho-mqtt adapter: connection, persistent session, and acknowledgement after commit.

paho runs its network loop on its own thread and calls ``on_message`` there with the
client's lock held. :meth:`MqttSession.start` hands the messages of each read of the
socket, together, to a callback that must only enqueue them; acknowledgements are queued
back with :meth:`MqttSession.ack`, which paho writes from its network thread. Never
publish-and-wait inside a callback: it deadlocks.

:class:`LoopHandover` is the one generic way across from paho's thread to an asyncio event
loop: ``put(topic, payload)`` on paho's thread schedules, with ``loop.call_soon_threadsafe``,
a ``put_nowait`` into a bounded ``asyncio.Queue`` that the loop's consumer reads; when the
queue is full the message is dropped and counted (``dropped``), never blocking paho's thread
(which must keep answering keep-alives). :mod:`services.live_view` uses it. The live feed
(``api.live.handover``) crosses instead by merging under a lock, conflating per unit at
thousands of messages a second; ingest still crosses in its own way and can adopt it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.paho_internals import BufferedClient, deliver_publishes

__all__ = ["BrokerAddress", "BufferedClient", "Inbound", "LoopHandover", "MqttSession", "detect_protocol",
           "new_client", "publish_all"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> "BrokerAddress":
        """``mqtt://[user[:password]@]host[:port]``; ``mqtts://`` for TLS."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"unsupported MQTT URL scheme {parts.scheme!r} (use mqtt:// or mqtts://)")
        tls = parts.scheme in ("mqtts", "ssl")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
        )


@dataclass(frozen=True, slots=True)
class Inbound:
    """Messages as they left paho's thread together (one read of the socket): enough to
    decode them and to acknowledge them. Three lists of one length, in the order received:
    one object per read rather than one per message."""

    generation: int  # which connection delivered them; a packet id is only valid on that one
    received_at: float  # time.time()
    mids: list[int]  # 0 for QoS 0 (nothing to acknowledge)
    topics: list[str]
    payloads: list[bytes]

    def __len__(self) -> int:
        return len(self.topics)

    def split(self, n: int) -> tuple["Inbound", "Inbound"]:
        """The first ``n`` messages, and the rest."""
        head = Inbound(self.generation, self.received_at, self.mids[:n], self.topics[:n], self.payloads[:n])
        rest = Inbound(self.generation, self.received_at, self.mids[n:], self.topics[n:], self.payloads[n:])
        return head, rest


class LoopHandover:
    """Messages from paho's network thread to an asyncio loop, through one bounded queue.

    :meth:`put` is called on paho's thread; the message is put into :attr:`queue` on the loop's
    thread (``call_soon_threadsafe``), so the queue is only ever touched by the loop. When the
    queue is full (its consumer stalled, e.g. the database is away) the message is dropped,
    counted in :attr:`dropped` and logged: the producer is never blocked, since a blocked paho
    thread stops answering keep-alives and the broker drops the connection. When the loop has
    closed (the app is stopping) the message is dropped silently.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, maxsize: int, name: str) -> None:
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0
        self._loop = loop
        self._name = name

    def put(self, topic: str, payload: bytes) -> None:
        """Paho's thread: hand (topic, payload) over to the loop."""
        try:
            self._loop.call_soon_threadsafe(self._enqueue, topic, payload)
        except RuntimeError:  # the loop closed under us: the app is stopping
            pass

    def _enqueue(self, topic: str, payload: bytes) -> None:
        try:
            self.queue.put_nowait((topic, payload))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("%s: queue full, dropped a message on %s", self._name, topic)


ClientT = TypeVar("ClientT", bound=BufferedClient)


def new_client(
    address: BrokerAddress, *, client_id: str, protocol: int, clean: bool = True,
    cls: type[ClientT] = BufferedClient,  # type: ignore[assignment]
) -> ClientT:
    """A client for ``address``: credentials and TLS from the URL, callbacks API v2."""
    # clean_session is a 3.1.1 notion; MQTT 5 sets clean_start at connect instead.
    client = cls(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                 clean_session=None if protocol == paho.MQTTv5 else clean)
    if address.username:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
    return client


def publish_all(url: str, messages: Iterable[tuple[str, bytes]], *, client_id: str, retain: bool = False,
                timeout: float = 5.0) -> bool:
    """Connect, publish each message at QoS 1, wait until the broker has acknowledged them,
    and disconnect: for command-line tools (and the tests). False if the broker could not be
    reached, or did not acknowledge a message within ``timeout``."""
    address = BrokerAddress.parse(url)
    client: BufferedClient = new_client(address, client_id=client_id, protocol=paho.MQTTv311)
    client.max_inflight_messages_set(1000)
    try:
        client.connect(address.host, address.port, keepalive=10)
    except OSError:
        return False
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1, retain=retain) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout)
        return all(info.is_published() for info in infos)
    except (RuntimeError, ValueError):  # refused before it was sent (connection lost)
        return False
    finally:
        client.disconnect()
        client.loop_stop()


def detect_protocol(address: BrokerAddress, *, client_id: str, timeout: float = 5.0) -> int:
    """MQTT 5 if the broker accepts it, else 3.1.1 (probed with a throw-away clean session)."""
    result: list[bool] = []
    done = threading.Event()
    client: BufferedClient = new_client(address, client_id=f"{client_id}-probe", protocol=paho.MQTTv5)

    def on_connect(c: paho.Client, u: object, f: object, reason: ReasonCode, p: object) -> None:
        result.append(not reason.is_failure)
        done.set()

    def on_disconnect(c: paho.Client, u: object, f: object, reason: ReasonCode, p: object) -> None:
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(address.host, address.port, keepalive=10)
        client.loop_start()
        done.wait(timeout)
        client.disconnect()
        client.loop_stop()
    except OSError:
        result.clear()
    return paho.MQTTv5 if result and result[0] else paho.MQTTv311


class MqttSession:
    """A persistent QoS 1 subscription whose messages are acknowledged only when told to."""

    def __init__(
        self,
        address: BrokerAddress,
        *,
        client_id: str,
        topics: Iterable[str],
        protocol: int,
        session_expiry_s: int,
        keepalive_s: int,
        deliver: Callable[[Inbound], None],
        receive_maximum: int | None = None,
    ) -> None:
        self._address = address
        self._topics = list(topics)
        self._protocol = protocol
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._keepalive_s = keepalive_s
        self._deliver = deliver
        self._generation = 0
        self.connected = threading.Event()
        # Set once the broker has granted the subscriptions: before that a message published
        # to a $share group with no subscriber yet is dropped by the broker.
        self.subscribed = threading.Event()
        self._client: BufferedClient = new_client(address, client_id=client_id, protocol=protocol, clean=False)
        self._client.manual_ack_set(True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        # paho types its callback setters as a union that mypy reduces to Never.
        self._client.on_connect = self._on_connect  # type: ignore[assignment]
        self._client.on_disconnect = self._on_disconnect  # type: ignore[assignment]
        deliver_publishes(self._client, self._on_publish)
        self._client.on_subscribe = self._on_subscribe  # type: ignore[assignment]

    @property
    def protocol_name(self) -> str:
        return "5" if self._protocol == paho.MQTTv5 else "3.1.1"

    def start(self) -> None:
        host, port, keepalive = self._address.host, self._address.port, self._keepalive_s
        if self._protocol == paho.MQTTv5:
            # clean_start must be False explicitly: paho's default (clean on the first
            # connect of a process) would throw away what a crashed worker left unacked.
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self._session_expiry_s
            if self._receive_maximum is not None:
                # At most this many unacknowledged messages in flight to us: with it no larger
                # than our queue, paho's thread never blocks on a full queue, so it keeps
                # answering keep-alives while the database is slow or away (else the broker
                # drops the connection and redelivers the whole window on reconnect).
                props.ReceiveMaximum = max(1, min(self._receive_maximum, 65_535))
            self._client.connect_async(host, port, keepalive=keepalive, clean_start=False, properties=props)
        else:
            self._client.connect_async(host, port, keepalive=keepalive)
        self._client.loop_start()

    @property
    def connections(self) -> int:
        """Connections made so far (the first, then each reconnection)."""
        return self._generation

    def wait_connected(self, timeout: float) -> bool:
        """Wait until connected *and* subscribed (the broker's SUBACK)."""
        return self.subscribed.wait(timeout)

    def stop(self) -> None:
        """Disconnect, keeping the broker-side session (and what it holds) for the next start."""
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1, queued: paho sends it (and retries it) from its own thread."""
        self._client.publish(topic, payload, qos=1)

    def ack(self, received: Iterable[Inbound]) -> int:
        """Acknowledge the QoS 1 messages of ``received``; those an older connection delivered
        are skipped.

        A skipped one is redelivered by the broker on the new connection and acknowledged
        then (its row is already stored, so the insert does nothing).
        """
        current = self._generation
        mids = [mid for inbound in received if inbound.generation == current for mid in inbound.mids if mid]
        self._client.ack_many(mids)
        return len(mids)

    # paho's network thread from here on

    def _on_connect(self, client: paho.Client, u: object, flags: paho.ConnectFlags,
                    reason: ReasonCode, p: object) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        self._generation += 1
        # Subscribing again is harmless when the session survived, and needed when it did not.
        client.subscribe([(topic, 1) for topic in self._topics])
        log.info("connected to %s:%s (MQTT %s, session present: %s)", self._address.host,
                 self._address.port, self.protocol_name, flags.session_present)
        self.connected.set()

    def _on_disconnect(self, client: paho.Client, u: object, f: object,
                       reason: ReasonCode, p: object) -> None:
        self.connected.clear()
        self.subscribed.clear()
        log.warning("disconnected from broker: %s", reason)

    def _on_subscribe(self, client: paho.Client, u: object, mid: int, reasons: object, p: object) -> None:
        self.subscribed.set()

    def _on_publish(self, mids: list[int], topics: list[str], payloads: list[bytes]) -> None:
        self._deliver(Inbound(self._generation, time.time(), mids, topics, payloads))
