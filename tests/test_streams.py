"""The relay's stream state (streaming/streams.py), pure: timestamps that carry on across
a change of publisher."""

from __future__ import annotations

from aiortc import RTCPeerConnection

from streaming.streams import Publisher, Stream


def _publisher(name: str) -> Publisher:
    return Publisher(id=name, stream_id="cam-1", pc=RTCPeerConnection())  # never connected


def test_timestamps_continue_one_frame_after_the_last_when_the_publisher_changes() -> None:
    """The first publisher's timestamps pass through; a new publisher (starting at its own
    zero) continues one frame interval (3000 ticks) after the last timestamp sent, so a
    viewer's decoder never sees time go backwards."""
    first, second = _publisher("a"), _publisher("b")
    stream = Stream(id="cam-1", publisher=first)
    assert [stream.rebase(first, t) for t in (0, 3000, 6000)] == [0, 3000, 6000]
    stream.publisher = second
    assert [stream.rebase(second, t) for t in (90_000, 93_000)] == [9000, 12000]
    assert stream.rebase(first, 9000) == 15000  # back to the first: a new epoch again
