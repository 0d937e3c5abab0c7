"""Live view's broker connection: the paho adapter.

It subscribes to the cameras' command replies, their events and :data:`LIVE_VIEW_TOPIC`, and
publishes commands to cameras and live-view changes to every API process. paho's network
thread crosses to the event loop in one place, a :class:`core.mqtt.LoopHandover` (bounded:
when full, a message is dropped and counted in :attr:`LiveViewBroker.dropped`; a request
whose answer was dropped then expires instead of being answered). Events that carry no
consent are skipped on paho's thread, before any parsing.

The inbox is shared by every camera, so each camera's messages pass a token bucket of its own
first (on paho's thread): a camera flooding its events or replies loses its own excess,
counted in :attr:`LiveViewBroker.over_rate`, and cannot fill the inbox and drop other cameras'
answers. A camera's real traffic here is a reply per request and a consent event now and
then, far below the limit.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import orjson
import paho.mqtt.client as paho

from core.commands import command
from core.contract import TOPIC_ROOT, Channel, topic_for
from core.mqtt import BrokerAddress, BufferedClient, LoopHandover, new_client
from core.ratelimit import TokenBuckets
from services.live_view.effects import Announce, SendCommand, announcement

__all__ = ["LIVE_VIEW_TOPIC", "LiveViewBroker"]

#: Live-view changes, published by whichever API process made them, read by every API process.
LIVE_VIEW_TOPIC = "watchfloor/v1/live-view"
_REPLIES = f"{TOPIC_ROOT}/+/{Channel.COMMAND_REPLIES.value}"
_EVENTS = f"{TOPIC_ROOT}/+/{Channel.EVENTS.value}"
_CONSENT_EVENTS = (b'"watch_me"', b'"recording_stopped"', b'"docked"')

log = logging.getLogger(__name__)


class LiveViewBroker:
    """One paho client: ``start`` on the event loop, then read :attr:`inbox`; ``close`` at the end."""

    def __init__(self, *, mqtt_url: str, client_id: str, command_expires_s: int, inbox_max: int,
                 per_device_per_s: float, per_device_burst: int) -> None:
        self._address = BrokerAddress.parse(mqtt_url)
        self._command_expires_s = command_expires_s
        self._inbox_max = inbox_max
        self._per_device = TokenBuckets(rate_per_s=per_device_per_s, burst=per_device_burst)
        self.over_rate = 0  # cameras' messages dropped over their own rate (written on paho's thread only)
        self._client: BufferedClient = new_client(self._address, client_id=client_id, protocol=paho.MQTTv311)
        self._client.on_connect = self._on_connect  # type: ignore[assignment]
        self._client.on_message = self._on_message  # type: ignore[assignment]
        self._handover: LoopHandover | None = None

    def start(self) -> None:
        self._handover = LoopHandover(asyncio.get_running_loop(), maxsize=self._inbox_max, name="live view")
        self._client.connect_async(self._address.host, self._address.port, keepalive=30)
        self._client.loop_start()

    @property
    def inbox(self) -> asyncio.Queue[tuple[str, bytes]]:
        assert self._handover is not None, "start() first"
        return self._handover.queue

    @property
    def dropped(self) -> int:
        return self._handover.dropped if self._handover is not None else 0

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def send(self, effect: SendCommand) -> str:
        """Publish a command to a camera (QoS 1, queued); returns its id."""
        command_id = effect.command_id or f"c-{uuid.uuid4().hex[:16]}"
        payload = command(command_id=command_id, kind=effect.kind, params=dict(effect.params),
                          expires_s=self._command_expires_s)
        self._client.publish(topic_for(effect.device_id, Channel.COMMANDS), payload, qos=1)
        return command_id

    def announce(self, effect: Announce) -> None:
        """Publish a live-view change to every API process (this one too)."""
        self._client.publish(LIVE_VIEW_TOPIC, orjson.dumps(announcement(effect)), qos=1)

    # paho's thread

    def _on_connect(self, client: paho.Client, u: object, f: object, reason: object, p: object) -> None:
        client.subscribe([(_REPLIES, 1), (_EVENTS, 1), (LIVE_VIEW_TOPIC, 1)])

    def _on_message(self, client: paho.Client, u: object, message: paho.MQTTMessage) -> None:
        payload = bytes(message.payload)
        if message.topic.endswith("/events") and not any(e in payload for e in _CONSENT_EVENTS):
            return
        if message.topic != LIVE_VIEW_TOPIC:  # a camera's: watchfloor/v1/{device}/{channel}
            device_id = message.topic.rsplit("/", 2)[-2]
            if self._per_device.take(device_id) > 0:
                self.over_rate += 1
                if self.over_rate % 1000 == 1:  # a flood would otherwise flood the log too
                    log.warning("live view: %s is over its message rate; dropped (%d in all)", device_id,
                                self.over_rate)
                return
        if self._handover is not None:
            self._handover.put(message.topic, payload)
