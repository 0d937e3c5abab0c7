"""core.paho_internals: the one module that reaches into paho-mqtt. Its start-up check fails
loudly, naming the internal, when one is missing or changed shape; and the PUBLISH path that
skips paho's message objects delivers what was published, over MQTT 5 (with properties it
must skip) and 3.1.1, to a real Mosquitto, and from a socket whose reads cut packets
anywhere, between other packets and malformed ones."""

from __future__ import annotations

import queue
import socket
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from core import paho_internals
from core.mqtt import BrokerAddress, Inbound, MqttSession, new_client
from core.paho_internals import PahoChanged, check_paho
from tests.helpers.broker import connect_and_wait
from watchfloor.mosquitto import MosquittoProcess


@pytest.fixture
def fresh_check() -> Iterator[None]:
    """check_paho() runs once per process; run it again for this test, and after it."""
    check_paho.cache_clear()
    yield
    check_paho.cache_clear()


def test_the_installed_paho_passes_the_check(fresh_check: None) -> None:
    """The pinned paho-mqtt has every internal the module uses, with the expected shape."""
    check_paho()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # paho's __del__ misses it too
@pytest.mark.parametrize("name", sorted(paho_internals._METHODS))
def test_a_missing_private_method_fails_the_check(name: str, fresh_check: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A paho without one of the overridden or called methods is refused at start-up, by name,
    and so is making a client."""
    monkeypatch.delattr(paho.Client, name)
    with pytest.raises(PahoChanged, match=name):
        check_paho()
    check_paho.cache_clear()
    with pytest.raises(PahoChanged, match=name):
        new_client(BrokerAddress.parse("mqtt://127.0.0.1:1"), client_id="t", protocol=paho.MQTTv311)


def test_a_changed_signature_fails_the_check(fresh_check: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A method that is still there but takes other parameters is refused too."""
    monkeypatch.setattr(paho.Client, "_packet_queue", lambda self, command, packet: None)
    with pytest.raises(PahoChanged, match="_packet_queue"):
        check_paho()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # its __del__ misses it too
@pytest.mark.parametrize("name", paho_internals._ATTRIBUTES)
def test_a_missing_private_attribute_fails_the_check(name: str, fresh_check: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that no longer sets one of the attributes read here is refused, by name."""
    original = paho.Client.__init__

    def without(self: paho.Client, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        delattr(self, name)

    monkeypatch.setattr(paho.Client, "__init__", without)
    with pytest.raises(PahoChanged, match=name):
        check_paho()


@pytest.mark.parametrize("protocol", [paho.MQTTv5, paho.MQTTv311], ids=["mqtt5", "mqtt311"])
def test_publishes_reach_the_session_whole(protocol: int, mosquitto: MosquittoProcess) -> None:
    """Messages with and without MQTT 5 properties, empty and binary payloads, a non-ASCII
    topic and QoS 0 and 1 arrive as published, with a packet id for QoS 1 only."""
    address = BrokerAddress.parse(mosquitto.url)
    inbox: queue.Queue[Inbound] = queue.Queue()
    session = MqttSession(address, client_id=f"t-{uuid.uuid4().hex[:8]}", topics=["t/#"], protocol=protocol,
                          session_expiry_s=60, keepalive_s=30, deliver=inbox.put)
    session.start()
    publisher = new_client(address, client_id=f"p-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5)
    try:
        assert session.wait_connected(30)
        connect_and_wait(publisher, address.host, address.port)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.UserProperty = [("k", "v" * 300)]  # a properties block longer than 127 bytes
        props.ContentType = "application/json"
        props.MessageExpiryInterval = 600
        sent = [("t/plain", b'{"a": 1}', 1, None), ("t/ünïcode", bytes(range(256)), 1, props),
                ("t/empty", b"", 1, props), ("t/qos0", b"zero", 0, None)]
        infos = [publisher.publish(topic, payload, qos=qos, properties=p) for topic, payload, qos, p in sent]
        for info in infos:
            info.wait_for_publish(30)
        reads: list[Inbound] = []
        while sum(len(r) for r in reads) < len(sent):
            reads.append(inbox.get(timeout=30))
        got = [(t, p, m) for r in reads for m, t, p in zip(r.mids, r.topics, r.payloads, strict=True)]
        assert sorted((t, p, m > 0) for t, p, m in got) == sorted((t, p, q == 1) for t, p, q, _ in sent)
        assert session.ack(reads) == 3
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        session.stop()


def _publish_packet(topic: bytes, payload: bytes, mid: int, *, v5: bool, properties: bytes = b"") -> bytes:
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if mid else b"")
    if v5:
        body += bytes([len(properties)]) + properties
    body += payload
    length = bytearray()
    n = len(body)
    while True:
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([0x32 if mid else 0x30]) + bytes(length) + body


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
@pytest.mark.parametrize("cut", [1, 2, 3, 7, 150, 4096])
def test_publishes_split_from_the_read_buffer_arrive_whole_and_in_order(v5: bool, cut: int) -> None:
    """PUBLISHes read from the socket in pieces of any size (packets cut in their fixed
    header, their length, their topic or their payload), with a PINGRESP between them, each
    reach the callback once, in order, whole, and nothing else does."""
    client = new_client(BrokerAddress.parse("mqtt://127.0.0.1:1"), client_id="t",
                        protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
    client.manual_ack_set(True)
    got: list[tuple[int, str, bytes]] = []
    paho_internals.deliver_publishes(client, lambda mids, topics, payloads: got.extend(zip(mids, topics, payloads)))
    sent = [(n % 7 + 1 if n % 3 else 0, f"t/{n}/ü", bytes([n]) * (n * 37 % 300)) for n in range(40)]
    stream = b"".join(_publish_packet(t.encode(), p, m, v5=v5, properties=b"\x01\x01" if n % 2 else b"")
                      + (b"\xd0\x00" if n == 20 else b"")  # a PINGRESP among them
                      for n, (m, t, p) in enumerate(sent))
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        client._sock = ours  # as connect() leaves it: the tests drive loop_read by hand
        for at in range(0, len(stream), cut):
            theirs.sendall(stream[at:at + cut])
            assert client.loop_read() == paho.MQTT_ERR_SUCCESS
        assert client.loop_read() == paho.MQTT_ERR_SUCCESS  # nothing more to read
    finally:
        ours.close()
        theirs.close()
    assert got == sent


def test_a_malformed_publish_in_the_read_buffer_is_refused_as_paho_refuses_it() -> None:
    """A PUBLISH whose topic runs past its end, after a good one in the same read: the good
    one is delivered, then the read fails with paho's protocol error."""
    client = new_client(BrokerAddress.parse("mqtt://127.0.0.1:1"), client_id="t", protocol=paho.MQTTv311)
    client.manual_ack_set(True)
    got: list[str] = []
    paho_internals.deliver_publishes(client, lambda mids, topics, payloads: got.extend(topics))
    bad = b"\x32\x05\x00\x40ab\x00"  # a 64-byte topic in a 5-byte packet
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        client._sock = ours
        theirs.sendall(_publish_packet(b"t/good", b"{}", 1, v5=False) + bad)
        assert client.loop_read() == paho.MQTT_ERR_PROTOCOL
    finally:
        ours.close()
        theirs.close()
    assert got == ["t/good"]


def test_after_a_packet_cut_by_the_read_the_rest_is_still_split_together() -> None:
    """paho's own read, which takes the PUBLISH cut by the end of a read, stops after it even
    with messages of ours in flight (paho would read one packet more per message in flight):
    the packets after it reach the callback in one call."""
    client = new_client(BrokerAddress.parse("mqtt://127.0.0.1:1"), client_id="t", protocol=paho.MQTTv311)
    client.manual_ack_set(True)
    calls: list[list[str]] = []
    paho_internals.deliver_publishes(client, lambda mids, topics, payloads: calls.append(list(topics)))
    packets = [_publish_packet(f"t/{n}".encode(), b"x" * 50, n + 1, v5=False) for n in range(10)]
    stream = b"".join(packets)
    cut = len(b"".join(packets[:3])) + 20  # inside the fourth
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        client._sock = ours
        for n in range(5):  # QoS 1 messages of ours that the (absent) broker has not acknowledged
            client.publish(f"out/{n}", b"", qos=1)
        assert len(client._out_messages) == 5
        theirs.sendall(stream[:cut])
        assert client.loop_read() == paho.MQTT_ERR_SUCCESS
        theirs.sendall(stream[cut:])
        assert client.loop_read() == paho.MQTT_ERR_SUCCESS
    finally:
        ours.close()
        theirs.close()
    assert calls == [["t/0", "t/1", "t/2"], ["t/3"], [f"t/{n}" for n in range(4, 10)]]
