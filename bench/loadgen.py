"""A load generator for the benchmarks: offers a fixed rate of telemetry at QoS 1.

Runs as its own process (``python bench/loadgen.py URL RATE SECONDS [DEVICES [CLIENT_ID
[FIRST]]]``: devices ``load-FIRST`` onwards, so several generators can split a fleet) so that the load
does not share the interpreter with what is measured. It speaks MQTT 3.1.1 over a raw
socket with pre-built packets (bench/mqtt_packets.py): paho would cost more CPU per message than the ingest it
is meant to load. Each payload carries ``ts`` = the time it was sent, so the receiver can
measure publish-to-X latency on the same clock.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from datetime import datetime, timezone

import orjson
from mqtt_packets import connect_packet, publish_packet


def telemetry_payload(seq: int, device_index: int, now: str) -> bytes:
    """A camera's telemetry report as the contract has it, sent at ``now`` (RFC 3339)."""
    return orjson.dumps({
        "seq": seq, "ts": now,
        "battery": {"pct": 77.5, "charging": False, "temp_c": 29.0},
        "gps": {"lat": 51.5 + device_index * 1e-5, "lon": -0.12, "accuracy_m": 6.0,
                "speed_mps": 1.3, "heading_deg": 90.0},
        "recording": "buffering", "storage_pct": 30.0, "docked": False, "firmware": "4.2.1",
    })


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _drain(sock: socket.socket, acked: list[int]) -> None:
    """Read CONNACK and PUBACKs (4 bytes each) until the socket closes."""
    pending = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        pending += chunk
        whole = len(pending) // 4 * 4
        acked[0] += whole // 4
        pending = pending[whole:]


def run(url: str, rate: float, seconds: float, devices: int, client_id: str, first: int = 0) -> int:
    host, port = url.removeprefix("mqtt://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(client_id))
    acked = [0]
    threading.Thread(target=_drain, args=(sock, acked), daemon=True).start()
    topics = [f"watchfloor/v1/devices/load-{d:05d}/telemetry".encode() for d in range(first, first + devices)]
    seqs = [0] * devices
    tick = 0.01
    sent = 0
    packet_id = 0
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        if elapsed >= seconds:
            break
        due = int(rate * min(elapsed + tick, seconds)) - sent
        if due > 0:
            now = utc_now()
            chunks = []
            for _ in range(due):
                d = sent % devices
                seqs[d] += 1
                packet_id = packet_id % 65535 + 1
                payload = telemetry_payload(seqs[d], d, now)
                chunks.append(publish_packet(topics[d], payload, packet_id))
                sent += 1
            sock.sendall(b"".join(chunks))
        time.sleep(max(0.0, started + elapsed + tick - time.monotonic()))
    deadline = time.monotonic() + 30
    while acked[0] < sent + 1 and time.monotonic() < deadline:  # +1: the CONNACK
        time.sleep(0.05)
    sock.close()
    print(f"sent {sent} acked {acked[0] - 1}", flush=True)
    return sent


if __name__ == "__main__":
    url, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    devices = int(sys.argv[4]) if len(sys.argv) > 4 else 22_000
    run(url, rate, seconds, devices, client_id=sys.argv[5] if len(sys.argv) > 5 else "bench-loadgen",
        first=int(sys.argv[6]) if len(sys.argv) > 6 else 0)
