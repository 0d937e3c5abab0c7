"""The relay's own state: its peers (a publisher or a viewer each), its streams (a
publisher and its viewers, with the keyframe throttle, the packetiser, and the timestamps
that carry on across a change of publisher), and its counters. Used by :mod:`streaming.relay` only;
the decisions that need no I/O (:meth:`Stream.rebase`) are here, with the state they use.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.codecs.base import Encoder

from .aiortc_internals import MarkerJitterBuffer
from .outlets import ViewerOutlet
from .queues import KeyframeThrottle

__all__ = ["Counters", "Peer", "Publisher", "Stream", "Viewer"]

# Where a new publisher's timestamps continue the stream: one frame interval at 30 fps.
_REBASE_GAP_TICKS = 3000


@dataclass
class Counters:
    frames_received: int = 0
    bytes_received: int = 0
    frames_forwarded: int = 0
    bytes_forwarded: int = 0
    frames_dropped: int = 0
    queue_overflows: int = 0
    keyframe_requests: int = 0
    incomplete_frames: int = 0


@dataclass(eq=False)
class Peer:
    id: str
    stream_id: str
    pc: RTCPeerConnection
    setup_timer: asyncio.TimerHandle | None = None
    close_task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class Publisher(Peer):
    receiver: RTCRtpReceiver | None = None
    buffer: MarkerJitterBuffer | None = None
    codec: str = ""  # mime type, e.g. video/VP8


@dataclass(eq=False, kw_only=True)
class Viewer(Peer):
    outlet: ViewerOutlet
    codec: str = ""
    connected: bool = False


@dataclass(eq=False)
class Stream:
    id: str
    publisher: Publisher
    viewers: dict[str, Viewer] = field(default_factory=dict)
    keyframes: KeyframeThrottle = field(default_factory=KeyframeThrottle)
    # Cuts frames into RTP payloads, once for every viewer; kept across a change of
    # publisher with the same codec, so that VP8 picture ids carry on.
    packer: Encoder | None = None
    packer_codec: str = ""
    # Timestamps continue across a change of publisher (each one's start at 0).
    epoch: Publisher | None = None
    offset: int = 0
    last_timestamp: int | None = None

    def rebase(self, publisher: Publisher, timestamp: int) -> int:
        if self.epoch is not publisher:
            self.epoch = publisher
            self.offset = 0 if self.last_timestamp is None else self.last_timestamp + _REBASE_GAP_TICKS - timestamp
        self.last_timestamp = timestamp + self.offset
        return self.last_timestamp
