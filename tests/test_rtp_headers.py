"""One viewer's RTP packets (streaming/rtp_headers.py), pure: the header template must
write exactly what aiortc's own serializer writes for the same fields."""

from __future__ import annotations

import datetime
import random

import pytest
from aiortc.clock import datetime_to_ntp
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from streaming.rtp_headers import HeaderTemplate, abs_send_time_offset, ntp_time, sequence_number

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


def extensions_map(ids: dict[str, int]) -> HeaderExtensionsMap:
    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpParameters(
        headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=uri) for uri, i in ids.items()]))
    return extensions


def serialized(extensions: HeaderExtensionsMap, *, mid: str | None, abs_send_time: int, sequence: int = 0,
               timestamp: int = 0, marker: bool = False, payload: bytes = b"") -> bytes:
    packet = RtpPacket(payload_type=96, sequence_number=sequence, timestamp=timestamp, ssrc=0x1234ABCD,
                       marker=int(marker), payload=payload)
    packet.extensions.mid = mid
    packet.extensions.abs_send_time = abs_send_time
    return packet.serialize(extensions)


def template(extensions: HeaderExtensionsMap, mid: str | None) -> HeaderTemplate:
    """Made as the writer makes it: two serializations, abs-send-time 0 and all ones."""
    zeroed = serialized(extensions, mid=mid, abs_send_time=0)
    at = abs_send_time_offset(zeroed, serialized(extensions, mid=mid, abs_send_time=0xFFFFFF))
    return HeaderTemplate(zeroed, abs_send_time_at=at)


@pytest.mark.parametrize(("ids", "mid"), [
    ({MID: 1, ABS_SEND_TIME: 3}, "0"),  # aiortc's own ids: one-byte extension headers
    ({ABS_SEND_TIME: 2, MID: 9}, "video-long-mid"),  # another order and a longer value
    ({MID: 15, ABS_SEND_TIME: 3}, "0"),  # an id above 14: two-byte extension headers
    ({MID: 1}, "0"),  # no abs-send-time negotiated
    ({}, None),  # no extensions at all
])
def test_template_packets_are_what_aiortc_serializes(ids: dict[str, int], mid: str | None) -> None:
    """For random sequence numbers (across the wrap), timestamps and abs-send-times, every
    packet of a frame is byte for byte aiortc's serialization of the same fields, with
    the marker bit on the last packet only."""
    extensions = extensions_map(ids)
    header = template(extensions, mid)
    rnd = random.Random(17)
    cases = [(65534, 4), (65535, 1), *((rnd.randrange(1 << 16), rnd.randrange(1, 6)) for _ in range(50))]
    for first, count in cases:
        timestamp, abs_send_time = rnd.randrange(1 << 32), rnd.randrange(1 << 24)
        payloads = [rnd.randbytes(rnd.randrange(1, 1200)) for _ in range(count)]
        packets = header.datagrams(payloads, first_sequence=first, timestamp=timestamp, abs_send_time=abs_send_time)
        expected = [serialized(extensions, mid=mid, abs_send_time=abs_send_time, sequence=(first + i) & 0xFFFF,
                               timestamp=timestamp, marker=i == len(payloads) - 1, payload=payload)
                    for i, payload in enumerate(payloads)]
        assert packets == expected
        assert [sequence_number(p) for p in packets] == [(first + i) & 0xFFFF for i in range(len(payloads))]


def test_abs_send_time_is_found_only_where_it_is() -> None:
    """The offset is that of the 3-byte value; no extension gives None; headers that differ
    elsewhere, or in length, are refused."""
    extensions = extensions_map({MID: 1, ABS_SEND_TIME: 3})
    zeroed = serialized(extensions, mid="0", abs_send_time=0)
    filled = serialized(extensions, mid="0", abs_send_time=0xFFFFFF)
    at = abs_send_time_offset(zeroed, filled)
    assert at is not None and RtpPacket.parse(zeroed[:at] + b"\x01\x02\x03" + zeroed[at + 3:],
                                              extensions).extensions.abs_send_time == 0x010203
    assert abs_send_time_offset(zeroed, zeroed) is None
    with pytest.raises(ValueError):
        abs_send_time_offset(zeroed, filled[:-1])
    with pytest.raises(ValueError):
        abs_send_time_offset(zeroed, serialized(extensions, mid="1", abs_send_time=0xFFFFFF))
    with pytest.raises(ValueError):
        abs_send_time_offset(zeroed, serialized(extensions, mid="0", abs_send_time=0x00FFFF))


def test_template_refuses_what_it_cannot_patch() -> None:
    """A header with CSRCs, the marker set, or an offset outside its extensions."""
    extensions = extensions_map({MID: 1, ABS_SEND_TIME: 3})
    header = serialized(extensions, mid="0", abs_send_time=0)
    with pytest.raises(ValueError):
        HeaderTemplate(bytes([header[0] | 1]) + header[1:], abs_send_time_at=None)
    with pytest.raises(ValueError):
        HeaderTemplate(serialized(extensions, mid="0", abs_send_time=0, marker=True), abs_send_time_at=None)
    for at in (4, len(header) - 2):
        with pytest.raises(ValueError):
            HeaderTemplate(header, abs_send_time_at=at)


@pytest.mark.parametrize("instant", [
    datetime.datetime(2026, 12, 6, 22, 50, 1, 123456, tzinfo=datetime.timezone.utc),
    datetime.datetime(2036, 2, 7, 6, 28, 15, 999999, tzinfo=datetime.timezone.utc),  # just before NTP's era 1
    datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc),
])
def test_ntp_time_is_aiortcs(instant: datetime.datetime) -> None:
    """The same 64-bit NTP timestamp aiortc computes for the same microsecond."""
    unix_ns = (instant - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)) // datetime.timedelta(
        microseconds=1) * 1000
    assert ntp_time(unix_ns) == datetime_to_ntp(instant)
