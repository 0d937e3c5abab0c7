"""The relay's jitter buffer gives up on a frame whose missing packet never comes back, after
``GAP_GIVE_UP_S`` and no later, on its own clock: the rule is on time, so it is tested with a
clock the test moves, and the relay's end-to-end tests need not time a loaded machine."""

from __future__ import annotations

from aiortc.rtp import RtpPacket

from streaming.aiortc_internals import GAP_GIVE_UP_S, MarkerJitterBuffer, TappedFrame


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def packet(seq: int, *, frame: int, marker: bool) -> RtpPacket:
    p = RtpPacket(payload_type=96, marker=int(marker), sequence_number=seq, timestamp=frame * 3000, ssrc=1234,
                  payload=bytes([frame, seq]))
    p._data = bytes([frame, seq])  # type: ignore[attr-defined]  # set by aiortc's receiver (the depayloaded bytes)
    return p


def test_a_frame_with_a_packet_lost_for_good_is_given_up_after_the_give_up_time_and_not_before() -> None:
    """Frames of two packets; the first packet of frame 2 never arrives. Frame 3 stays held
    while the gap is younger than the give-up time, then comes out marked ``after_loss``
    (the relay forwards nothing until a keyframe) with a picture-loss request for the camera."""
    clock = Clock()
    buffer = MarkerJitterBuffer(clock=clock)
    assert buffer.add(packet(0, frame=1, marker=False)) == (False, None)
    _, first = buffer.add(packet(1, frame=1, marker=True))
    assert isinstance(first, TappedFrame) and first.data == bytes([1, 0, 1, 1]) and not first.after_loss

    # seq 2 (frame 2's first packet) is lost for good.
    assert buffer.add(packet(3, frame=2, marker=True))[1] is None  # the gap starts the clock
    clock.now += GAP_GIVE_UP_S * 0.9
    assert buffer.add(packet(4, frame=3, marker=False))[1] is None  # still waiting for a retransmission
    clock.now += GAP_GIVE_UP_S * 0.2
    pli, third = buffer.add(packet(5, frame=3, marker=True))
    assert pli, "giving up asks the camera for a keyframe"
    assert isinstance(third, TappedFrame) and third.data == bytes([3, 4, 3, 5]) and third.after_loss

    # In step again: the next frame comes out at once, not marked.
    buffer.add(packet(6, frame=4, marker=False))
    _, fourth = buffer.add(packet(7, frame=4, marker=True))
    assert isinstance(fourth, TappedFrame) and not fourth.after_loss


def test_a_retransmission_inside_the_give_up_time_completes_the_frame() -> None:
    """The lost packet arriving again (a NACK answered) before the give-up time releases the
    held frames in order, none of them marked as after a loss."""
    clock = Clock()
    buffer = MarkerJitterBuffer(clock=clock)
    buffer.add(packet(0, frame=1, marker=False))
    buffer.add(packet(1, frame=1, marker=True))
    assert buffer.add(packet(3, frame=2, marker=True))[1] is None
    clock.now += GAP_GIVE_UP_S * 0.5
    _, second = buffer.add(packet(2, frame=2, marker=False))
    assert isinstance(second, TappedFrame) and second.data == bytes([2, 2, 2, 3]) and not second.after_loss
