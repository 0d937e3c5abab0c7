"""The relay's per-viewer queue and keyframe-request throttle (streaming/queues.py), pure:
no peer connection, and the throttle is given the time."""

from __future__ import annotations

import asyncio

import pytest

from streaming.frames import EncodedFrame
from streaming.queues import KeyframeThrottle, QueueClosed, ViewerQueue


def frame(n: int, *, key: bool = False) -> EncodedFrame:
    return EncodedFrame(data=bytes([n % 256]) * 20, timestamp=n * 3000, keyframe=key)


def test_viewer_queue_drops_to_the_next_keyframe() -> None:
    """The per-viewer queue never overwrites: when full, the frame that does not fit and
    every frame after it are dropped until a keyframe, which starts the queue again. A
    new queue waits for a keyframe too."""

    async def scenario() -> None:
        q = ViewerQueue(capacity=3)
        assert not q.offer(frame(0))  # a delta frame before any keyframe is useless
        assert q.offer(frame(1, key=True)) and q.offer(frame(2)) and q.offer(frame(3))
        assert not q.offer(frame(4))  # full
        assert not q.offer(frame(5))  # still dropping although there is room soon
        assert [(await q.get()).timestamp for _ in range(3)] == [3000, 6000, 9000]
        assert not q.offer(frame(6))  # room now, but 4 and 5 are missing: wait for a keyframe
        assert q.offer(frame(7, key=True)) and q.offer(frame(8))
        assert [(await q.get()).timestamp for _ in range(2)] == [21000, 24000]
        assert q.dropped == 4
        q.close()
        assert not q.offer(frame(9, key=True))

    asyncio.run(scenario())


def test_a_full_queue_keeps_what_it_holds_and_takes_the_next_keyframe_once_there_is_room() -> None:
    """A keyframe arriving while the queue is still full is dropped as well (nothing queued
    is overwritten); the first keyframe that fits restarts it."""

    async def scenario() -> None:
        q = ViewerQueue(capacity=1)
        assert q.offer(frame(1, key=True))
        assert not q.offer(frame(2, key=True))  # full, keyframe or not
        assert len(q) == 1 and (await q.get()).timestamp == 3000
        assert not q.offer(frame(3))
        assert q.offer(frame(4, key=True))
        assert q.dropped == 2

    asyncio.run(scenario())


def test_resync_drops_until_a_keyframe_and_keeps_what_is_queued() -> None:
    """After a gap in the publisher's stream, delta frames are dropped until a keyframe;
    frames queued before the gap still reach the viewer."""

    async def scenario() -> None:
        q = ViewerQueue(capacity=5)
        assert q.offer(frame(1, key=True)) and q.offer(frame(2))
        q.resync()
        assert not q.offer(frame(3))
        assert q.offer(frame(4, key=True))
        assert [(await q.get()).timestamp for _ in range(3)] == [3000, 6000, 12000]

    asyncio.run(scenario())


def test_get_waits_for_a_frame_and_close_wakes_it() -> None:
    """A waiting consumer gets the next frame offered; closing wakes a waiting consumer
    with QueueClosed, drops what is queued, and every later get raises too."""

    async def scenario() -> None:
        q = ViewerQueue(capacity=2)
        waiting = asyncio.create_task(q.get())
        await asyncio.sleep(0)  # one turn of the loop: the task is now parked in get()
        assert not waiting.done()
        assert q.offer(frame(1, key=True))
        assert (await waiting).timestamp == 3000

        parked = asyncio.create_task(q.get())
        await asyncio.sleep(0)
        assert not parked.done()
        q.close()
        with pytest.raises(QueueClosed):
            await parked

        full = ViewerQueue(capacity=2)
        assert full.offer(frame(1, key=True))
        full.close()
        assert len(full) == 0
        with pytest.raises(QueueClosed):
            await full.get()

    asyncio.run(scenario())


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
