"""core.paho_internals: the one module that reaches into paho-mqtt. Its start-up check fails
loudly, naming the internal, when one is missing or changed shape; and the PUBLISH path that
skips paho's message objects delivers what was published, over MQTT 5 (with properties it
must skip) and 3.1.1, to a real Mosquitto."""

from __future__ import annotations

import queue
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
        got = [inbox.get(timeout=30) for _ in sent]
        assert sorted((m.topic, m.payload, m.qos) for m in got) == sorted((t, p, q) for t, p, q, _ in sent)
        assert all((m.mid > 0) == (m.qos == 1) for m in got)
        assert session.ack((m.generation, m.mid) for m in got if m.qos) == 3
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        session.stop()
