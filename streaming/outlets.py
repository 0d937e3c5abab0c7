"""One viewer's way out of the relay: its RTP numbering, its writer, and the bounded
queue for the frames its transport cannot take yet."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from .aiortc_internals import RtpWriter
from .frames import PacketisedFrame
from .queues import ViewerQueue

__all__ = ["ViewerOutlet"]

logger = logging.getLogger(__name__)


class ViewerOutlet:
    """Sends packetised frames to one viewer with its own sequence numbers (from a random
    start below 2**15, as aiortc does, far from a wrap that would break SRTP) and its own
    random timestamp offset.

    A frame goes out at once, inside :meth:`offer`, when nothing is queued and the
    writer is ready: no task switch, per packet or per frame. Otherwise it waits in the
    :class:`ViewerQueue` (bounded; when full, frames are dropped until the next keyframe)
    and a task sends the queue out as the writer allows, then ends. So a viewer that
    cannot keep up holds back no other viewer and costs only its own queue.

    ``on_sent(seconds)`` gets, for each frame sent, the time from the relay having it whole
    to its last packet handed to the socket. ``on_failed()`` is called (on the loop) if
    sending the queue raised anything but ``ConnectionError``, which the peer connection
    reports itself.
    """

    def __init__(
        self, writer: RtpWriter, queue: ViewerQueue, *, on_sent: Callable[[float], None] | None = None
    ) -> None:
        self.queue = queue
        self._writer = writer
        self._on_sent = on_sent
        self._sequence = random.randrange(1 << 15)
        self._origin = random.randrange(1 << 32)
        self._drain: asyncio.Task[None] | None = None
        self.on_failed: Callable[[], None] | None = None

    def offer(self, frame: PacketisedFrame) -> bool:
        """Send ``frame`` now or queue it; False if it was dropped (see :class:`ViewerQueue`)."""
        if self._drain is None and self._writer.ready() and self.queue.pass_through(frame):
            self._writer.write(frame.payloads, first_sequence=self._next_sequence(frame),
                               timestamp=self._timestamp(frame))
            self._sent(frame)
            return True
        if not self.queue.offer(frame):
            return False
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self._send_queued())
        return True

    def close(self) -> None:
        self.queue.close()
        if self._drain is not None:
            self._drain.cancel()

    def _next_sequence(self, frame: PacketisedFrame) -> int:
        """The sequence number of ``frame``'s first packet; the frame takes the next ones."""
        first = self._sequence
        self._sequence = (first + len(frame.payloads)) & 0xFFFF
        return first

    def _timestamp(self, frame: PacketisedFrame) -> int:
        return (self._origin + frame.timestamp) & 0xFFFFFFFF

    def _sent(self, frame: PacketisedFrame) -> None:
        if self._on_sent is not None:
            self._on_sent(asyncio.get_running_loop().time() - frame.received_at)

    async def _send_queued(self) -> None:
        try:
            while (frame := self.queue.pop()) is not None:
                first, timestamp = self._next_sequence(frame), self._timestamp(frame)
                if self._writer.ready():
                    self._writer.write(frame.payloads, first_sequence=first, timestamp=timestamp)
                else:
                    await self._writer.write_waiting(frame.payloads, first_sequence=first, timestamp=timestamp)
                self._sent(frame)
        except ConnectionError:
            self.queue.close()  # the viewer's connection ended: the relay closes it
        except Exception:
            logger.exception("sending to a viewer failed")
            self.queue.close()
            if self.on_failed is not None:
                self.on_failed()
        finally:
            self._drain = None
