"""A packetised frame's RTP packets for one viewer: the payloads are shared, only the
header differs (RFC 3550 section 5.1). Pure."""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = ["rtp_datagrams", "sequence_number"]

_MARKER_PT_SEQUENCE = struct.Struct("!BH")


def rtp_datagrams(header: bytes, payloads: Sequence[bytes], first_sequence: int) -> list[bytes]:
    """One RTP packet per payload: ``header`` (a serialized RTP header with its extensions,
    any sequence number, marker clear) with the sequence numbers counted up from
    ``first_sequence`` (modulo 2**16) and the marker bit on the last packet, which ends
    the picture. Everything else in the header (version, extensions, payload type,
    timestamp, SSRC) is the same in every packet of a frame."""
    lead, tail = header[:1], header[4:]
    payload_type = header[1] & 0x7F
    last = len(payloads) - 1
    pack = _MARKER_PT_SEQUENCE.pack
    return [
        b"".join(
            (
                lead,
                pack(payload_type | 0x80 if i == last else payload_type, (first_sequence + i) & 0xFFFF),
                tail,
                payload,
            )
        )
        for i, payload in enumerate(payloads)
    ]


def sequence_number(datagram: bytes) -> int:
    """The sequence number of a serialized RTP packet."""
    return int.from_bytes(datagram[2:4], "big")
