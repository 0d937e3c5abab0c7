"""The bounded queue of frames one viewer cannot take yet, and the throttle on keyframe
requests to the publisher. Both decide without I/O."""

from __future__ import annotations

from collections import deque

from .frames import PacketisedFrame

__all__ = ["KeyframeThrottle", "ViewerQueue"]


class ViewerQueue:
    """Frames waiting for one viewer whose transport cannot take them now, at most
    ``capacity`` of them.

    A viewer that keeps up never queues: :meth:`pass_through` lets a frame go straight to
    it when nothing is waiting. When the queue is full, the frame that does not fit is
    dropped, and so is every frame after it until the next keyframe: a decoder handed a
    delta frame whose reference it never saw would show a corrupt picture until then.
    Frames already queued are never overwritten. A new queue starts in the same state
    (waiting for a keyframe), since a viewer that joins mid-stream cannot decode delta
    frames either. Everything runs on the event loop; one consumer only.
    """

    def __init__(self, *, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._frames: deque[PacketisedFrame] = deque()
        self._closed = False
        self.waiting_for_keyframe = True
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._frames)

    def pass_through(self, frame: PacketisedFrame) -> bool:
        """Whether ``frame`` may go to the viewer now, bypassing the queue: nothing is
        queued and the frame does not follow a gap. False leaves everything as it was
        (then :meth:`offer` it)."""
        if self._closed or self._frames or (self.waiting_for_keyframe and not frame.keyframe):
            return False
        self.waiting_for_keyframe = False
        return True

    def offer(self, frame: PacketisedFrame) -> bool:
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
        return True

    def resync(self) -> None:
        """Drop until the next keyframe from now on (the publisher's stream had a gap)."""
        self.waiting_for_keyframe = True

    def pop(self) -> PacketisedFrame | None:
        """The oldest frame, or None if none is queued."""
        return self._frames.popleft() if self._frames else None

    def close(self) -> None:
        """Drop what is queued; every later offer is refused."""
        self._closed = True
        self._frames.clear()


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
