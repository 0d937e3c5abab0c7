"""Every place where Watchfloor reaches into paho-mqtt's internals, and why. Pinned to
paho-mqtt 2.1–2.2 (pyproject.toml); :func:`check_paho` verifies, when the first client is
made, that each internal below still exists with the shape used here, and raises
:class:`PahoChanged` otherwise, so that an upgrade fails loudly at start-up instead of
killing the network thread on its first message or acknowledgement.

Measured in bench/ingest, and why each is here:

* **A read buffer** (``Client._sock_recv(bufsize)``, overridden). Stock paho reads each
  PUBLISH with three or four ``recv()`` calls; here one ``recv()`` of 64 KiB feeds many
  packets, and ``loop_read`` drains the buffer on every wake-up (it reads ``_sock``).
* **No topic matcher** (``Client._handle_on_message(message)``, overridden, holding
  ``_in_callback_mutex`` and passing ``_userdata`` as paho does). No per-topic callbacks are
  used, so paho's matcher (about 5% of ingest's CPU) is skipped.
* **PUBLISH straight to a callback** (``Client._handle_publish()``, overridden, reading
  ``_in_packet["command"]``/``["packet"]``, ``_protocol`` and ``_manual_ack``). For QoS 0
  and 1, with :func:`deliver_publishes` set, the packet is split into (mid, topic, payload)
  here: no ``PublishPacket``, no ``MQTTMessage`` and, over MQTT 5, no ``Properties``
  object built, filled and thrown away per message (the properties are skipped by their
  length: ingest uses none). QoS 2, or a client without the callback, takes paho's own path.
* **Whole PUBLISHes split straight from the read buffer** (``loop_read``, with
  ``_in_packet["command"]`` read to know that paho is between packets, and
  ``_msgtime_mutex``/``_last_bytes_received``/``time_func`` set as paho's own read does for
  the keep-alive). paho reads a packet with three or four ``_sock_recv`` calls, a fresh
  ``_in_packet`` dict and two clock readings under a lock: more than the rest of the
  PUBLISH path. With the callback set, every whole QoS 0 or 1 PUBLISH at the head of the
  buffer is split here and the run is handed over in one call, one lock; anything else
  (another packet type, a PUBLISH cut by the end of the read, a malformed one) is left to
  paho's own read, which then answers it as before; ``_sock_recv`` lets that read take one
  packet only (paho's ``loop_read`` would take one more per message in flight).
* **One ``send()`` per pump in the simulator** (:class:`CorkedClient`: ``Client._sock_send(buf)``
  and ``Client._sock_close()``, overridden, and ``_sock``). Driven without a network
  thread, paho writes every publish with a ``send()`` of its own: a quarter of the
  simulator's CPU.
* **Acknowledgements of a batch in one write** (``Client._packet_queue(command, packet,
  mid, qos, info=None)``): the PUBACKs of a committed batch are queued as one packet.
"""

from __future__ import annotations

import functools
import inspect
import socket
import struct
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

__all__ = ["BufferedClient", "CorkedClient", "PahoChanged", "RawPublish", "check_paho", "deliver_publishes"]

#: The (mids, topics, payloads) of PUBLISHes read together, in order, on paho's network
#: thread; a mid is 0 for QoS 0.
RawPublish = Callable[[list[int], list[str], list[bytes]], None]

# Each private method this module overrides or calls, with the parameters it relies on.
_METHODS: dict[str, tuple[str, ...]] = {
    "_sock_recv": ("self", "bufsize"),
    "_handle_on_message": ("self", "message"),
    "_handle_publish": ("self",),
    "_packet_queue": ("self", "command", "packet", "mid", "qos", "info"),
    "_sock_send": ("self", "buf"),
    "_sock_close": ("self",),
}
# Each private attribute read, on a fresh client.
_ATTRIBUTES = ("_sock", "_in_callback_mutex", "_userdata", "_in_packet", "_protocol", "_manual_ack",
               "_msgtime_mutex", "_last_bytes_received")
_IN_PACKET_KEYS = ("command", "packet")


_VERSION = getattr(paho, "__version__", "?")
_PUBLISH = int(paho.PUBLISH)


class PahoChanged(RuntimeError):
    """The paho-mqtt in use no longer has the internals this module relies on."""


@functools.cache
def check_paho() -> None:
    """Raise :class:`PahoChanged` unless every internal used here is as expected (once)."""
    for name, parameters in _METHODS.items():
        method = getattr(paho.Client, name, None)
        if not callable(method):
            raise PahoChanged(f"paho.mqtt.client.Client has no {name}() (paho-mqtt {_VERSION})")
        found = tuple(inspect.signature(method).parameters)
        if found != parameters:
            raise PahoChanged(f"paho.mqtt.client.Client.{name} takes {found}, expected {parameters}"
                              f" (paho-mqtt {_VERSION})")
    client = paho.Client(CallbackAPIVersion.VERSION2)
    for attribute in _ATTRIBUTES:
        if not hasattr(client, attribute):
            raise PahoChanged(f"paho.mqtt.client.Client has no {attribute} (paho-mqtt {_VERSION})")
    if not callable(getattr(paho, "time_func", None)):
        raise PahoChanged(f"paho.mqtt.client has no time_func() (paho-mqtt {_VERSION})")
    in_packet = getattr(client, "_in_packet")
    if not isinstance(in_packet, dict) or any(key not in in_packet for key in _IN_PACKET_KEYS):
        raise PahoChanged(f"paho.mqtt.client.Client._in_packet has no {_IN_PACKET_KEYS}"
                          f" (paho-mqtt {_VERSION})")
    if in_packet["command"] != 0:  # loop_read takes 0 to mean "between packets"
        raise PahoChanged(f"paho.mqtt.client.Client._in_packet['command'] is {in_packet['command']!r} on a"
                          f" fresh client, not 0 (paho-mqtt {_VERSION})")


def _split_publish(packet: bytes, start: int, end: int, qos: int, v5: bool) -> tuple[int, str, bytes] | None:
    """(mid, topic, payload) of the PUBLISH whose variable header is ``packet[start:end]``
    (mid 0 for QoS 0; MQTT 5 properties skipped by their length); None if it is malformed."""
    if start + 2 > end:
        return None
    topic_length = packet[start] << 8 | packet[start + 1]
    at = start + 2 + topic_length
    if at > end or (not topic_length and not v5):
        return None
    topic = packet[start + 2:at].decode("utf-8", "replace")  # the decoder refuses what is not a device topic
    mid = 0
    if qos:
        if at + 2 > end:
            return None
        mid = packet[at] << 8 | packet[at + 1]
        at += 2
    if v5:  # the properties' length, a variable byte integer, then the properties
        read = _variable_int(packet, at, end)
        if read is None:
            return None
        length, at = read
        at += length
        if at > end:
            return None
    return mid, topic, packet[at:end]


def _variable_int(buffer: bytes, at: int, end: int) -> tuple[int, int] | None:
    """MQTT's variable byte integer at ``buffer[at]`` (at most four bytes) and where it ends;
    None if it runs past ``end`` or past four bytes (cut by the end of a read, or malformed)."""
    value, shift = 0, 0
    while at < end and shift <= 21:
        byte = buffer[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at
    return None


class BufferedClient(paho.Client):
    """paho's client with a read buffer, batched acknowledgements and, when asked, PUBLISH
    handed over as (mids, topics, payloads) (the module's docstring says why each)."""

    _READ_SIZE = 65_536

    def __init__(self, *args: object, **kwargs: object) -> None:
        check_paho()
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._read_buffer = b""
        self._read_at = 0
        self._raw_publish: RawPublish | None = None
        # While paho reads one packet for _deliver_buffered: whether it has begun one (None: not so limited).
        self._one_packet: bool | None = None

    def _buffered(self) -> bool:
        return self._read_at < len(self._read_buffer)

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._one_packet is not None and self._in_packet["command"] == 0:
            if self._one_packet:  # paho is done with the packet it was let read: the rest is ours
                raise BlockingIOError()
            self._one_packet = True
        if not self._buffered():
            data = super()._sock_recv(self._READ_SIZE)  # BlockingIOError when nothing came
            if not data:
                return data  # connection closed
            self._read_buffer, self._read_at = data, 0
        chunk = self._read_buffer[self._read_at:self._read_at + bufsize]
        self._read_at += len(chunk)
        return chunk

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        if self._raw_publish is None:
            rc = super().loop_read(max_packets)
            while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self._buffered():
                rc = super().loop_read(max_packets)
            return rc
        while self._sock is not None:
            if self._in_packet["command"] == 0:  # between packets: ours to split
                if not self._buffered():
                    try:
                        data = super()._sock_recv(self._READ_SIZE)
                    except BlockingIOError:
                        return MQTTErrorCode.MQTT_ERR_SUCCESS  # nothing came, as paho answers
                    except OSError:
                        data = b""
                    if not data:  # paho's own read meets the closed or broken connection again
                        return super().loop_read(max_packets)
                    self._read_buffer, self._read_at = data, 0
                    with self._msgtime_mutex:
                        self._last_bytes_received = paho.time_func()
                self._deliver_buffered()
                if not self._buffered():
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
            rc = self._read_one_packet(max_packets)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or not self._buffered():
                return rc
        return MQTTErrorCode.MQTT_ERR_NO_CONN

    def _read_one_packet(self, max_packets: int) -> MQTTErrorCode:
        """paho's own read of the packet at the head of the buffer (or of the rest of one it
        began), and no further: paho's loop_read reads one packet more per message in flight,
        and those should be split here."""
        self._one_packet = self._in_packet["command"] != 0  # True: paho is within one already
        try:
            return super().loop_read(max_packets)
        finally:
            self._one_packet = None

    def _deliver_buffered(self) -> None:
        """Split every whole QoS 0 or 1 PUBLISH at the head of the read buffer and hand them
        over in one call; stop at anything else, which paho's own read then takes."""
        deliver = self._raw_publish
        assert deliver is not None
        buffer, at = self._read_buffer, self._read_at
        size = len(buffer)
        v5 = self._protocol == paho.MQTTv5
        mids: list[int] = []
        topics: list[str] = []
        payloads: list[bytes] = []
        while at + 2 <= size:
            command = buffer[at]
            qos = (command & 0x06) >> 1
            if command & 0xF0 != _PUBLISH or qos > 1:
                break
            read = _variable_int(buffer, at + 1, size)
            if read is None:
                break  # the length is cut by the end of the read, or malformed: paho's read
            length, start = read
            end = start + length
            if end > size:
                break  # the rest of it has not come yet
            split = _split_publish(buffer, start, end, qos, v5)
            if split is None:
                break  # malformed: paho's read refuses it
            mids.append(split[0])
            topics.append(split[1])
            payloads.append(split[2])
            at = end
        self._read_at = at
        if topics:
            with self._in_callback_mutex:
                deliver(mids, topics, payloads)
            if not self._manual_ack:
                self.ack_many([mid for mid in mids if mid])

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                on_message(self, self._userdata, message)

    def _handle_publish(self) -> MQTTErrorCode:
        deliver = self._raw_publish
        command = self._in_packet["command"]
        qos = (command & 0x06) >> 1
        if deliver is None or qos > 1:
            return super()._handle_publish()
        packet = bytes(self._in_packet["packet"])
        split = _split_publish(packet, 0, len(packet), qos, self._protocol == paho.MQTTv5)
        if split is None:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL  # as paho answers a malformed packet
        mid, topic, payload = split
        with self._in_callback_mutex:
            deliver([mid], [topic], [payload])
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def reconnect(self) -> MQTTErrorCode:
        self._read_buffer, self._read_at = b"", 0  # bytes of the old connection are void
        return super().reconnect()

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK every mid (QoS 1) in one queued write, in order."""
        if mids:
            packet = b"".join([struct.pack("!BBH", paho.PUBACK, 2, mid) for mid in mids])
            self._packet_queue(paho.PUBACK, packet, 0, 0)


class CorkedClient(BufferedClient):
    """Collects outgoing packets and sends them with one ``send()`` per pump (the simulator's).

    Driven without a network thread, paho writes every publish with a ``send()`` of its
    own: for a fleet that was a quarter of the simulator's CPU. paho still frames, numbers
    and tracks every packet; only the syscall is batched.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._unsent = bytearray()

    def _sock_send(self, buf: bytes | bytearray) -> int:
        self._unsent += buf
        return len(buf)

    @property
    def backlog(self) -> int:
        return len(self._unsent)

    def flush(self) -> bool:
        """Send what the socket takes now; True when nothing is left."""
        sock = self._sock
        if not self._unsent or sock is None:
            return True
        try:
            sent = sock.send(self._unsent)
        except BlockingIOError:
            return False
        except OSError:
            self._unsent.clear()  # the connection is gone; paho notices on its next read
            return True
        del self._unsent[:sent]
        return not self._unsent

    def reconnect(self) -> MQTTErrorCode:
        self._unsent.clear()
        return super().reconnect()

    def _sock_close(self) -> None:
        # paho closes the socket right after "sending" DISCONNECT; send it for real first,
        # or the broker sees a lost connection and publishes the Last Will.
        sock = self._sock
        if isinstance(sock, socket.socket) and self._unsent:
            try:
                sock.settimeout(1.0)
                sock.sendall(self._unsent)
            except OSError:
                pass
            self._unsent.clear()
        super()._sock_close()


def deliver_publishes(client: BufferedClient, callback: RawPublish | None) -> None:
    """Hand every QoS 0 or 1 PUBLISH to ``callback``, as (mids, topics, payloads) of the
    messages read together, instead of building an ``MQTTMessage`` for ``on_message`` (None:
    back to ``on_message``). The callback runs on paho's network thread with the client's
    callback lock held: it must only hand the messages over."""
    client._raw_publish = callback
