"""The relay's per-viewer queue and keyframe-request throttle (streaming/queues.py), pure:
no peer connection, and the throttle is given the time."""

from __future__ import annotations

import pytest

from streaming.frames import PacketisedFrame
from streaming.queues import KeyframeThrottle, ViewerQueue


def frame(n: int, *, key: bool = False) -> PacketisedFrame:
    return PacketisedFrame(payloads=(bytes([n % 256]) * 20,), timestamp=n * 3000, keyframe=key)


def timestamps(q: ViewerQueue) -> list[int]:
    out = []
    while (f := q.pop()) is not None:
        out.append(f.timestamp)
    return out


def test_viewer_queue_drops_to_the_next_keyframe() -> None:
    """The per-viewer queue never overwrites: when full, the frame that does not fit and
    every frame after it are dropped until a keyframe, which starts the queue again. A
    new queue waits for a keyframe too."""
    q = ViewerQueue(capacity=3)
    assert not q.offer(frame(0))  # a delta frame before any keyframe is useless
    assert q.offer(frame(1, key=True)) and q.offer(frame(2)) and q.offer(frame(3))
    assert not q.offer(frame(4))  # full
    assert not q.offer(frame(5))  # still dropping although there is room soon
    assert timestamps(q) == [3000, 6000, 9000]
    assert not q.offer(frame(6))  # room now, but 4 and 5 are missing: wait for a keyframe
    assert q.offer(frame(7, key=True)) and q.offer(frame(8))
    assert timestamps(q) == [21000, 24000]
    assert q.dropped == 4
    q.close()
    assert not q.offer(frame(9, key=True))


def test_a_full_queue_keeps_what_it_holds_and_takes_the_next_keyframe_once_there_is_room() -> None:
    """A keyframe arriving while the queue is still full is dropped as well (nothing queued
    is overwritten); the first keyframe that fits restarts it."""
    q = ViewerQueue(capacity=1)
    assert q.offer(frame(1, key=True))
    assert not q.offer(frame(2, key=True))  # full, keyframe or not
    assert len(q) == 1 and timestamps(q) == [3000]
    assert not q.offer(frame(3))
    assert q.offer(frame(4, key=True))
    assert q.dropped == 2


def test_resync_drops_until_a_keyframe_and_keeps_what_is_queued() -> None:
    """After a gap in the publisher's stream, delta frames are dropped until a keyframe;
    frames queued before the gap still reach the viewer."""
    q = ViewerQueue(capacity=5)
    assert q.offer(frame(1, key=True)) and q.offer(frame(2))
    q.resync()
    assert not q.offer(frame(3))
    assert q.offer(frame(4, key=True))
    assert timestamps(q) == [3000, 6000, 12000]


def test_pass_through_only_when_nothing_waits_and_no_gap() -> None:
    """A frame bypasses the queue only when nothing is queued (order is kept) and it does
    not follow a gap; refusing changes nothing, so the frame can then be offered."""
    q = ViewerQueue(capacity=2)
    assert not q.pass_through(frame(1))  # a new viewer needs a keyframe first
    assert q.waiting_for_keyframe and q.dropped == 0
    assert q.pass_through(frame(2, key=True)) and q.pass_through(frame(3))
    assert q.offer(frame(4))
    assert not q.pass_through(frame(5))  # 4 is still queued: 5 must wait behind it
    assert q.offer(frame(5)) and timestamps(q) == [12000, 15000]
    q.resync()
    assert not q.pass_through(frame(6)) and q.pass_through(frame(7, key=True))
    q.close()
    assert not q.pass_through(frame(8, key=True))


def test_close_drops_what_is_queued() -> None:
    q = ViewerQueue(capacity=2)
    assert q.offer(frame(1, key=True))
    q.close()
    assert len(q) == 0 and q.pop() is None and not q.offer(frame(2, key=True))


def test_a_queue_holds_at_least_one_frame() -> None:
    with pytest.raises(ValueError):
        ViewerQueue(capacity=0)


def test_keyframe_throttle_sends_one_request_and_repeats_it_after_retry() -> None:
    """One outstanding keyframe request serves every viewer that wants one; it is repeated
    after ``retry_s`` in case it was lost, and a keyframe arriving clears it at once."""
    throttle = KeyframeThrottle(retry_s=0.5)
    assert throttle.should_request(10.0)
    assert not throttle.should_request(10.0)
    assert not throttle.should_request(10.49)
    assert throttle.should_request(10.5)  # lost? ask again
    assert not throttle.should_request(10.6)  # the repeat is outstanding now
    throttle.keyframe_seen()
    assert throttle.should_request(10.6)
