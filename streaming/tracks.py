"""The track a viewer's sender holds: it never yields a frame, since the relay writes
that viewer's RTP packets itself (:class:`streaming.aiortc_internals.RtpWriter`)."""

from __future__ import annotations

import asyncio
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

__all__ = ["IdleTrack"]


class IdleTrack(MediaStreamTrack):
    """A video track whose ``recv`` waits until the track stops. The sender's own RTP
    loop parks in it (costing nothing per frame) instead of polling for a track, as it
    does when it has none."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._stopped: asyncio.Future[None] | None = None

    async def recv(self) -> av.Packet[Any]:
        if self.readyState == "live":
            self._stopped = asyncio.get_running_loop().create_future()
            await self._stopped
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)
