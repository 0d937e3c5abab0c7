"""MQTT 3.1.1 packets built by hand, for the load generators (bench/loadgen.py,
bench/fleet_cameras.py): paho would cost more CPU per message than what they load.

Only what a camera sends (CONNECT with login and Last Will, PUBLISH, PINGREQ, DISCONNECT) and
a splitter for what the broker sends back (CONNACK, PUBACK, PINGRESP)."""

from __future__ import annotations

import struct

__all__ = ["CONNACK", "DISCONNECT", "PINGREQ", "PINGRESP", "PUBACK", "connect_packet", "publish_packet",
           "remaining_length", "split_packets", "string"]

# Control packet types (the high nibble of the first byte).
CONNACK, PUBACK, PINGRESP = 2, 4, 13
PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"


def remaining_length(n: int) -> bytes:
    """The variable-length "remaining length" of a fixed header."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def connect_packet(client_id: str, *, keepalive: int = 60, username: str | None = None,
                   password: str | None = None, will: tuple[str, bytes] | None = None) -> bytes:
    """CONNECT, clean session; ``will`` = (topic, payload), sent at QoS 1 and retained, as a
    camera's Last Will is (docs/mqtt-contract.md)."""
    flags = 0x02
    tail = string(client_id.encode())
    if will is not None:
        flags |= 0x04 | 0x08 | 0x20  # will, will QoS 1, will retain
        tail += string(will[0].encode()) + string(will[1])
    if username is not None:
        flags |= 0x80
        tail += string(username.encode())
    if password is not None:
        flags |= 0x40
        tail += string(password.encode())
    body = string(b"MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + tail
    return b"\x10" + remaining_length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, packet_id: int, *, retain: bool = False) -> bytes:
    """PUBLISH at QoS 1 (``packet_id`` 1–65535)."""
    body = string(topic) + struct.pack("!H", packet_id) + payload
    return bytes([0x32 | (0x01 if retain else 0)]) + remaining_length(len(body)) + body


def split_packets(buffer: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The whole packets at the start of ``buffer`` as (type, body), and what is left over
    (a packet not yet complete)."""
    packets: list[tuple[int, bytes]] = []
    at = 0
    while at + 2 <= len(buffer):
        length, shift, pos = 0, 0, at + 1
        while True:
            if pos >= len(buffer):
                return packets, buffer[at:]
            byte = buffer[pos]
            length |= (byte & 0x7F) << shift
            pos += 1
            if not byte & 0x80:
                break
            shift += 7
        if pos + length > len(buffer):
            break
        packets.append((buffer[at] >> 4, buffer[pos:pos + length]))
        at = pos + length
    return packets, buffer[at:]
