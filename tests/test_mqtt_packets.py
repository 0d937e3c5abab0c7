"""The load generators' hand-built MQTT 3.1.1 packets (bench/mqtt_packets.py), read back by
the specification's rules: a camera the benchmarks simulate must say what a real one says."""

from __future__ import annotations

import struct

from bench.mqtt_packets import (
    CONNACK,
    PINGREQ,
    PINGRESP,
    PUBACK,
    connect_packet,
    publish_packet,
    remaining_length,
    split_packets,
)


def _decode_remaining(data: bytes) -> tuple[int, int]:
    """(length, bytes it took), by the spec's algorithm."""
    value, multiplier, used = 0, 1, 0
    for byte in data:
        used += 1
        value += (byte & 0x7F) * multiplier
        multiplier *= 128
        if not byte & 0x80:
            break
    return value, used


def test_remaining_length_round_trips_across_the_byte_boundaries() -> None:
    for n in (0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455):
        encoded = remaining_length(n)
        assert _decode_remaining(encoded) == (n, len(encoded))


def test_connect_carries_the_login_and_a_retained_qos1_will() -> None:
    packet = connect_packet("cam-00001", keepalive=30, username="cam-00001", password="s3cret",
                            will=("watchfloor/v1/devices/cam-00001/status", b"offline"))
    length, used = _decode_remaining(packet[1:])
    body = packet[1 + used:]
    assert packet[0] == 0x10 and len(body) == length
    assert body[:6] == b"\x00\x04MQTT" and body[6] == 4
    flags = body[7]
    assert flags == 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02  # user, password, will retain/QoS 1/flag, clean
    assert struct.unpack("!H", body[8:10])[0] == 30
    fields, at = [], 10
    while at < len(body):
        size = struct.unpack("!H", body[at:at + 2])[0]
        fields.append(body[at + 2:at + 2 + size])
        at += 2 + size
    assert fields == [b"cam-00001", b"watchfloor/v1/devices/cam-00001/status", b"offline", b"cam-00001", b"s3cret"]


def test_publish_is_qos1_with_its_packet_id_and_retain_flag() -> None:
    packet = publish_packet(b"a/b", b"{}", 513, retain=True)
    assert packet == b"\x33\x09\x00\x03a/b\x02\x01{}"
    assert publish_packet(b"a/b", b"{}", 1)[0] == 0x32


def test_split_packets_keeps_what_is_incomplete_for_the_next_read() -> None:
    # CONNACK, PUBACK, PINGRESP, then the start of a PUBLISH of 130 bytes
    stream = b"\x20\x02\x00\x00" + b"\x40\x02\x00\x07" + b"\xd0\x00" + b"\x30\x82\x01"
    packets, rest = split_packets(stream)
    assert packets == [(CONNACK, b"\x00\x00"), (PUBACK, b"\x00\x07"), (PINGRESP, b"")]
    assert rest == b"\x30\x82\x01"
    big = b"\x30\x82\x01" + b"x" * 130
    assert split_packets(rest + b"x" * 129) == ([], rest + b"x" * 129)
    assert split_packets(big) == ([(3, b"x" * 130)], b"")
    assert split_packets(PINGREQ) == ([(12, b"")], b"")
