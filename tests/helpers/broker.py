"""Waiting on the broker's own answers instead of sleeping: CONNACK, SUBACK.

A test that sleeps "long enough" for a subscription to reach the broker passes on a quiet
machine and loses messages on a loaded one; these wait for the packet that says it happened."""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as paho

__all__ = ["connect_and_wait", "subscribe_and_wait"]


def connect_and_wait(client: paho.Client, host: str, port: int, *, timeout: float = 10.0,
                     **connect_args: Any) -> None:
    """Connect, start the network loop, and return once the broker's CONNACK accepted us."""
    done = threading.Event()
    codes: list[Any] = []
    previous = client.on_connect

    def on_connect(c: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any = None) -> None:
        codes.append(reason_code)
        done.set()
        if previous is not None:
            previous(c, userdata, flags, reason_code, properties)

    client.on_connect = on_connect
    client.connect(host, port, **connect_args)
    client.loop_start()
    assert done.wait(timeout), f"no CONNACK within {timeout}s"
    client.on_connect = previous
    assert not codes[0].is_failure, f"connection refused: {codes[0]}"


def subscribe_and_wait(client: paho.Client, topic: str, qos: int = 1, *, timeout: float = 10.0) -> None:
    """Subscribe and return once the broker's SUBACK granted it (the loop must be running)."""
    acked: dict[int, list[Any]] = {}
    done = threading.Condition()

    def on_subscribe(c: paho.Client, userdata: Any, mid: int, reason_codes: list[Any], properties: Any) -> None:
        with done:
            acked[mid] = reason_codes
            done.notify_all()

    client.on_subscribe = on_subscribe
    with done:
        result, mid = client.subscribe(topic, qos)
        assert result == paho.MQTT_ERR_SUCCESS, f"SUBSCRIBE to {topic} not sent: {result}"
        assert done.wait_for(lambda: mid in acked, timeout), f"no SUBACK for {topic} within {timeout}s"
    client.on_subscribe = None
    assert not any(code.is_failure for code in acked[mid]), f"subscription to {topic} refused: {acked[mid]}"
