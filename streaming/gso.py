"""Linux UDP generic segmentation offload (GSO) for the relay's writer: one ``sendmsg``
carries several datagrams, which the kernel cuts apart (``UDP_SEGMENT``, Linux 4.18 and
later), so a frame crosses the UDP/IP stack once per viewer instead of once per packet.
The receiver still gets separate datagrams.

The kernel cuts a buffer into segments of one size, the last may be shorter; so a frame's
datagrams are sent as runs (:func:`gso_runs`, pure) that obey that rule and its limits.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
from collections.abc import Sequence

__all__ = ["GSO_REFUSED", "MAX_SEGMENTS", "MAX_TOTAL", "gso_option", "gso_runs", "supports_gso"]

# The option's number is 103 in the kernel's headers; Python names it only from 3.12 on.
UDP_SEGMENT: int | None = getattr(socket, "UDP_SEGMENT", 103) if sys.platform == "linux" else None
# UDP_MAX_SEGMENTS: 64 up to Linux 6.x, raised to 128 since; the lower holds on every kernel.
MAX_SEGMENTS = 64
# The segments of one call are one UDP datagram inside the kernel until they are cut, so
# their total must fit an IPv4 datagram (65535 - 20 - 8); IPv6 allows 20 more bytes.
MAX_TOTAL = 65_507
# What the kernel answers when it will not segment on this path: EIO (no checksum offload
# on the device, or IPsec on the route), EINVAL (a segment larger than the path's MTU),
# ENOPROTOOPT and EOPNOTSUPP (a kernel or socket without it). Anything else (EAGAIN,
# ENOBUFS) is about this send, not GSO.
GSO_REFUSED = frozenset((errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP))

_SEGMENT_SIZE = struct.Struct("=H")


def gso_runs(datagrams: Sequence[bytes], *, max_segments: int = MAX_SEGMENTS,
             max_total: int = MAX_TOTAL) -> list[Sequence[bytes]]:
    """``datagrams`` cut, in order, into runs the kernel can send in one call each: every
    datagram of a run has the first one's size except the last, which may be shorter but
    not empty (an empty last segment would vanish); at most ``max_segments`` datagrams and
    ``max_total`` bytes in all. A run of one is a plain datagram (also one too large for
    any run, which the kernel refuses as it would alone)."""
    runs: list[Sequence[bytes]] = []
    start, count = 0, len(datagrams)
    while start < count:
        size = total = len(datagrams[start])
        end = start + 1
        # An empty first datagram would mean a segment size of 0: no segmentation at all.
        while size and end < count and end - start < max_segments:
            following = len(datagrams[end])
            if following > size or not following or total + following > max_total:
                break
            total += following
            end += 1
            if following < size:
                break
        runs.append(datagrams[start:end])
        start = end
    return runs


def gso_option(segment_size: int) -> list[tuple[int, int, bytes]]:
    """The ancillary data that makes one ``sendmsg`` a run of ``segment_size`` segments."""
    assert UDP_SEGMENT is not None
    return [(socket.SOL_UDP, UDP_SEGMENT, _SEGMENT_SIZE.pack(segment_size))]


def supports_gso(sock: socket.socket) -> bool:
    """Whether ``sock`` is a UDP socket over IP on a Linux kernel that knows UDP_SEGMENT.
    Asked once per socket: a kernel older than 4.18 answers ENOPROTOOPT here, but would
    silently ignore the option in ``sendmsg`` and send a run as one datagram."""
    if UDP_SEGMENT is None or sock.family not in (socket.AF_INET, socket.AF_INET6) \
            or sock.type != socket.SOCK_DGRAM:
        return False
    try:
        sock.getsockopt(socket.SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True
