"""A packetised frame's RTP packets for one viewer: the payloads are shared, only the
header differs (RFC 3550 section 5.1). Pure."""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = ["HeaderTemplate", "abs_send_time_offset", "ntp_time", "sequence_number"]

_LEAD = struct.Struct("!BBHL")  # first byte, marker and payload type, sequence number, timestamp
_FIXED_HEADER = 12
_NTP_EPOCH_OFFSET_NS = 2_208_988_800 * 10**9  # from 1900-01-01 (NTP) to 1970-01-01 (Unix)


class HeaderTemplate:
    """One viewer's RTP header, serialized once when negotiation is done, with the fields
    that change per packet written in place: the sequence number, the marker bit, the
    timestamp and the abs-send-time header extension's value. Everything else (version,
    extensions and their order, payload type, SSRC) is what the serializer gave.

    ``header`` is a serialized header (no CSRC, any sequence number and timestamp, marker
    clear); ``abs_send_time_at`` is where the 3 bytes of its abs-send-time value are, or
    None if the header has no such extension (see :func:`abs_send_time_offset`).
    Serializing a header with aiortc costs more than the SRTP protect of the packet; this
    is a join of four strings per packet.
    """

    __slots__ = ("_first", "_payload_type", "_before_abs_send_time", "_after_abs_send_time")

    def __init__(self, header: bytes, *, abs_send_time_at: int | None) -> None:
        if len(header) < _FIXED_HEADER or header[0] >> 6 != 2 or header[0] & 0x0F or header[1] & 0x80:
            raise ValueError("not an RTP header without CSRCs and with the marker clear")
        if abs_send_time_at is not None and not _FIXED_HEADER <= abs_send_time_at <= len(header) - 3:
            raise ValueError("abs-send-time is not inside the header's extensions")
        self._first = header[0]
        self._payload_type = header[1]
        if abs_send_time_at is None:
            self._before_abs_send_time, self._after_abs_send_time = header[8:], None
        else:
            self._before_abs_send_time = header[8:abs_send_time_at]
            self._after_abs_send_time = header[abs_send_time_at + 3:]

    def datagrams(self, payloads: Sequence[bytes], *, first_sequence: int, timestamp: int,
                  abs_send_time: int) -> list[bytes]:
        """One RTP packet per payload: sequence numbers counted up from ``first_sequence``
        (modulo 2**16), the marker bit on the last packet (it ends the picture), and the
        same ``timestamp`` and ``abs_send_time`` (24 bits: 6.18 fixed-point seconds) in all.
        """
        after = self._after_abs_send_time
        rest = self._before_abs_send_time if after is None else \
            b"".join((self._before_abs_send_time, (abs_send_time & 0xFFFFFF).to_bytes(3, "big"), after))
        first, payload_type, pack, join = self._first, self._payload_type, _LEAD.pack, b"".join
        last = len(payloads) - 1
        return [
            join((pack(first, payload_type | 0x80 if i == last else payload_type, (first_sequence + i) & 0xFFFF,
                       timestamp), rest, payload))
            for i, payload in enumerate(payloads)
        ]


def abs_send_time_offset(zeroed: bytes, filled: bytes) -> int | None:
    """Where the abs-send-time value is in a serialized header, from two serializations of
    it that differ only in that value: 0 in ``zeroed``, 0xFFFFFF in ``filled``. None if they
    are the same (the extension was not negotiated). Raises ValueError if they differ in
    anything but one run of 3 bytes."""
    if len(zeroed) != len(filled):
        raise ValueError("the headers differ in length")
    changed = [i for i, (a, b) in enumerate(zip(zeroed, filled, strict=True)) if a != b]
    if not changed:
        return None
    start = changed[0]
    if changed != [start, start + 1, start + 2] or zeroed[start:start + 3] != b"\0\0\0" \
            or filled[start:start + 3] != b"\xff\xff\xff":
        raise ValueError("the headers differ in more than a 3-byte value")
    return start


def ntp_time(unix_ns: int) -> int:
    """``unix_ns`` (nanoseconds since 1970, as ``time.time_ns()``) as a 64-bit NTP timestamp
    (RFC 5905: seconds since 1900 in the high 32 bits, the fraction in the low 32), the
    clock of RTCP sender reports and, its middle 24 bits, of abs-send-time. The same
    value as aiortc's ``current_ntp_time`` (to its microsecond), without a datetime."""
    return ((unix_ns + _NTP_EPOCH_OFFSET_NS) << 32) // 10**9


def sequence_number(datagram: bytes) -> int:
    """The sequence number of a serialized RTP packet."""
    return int.from_bytes(datagram[2:4], "big")
