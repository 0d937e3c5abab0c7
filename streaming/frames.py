"""Encoded video frames as the relay moves them, and how to tell a keyframe (pure)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EncodedFrame", "PacketisedFrame", "is_keyframe", "starts_frame"]

_VP8_START_CODE = b"\x9d\x01\x2a"


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One complete encoded picture, as it came out of the publisher's jitter buffer.

    ``timestamp`` is in RTP clock ticks (90 kHz), counted from the stream's first frame;
    ``data`` is the codec's bitstream (VP8 frame, or H264 Annex B with start codes).
    """

    data: bytes
    timestamp: int
    keyframe: bool


@dataclass(frozen=True, slots=True)
class PacketisedFrame:
    """One complete encoded picture cut into RTP payloads, once, for every viewer.

    ``payloads`` are the codec's RTP payloads in order (the last one ends the picture);
    ``timestamp`` is in RTP clock ticks (90 kHz), before each viewer's own offset;
    ``received_at`` is when the relay had the picture whole (event loop clock), to
    measure how long forwarding took.
    """

    payloads: tuple[bytes, ...]
    timestamp: int
    keyframe: bool
    received_at: float = 0.0


def is_keyframe(codec: str, data: bytes) -> bool:
    """Whether ``data`` is a picture a decoder can start from.

    VP8 (RFC 6386 section 9.1): the frame tag's P bit is 0 and the start code follows it.
    H264: the access unit holds an IDR slice (NAL type 5) or begins with SPS (7). Any
    other codec is never a keyframe here, so a viewer of it would wait forever: the relay
    only negotiates VP8 and H264.
    """
    name = codec.lower()
    if name == "vp8":
        return len(data) >= 10 and (data[0] & 1) == 0 and data[3:6] == _VP8_START_CODE
    if name == "h264":
        return any(nal_type in (5, 7) for nal_type in _h264_nal_types(data))
    return False


def _h264_nal_types(data: bytes) -> list[int]:
    types = []
    pos = data.find(b"\x00\x00\x01")
    while pos != -1 and pos + 3 < len(data):
        types.append(data[pos + 3] & 0x1F)
        pos = data.find(b"\x00\x00\x01", pos + 3)
    return types


def starts_frame(codec: str, payload: bytes) -> bool:
    """Whether an RTP payload is the first packet of a picture.

    VP8 (RFC 7741 section 4.2): the payload descriptor's S bit is set and its partition
    index is 0. H264 (RFC 6184 section 5.2): a single NAL unit or STAP-A packet, or the
    first fragment of an FU-A.
    """
    if not payload:
        return False
    name = codec.lower()
    if name == "vp8":
        return bool(payload[0] & 0x10) and (payload[0] & 0x0F) == 0
    if name == "h264":
        nal_type = payload[0] & 0x1F
        if 1 <= nal_type <= 24:
            return True
        return nal_type == 28 and len(payload) > 1 and bool(payload[1] & 0x80)
    return False
