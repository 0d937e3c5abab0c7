"""The bounded queue between the publisher's fan-out and one viewer's sender, and the
throttle on keyframe requests to the publisher. Both decide without I/O."""

from __future__ import annotations

import asyncio
from collections import deque

from .frames import EncodedFrame

__all__ = ["KeyframeThrottle", "QueueClosed", "ViewerQueue"]


class QueueClosed(Exception):
    """The queue was closed: its viewer is ending."""


class ViewerQueue:
    """Encoded frames waiting for one viewer's sender, at most ``capacity`` of them.

    When the queue is full, the frame that does not fit is dropped, and so is every
    frame after it until the next keyframe: a decoder handed a delta frame whose
    reference it never saw would show a corrupt picture until then. Frames already
    queued are never overwritten. A new queue starts in the same state (waiting for a
    keyframe), since a viewer that joins mid-stream cannot decode delta frames either.

    ``offer`` runs on the event loop, called by the publisher's fan-out; ``get`` is
    awaited by the viewer's sender. One consumer only.
    """

    def __init__(self, *, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._frames: deque[EncodedFrame] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.waiting_for_keyframe = True
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._frames)

    def offer(self, frame: EncodedFrame) -> bool:
        """Queue ``frame``; False if it was dropped (full, closed, or waiting for a keyframe)."""
        if self._closed:
            return False
        if self.waiting_for_keyframe and not frame.keyframe:
            self.dropped += 1
            return False
        if len(self._frames) >= self._capacity:
            self.waiting_for_keyframe = True
            self.dropped += 1
            return False
        self.waiting_for_keyframe = False
        self._frames.append(frame)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        return True

    def resync(self) -> None:
        """Drop until the next keyframe from now on (the publisher's stream had a gap)."""
        self.waiting_for_keyframe = True

    async def get(self) -> EncodedFrame:
        """The oldest frame; waits for one. Raises :class:`QueueClosed` once closed."""
        while not self._frames:
            if self._closed:
                raise QueueClosed
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._frames.popleft()

    def close(self) -> None:
        """Drop what is queued and wake the consumer, which then gets :class:`QueueClosed`."""
        self._closed = True
        self._frames.clear()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class KeyframeThrottle:
    """Decides whether to ask the publisher for a keyframe now.

    Every joining viewer, every lagging viewer and every viewer's own picture-loss
    report wants a keyframe, and one keyframe serves them all. So a request is sent only
    if none is outstanding; an outstanding request is repeated after ``retry_s`` in case
    the PLI or the keyframe was lost. A keyframe arriving clears it.
    """

    def __init__(self, *, retry_s: float = 0.5) -> None:
        self._retry_s = retry_s
        self._sent_at: float | None = None

    def should_request(self, now: float) -> bool:
        if self._sent_at is not None and now - self._sent_at < self._retry_s:
            return False
        self._sent_at = now
        return True

    def keyframe_seen(self) -> None:
        self._sent_at = None
