"""core.mqtt.LoopHandover: messages cross from another thread (paho's, here a plain thread)
to the event loop through a bounded queue; when it is full they are dropped and counted, and
the producing thread never blocks."""

from __future__ import annotations

import asyncio
import threading

from core.mqtt import LoopHandover


def test_a_full_queue_drops_and_counts_and_never_blocks_the_producer() -> None:
    """Five messages into a queue of two: the first two arrive in order, three are counted as
    dropped, and the producing thread finishes without anyone reading the queue."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        handover = LoopHandover(loop, maxsize=2, name="test")
        delivered = asyncio.Event()

        def produce() -> None:
            for i in range(5):
                handover.put(f"t/{i}", b"x")
            # Callbacks run in the order scheduled: once this one runs, every put has landed.
            loop.call_soon_threadsafe(delivered.set)

        producer = threading.Thread(target=produce)
        producer.start()
        await delivered.wait()
        producer.join(timeout=5)
        assert not producer.is_alive()
        assert handover.dropped == 3
        assert [handover.queue.get_nowait()[0] for _ in range(handover.queue.qsize())] == ["t/0", "t/1"]

    asyncio.run(scenario())


def test_a_put_after_the_loop_closed_is_dropped_quietly() -> None:
    """When the app stops, paho may still deliver: the put must not raise on paho's thread."""
    loop = asyncio.new_event_loop()
    handover = LoopHandover(loop, maxsize=1, name="test")
    loop.close()
    handover.put("t", b"x")
    assert handover.queue.qsize() == 0
