"""The track a viewer's sender reads: encoded frames from its :class:`ViewerQueue`."""

from __future__ import annotations

import fractions
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .queues import QueueClosed, ViewerQueue

__all__ = ["ForwardedTrack", "RTP_VIDEO_TIME_BASE"]

RTP_VIDEO_TIME_BASE = fractions.Fraction(1, 90000)


class ForwardedTrack(MediaStreamTrack):
    """A video track that yields ``av.Packet``s, so the sender packetises them with the
    codec's ``pack()`` and never encodes. Timestamps are kept in the 90 kHz RTP clock,
    so they reach the viewer exactly as the publisher sent them (no rounding)."""

    kind = "video"

    def __init__(self, queue: ViewerQueue) -> None:
        super().__init__()
        self._queue = queue

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            frame = await self._queue.get()
        except QueueClosed:
            self.stop()
            raise MediaStreamError from None
        packet = av.Packet(frame.data)
        packet.pts = frame.timestamp
        packet.time_base = RTP_VIDEO_TIME_BASE
        return packet

    def stop(self) -> None:
        super().stop()
        self._queue.close()
