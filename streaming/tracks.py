"""The track a viewer's sender reads: encoded frames from its :class:`ViewerQueue`."""

from __future__ import annotations

import asyncio
import fractions
from collections.abc import Callable
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .frames import EncodedFrame
from .queues import QueueClosed, ViewerQueue

__all__ = ["ForwardedTrack", "RTP_VIDEO_TIME_BASE"]

RTP_VIDEO_TIME_BASE = fractions.Fraction(1, 90000)


class ForwardedTrack(MediaStreamTrack):
    """A video track that yields ``av.Packet``s, so the sender packetises them with the
    codec's ``pack()`` and never encodes. Timestamps are kept in the 90 kHz RTP clock,
    so they reach the viewer exactly as the publisher sent them (no rounding).

    ``on_sent(seconds)`` gets, for each frame, the time from the relay having it whole to
    its last packet handed to the socket. The sender asks for the next frame only once
    it has sent every packet of the previous one, so that moment is the next ``recv``.
    """

    kind = "video"

    def __init__(self, queue: ViewerQueue, *, on_sent: Callable[[float], None] | None = None) -> None:
        super().__init__()
        self._queue = queue
        self._on_sent = on_sent
        self._in_flight: EncodedFrame | None = None

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        if self._in_flight is not None and self._on_sent is not None:
            self._on_sent(asyncio.get_running_loop().time() - self._in_flight.received_at)
        self._in_flight = None
        try:
            frame = await self._queue.get()
        except QueueClosed:
            self.stop()
            raise MediaStreamError from None
        self._in_flight = frame
        packet = av.Packet(frame.data)
        packet.pts = frame.timestamp
        packet.time_base = RTP_VIDEO_TIME_BASE
        return packet

    def stop(self) -> None:
        super().stop()
        self._queue.close()
