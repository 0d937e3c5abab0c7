"""What the relay's caller hands in and gets back: ICE servers in; sessions, events and
statistics out (:class:`streaming.relay.Relay`, which re-exports them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .metrics import HistogramSnapshot

__all__ = ["IceServerConfig", "RelayEvent", "RelayStats", "Session"]


@dataclass(frozen=True)
class IceServerConfig:
    """One STUN or TURN server (the WebRTC ``RTCIceServer`` dictionary)."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class Session:
    """A publisher or viewer peer connection, as the caller sees it.

    ``id`` is random and unguessable (it names the WHIP/WHEP resource); ``answer_sdp``
    is complete, candidates included.
    """

    id: str
    stream_id: str
    kind: Literal["publisher", "viewer"]
    answer_sdp: str


@dataclass(frozen=True)
class RelayEvent:
    """Something that happened to a session. ``viewer_joined`` comes once the viewer's
    peer connection is connected (not when its offer is answered). ``reason`` says why
    it ended (empty for starts): the ``reason`` passed to :meth:`Relay.close`, ``connection_failed``,
    ``connection_closed``, ``setup_timeout`` (never connected), ``replaced`` (another
    publisher took the stream), ``publisher_ended`` (a viewer whose publisher went
    away), ``codec_changed`` (the new publisher's codec differs from the one this viewer
    negotiated), ``send_failed`` (writing to the viewer raised; logged), or ``relay_closed``."""

    kind: Literal["publisher_ended", "viewer_ended", "viewer_joined", "publisher_started"]
    stream_id: str
    session_id: str
    reason: str


@dataclass(frozen=True)
class RelayStats:
    """Gauges (streams, viewers: connected ones only) and counters since the relay started.

    ``frames_dropped`` counts frames a viewer did not get: its queue was full, or it was
    waiting for a keyframe (after joining, after an overflow, after a gap in the
    publisher's stream). ``queue_overflows`` counts how often a viewer's queue was full.
    ``incomplete_frames`` counts losses in the publisher's stream: frames its jitter
    buffer gave up on, or could not tell the start of.
    ``forward_delay`` is what the relay adds per frame and viewer: from the frame being
    whole in the publisher's jitter buffer to its last packet sent to the viewer.
    """

    streams: int
    viewers: int
    frames_received: int
    bytes_received: int
    frames_forwarded: int
    bytes_forwarded: int
    frames_dropped: int
    queue_overflows: int
    keyframe_requests: int
    incomplete_frames: int
    forward_delay: HistogramSnapshot
