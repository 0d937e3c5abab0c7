"""The relay: one publisher per stream, its encoded frames forwarded to every viewer.

Nothing is decoded or re-encoded. The publisher's receiver hands each complete frame
(released on the RTP marker bit) to the stream's fan-out, which cuts it into RTP
payloads once and, in the same call, writes each viewer's packets: the shared payloads
behind that viewer's own header (SSRC, sequence numbers, timestamp offset, payload
type), through its own SRTP session (:class:`ViewerOutlet`). A viewer whose transport
cannot take a frame at once gets it queued (bounded, dropping to the next keyframe)
and holds back no one else. Keyframes are asked of the publisher when a
viewer connects, when a viewer's queue overflows, and when a viewer reports picture
loss, at most one outstanding request per stream (:class:`KeyframeThrottle`).

Signalling stays outside: the caller (the WHIP/WHEP routes) passes an SDP offer and
gets back a :class:`Session` whose ``answer_sdp`` already holds every ICE candidate
(aiortc does not trickle, so the answer is returned only once gathering is complete).
Everything runs on the caller's asyncio loop. The values the caller sees are in
:mod:`streaming.sessions` (re-exported here), the relay's own state in :mod:`streaming.streams`.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

import av
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters

from .aiortc_internals import (
    AiortcChanged,
    RtpWriter,
    TappedFrame,
    check_aiortc,
    negotiated_codec,
    on_keyframe_request,
    restrict_host_candidates,
    send_picture_loss,
    tap_encoded_frames,
)
from .errors import InvalidOffer, NoSuchStream
from .frames import PacketisedFrame, is_keyframe, starts_frame
from .metrics import DelayHistogram
from .offer import OfferLimits, check_offer
from .outlets import ViewerOutlet
from .queues import KeyframeThrottle, ViewerQueue
from .sessions import IceServerConfig, RelayEvent, RelayStats, Session
from .streams import Counters, Peer, Publisher, Stream, Viewer
from .tracks import IdleTrack

__all__ = ["IceServerConfig", "Relay", "RelayEvent", "RelayStats", "Session"]

logger = logging.getLogger(__name__)

# Codecs the relay forwards, in the order it prefers them from a publisher.
FORWARDED_CODECS = ("video/VP8", "video/H264")
RTP_VIDEO_TIME_BASE = fractions.Fraction(1, 90000)


class Relay:
    """Publishers and viewers of live video streams, in one process.

    ``ice_servers`` is passed to every peer connection as is; empty (the default) means
    host candidates only, never a public STUN server (aiortc adds Google's when given
    none). ``host_addresses`` limits host candidates to those local addresses (default:
    every interface). ``viewer_queue_frames`` bounds each viewer's queue (see
    :class:`ViewerQueue`): 10 frames is a third of a second at 30 fps. A session that is
    not connected ``setup_timeout_s`` after its answer is closed. Offers are held to
    ``offer_limits`` (:mod:`streaming.offer`) before aiortc parses them. ``on_event`` is
    called on the loop for every :class:`RelayEvent`; its exceptions are logged and ignored.
    Raises :class:`~streaming.aiortc_internals.AiortcChanged` if aiortc lacks an internal
    the relay uses.
    """

    def __init__(
        self,
        *,
        ice_servers: Sequence[IceServerConfig] = (),
        viewer_queue_frames: int = 10,
        on_event: Callable[[RelayEvent], None] | None = None,
        host_addresses: Sequence[str] | None = None,
        setup_timeout_s: float = 30.0,
        offer_limits: OfferLimits = OfferLimits(),
    ) -> None:
        if viewer_queue_frames < 1:
            raise ValueError("viewer_queue_frames must be at least 1")
        check_aiortc()
        self._ice_servers = tuple(ice_servers)
        self._queue_frames = viewer_queue_frames
        self._on_event = on_event
        self._host_addresses = tuple(host_addresses) if host_addresses is not None else None
        self._setup_timeout_s = setup_timeout_s
        self._offer_limits = offer_limits
        self._streams: dict[str, Stream] = {}
        self._peers: dict[str, Peer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._counters = Counters()
        self._forward_delay = DelayHistogram()
        self._closed = False

    # -- queries ---------------------------------------------------------------

    def viewer_count(self, stream_id: str) -> int:
        """Viewers of ``stream_id`` whose peer connection is connected: a session that was
        answered but never connects (an offer posted in a loop) watches nothing."""
        stream = self._streams.get(stream_id)
        return sum(v.connected for v in stream.viewers.values()) if stream else 0

    def is_publishing(self, stream_id: str) -> bool:
        return stream_id in self._streams

    def stats(self) -> RelayStats:
        c = self._counters
        return RelayStats(
            streams=len(self._streams), viewers=sum(self.viewer_count(s) for s in self._streams),
            frames_received=c.frames_received, bytes_received=c.bytes_received,
            frames_forwarded=c.frames_forwarded, bytes_forwarded=c.bytes_forwarded,
            frames_dropped=c.frames_dropped, queue_overflows=c.queue_overflows,
            keyframe_requests=c.keyframe_requests, incomplete_frames=c.incomplete_frames,
            forward_delay=self._forward_delay.snapshot())

    # -- sessions --------------------------------------------------------------

    async def publish(self, stream_id: str, offer_sdp: str) -> Session:
        """Take a publisher's offer for ``stream_id``; returns the answer.

        A stream that already has a publisher gets the new one in its place: the old
        one ends (``replaced``) and its viewers stay, and see the new publisher from its
        next keyframe (viewers whose codec the new publisher does not send end with
        ``codec_changed``). Raises :class:`InvalidOffer`.
        """
        self._check_open()
        sdp = check_offer(offer_sdp, role="publish", limits=self._offer_limits)
        pc = self._new_peer_connection()
        publisher = Publisher(id=uuid.uuid4().hex, stream_id=stream_id, pc=pc)
        transceiver = pc.addTransceiver("video", direction="recvonly")
        transceiver.setCodecPreferences(_capabilities(FORWARDED_CODECS))
        answer = await self._answer(publisher, transceiver, sdp,
                                    before_answer=lambda: self._tap(publisher, transceiver))
        if self._closed:
            await self._discard(publisher)
            raise RuntimeError("the relay is closed")
        self._install(publisher)
        old = self._streams.get(stream_id)
        if old is None:
            self._streams[stream_id] = Stream(id=stream_id, publisher=publisher)
        else:
            previous = old.publisher
            old.publisher = publisher
            old.keyframes = KeyframeThrottle()
            for viewer in list(old.viewers.values()):
                if viewer.codec.lower() != publisher.codec.lower():
                    self._begin_close(viewer, "codec_changed")
                else:
                    viewer.outlet.queue.resync()
            self._begin_close(previous, "replaced")
        self._emit("publisher_started", publisher, "")
        return Session(id=publisher.id, stream_id=stream_id, kind="publisher", answer_sdp=answer)

    async def view(self, stream_id: str, offer_sdp: str) -> Session:
        """Take a viewer's offer for ``stream_id``; returns the answer.

        The answer offers only the publisher's codec. Raises :class:`NoSuchStream` if
        nobody publishes ``stream_id`` (also if the publisher leaves while the answer is
        being made) and :class:`InvalidOffer`.
        """
        self._check_open()
        stream = self._streams.get(stream_id)
        if stream is None:
            raise NoSuchStream(stream_id)
        sdp = check_offer(offer_sdp, role="view", limits=self._offer_limits)
        codec = stream.publisher.codec
        pc = self._new_peer_connection()
        transceiver = pc.addTransceiver("video", direction="sendonly")
        transceiver.setCodecPreferences(_capabilities((codec,)))
        transceiver.sender.replaceTrack(IdleTrack())
        try:
            writer = RtpWriter(transceiver)
        except AiortcChanged:
            await pc.close()
            raise
        outlet = ViewerOutlet(writer, ViewerQueue(capacity=self._queue_frames), on_sent=self._forward_delay.record)
        viewer = Viewer(id=uuid.uuid4().hex, stream_id=stream_id, pc=pc, outlet=outlet, codec=codec)

        def failed() -> None:
            self._begin_close(viewer, "send_failed")

        outlet.on_failed = failed
        on_keyframe_request(transceiver.sender, lambda: self._viewer_wants_keyframe(viewer))
        answer = await self._answer(viewer, transceiver, sdp, before_answer=None)
        if self._closed or self._streams.get(stream_id) is not stream or stream.publisher.codec != codec:
            await self._discard(viewer)
            raise NoSuchStream(stream_id)
        stream.viewers[viewer.id] = viewer
        self._install(viewer)
        return Session(id=viewer.id, stream_id=stream_id, kind="viewer", answer_sdp=answer)

    async def close(self, session_id: str, *, reason: str) -> None:
        """End a publisher (and so its viewers) or a viewer. Unknown or already closed
        sessions are ignored; returns once the peer connection is closed."""
        peer = self._peers.get(session_id)
        if peer is not None:
            await asyncio.shield(self._begin_close(peer, reason))

    async def aclose(self) -> None:
        """Close every session and wait for the closes to finish. Idempotent; afterwards
        ``publish`` and ``view`` raise ``RuntimeError``."""
        self._closed = True
        publishers = [p for p in self._peers.values() if isinstance(p, Publisher)]
        for peer in [*publishers, *self._peers.values()]:
            self._begin_close(peer, "relay_closed")
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- set-up ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the relay is closed")

    def _new_peer_connection(self) -> RTCPeerConnection:
        # An explicit list, even empty: RTCPeerConnection() without one adds a public
        # STUN server, which costs seconds per handshake where it cannot be reached.
        servers = [RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
                   for s in self._ice_servers]
        return RTCPeerConnection(RTCConfiguration(iceServers=servers))

    async def _answer(self, peer: Peer, transceiver: RTCRtpTransceiver, sdp: str,
                      before_answer: Callable[[], None] | None) -> str:
        """setRemoteDescription, answer, gather; the complete local SDP. Closes the peer
        connection on any failure (including cancellation: the HTTP client went away)."""
        pc = peer.pc
        done = False
        try:
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as exc:  # aiortc raises several types for an offer it cannot take
                raise InvalidOffer(f"cannot use the offer: {exc}") from exc
            codec = negotiated_codec(transceiver)
            if transceiver.mid is None or codec is None:
                raise InvalidOffer("no video section the relay can use")
            for other in pc.getTransceivers():
                if other is not transceiver:
                    other.direction = "inactive"  # audio, extra video: not relayed, never decoded
            if isinstance(peer, Publisher):
                peer.codec = codec.mimeType
            if before_answer is not None:
                before_answer()
            if self._host_addresses is not None:
                restrict_host_candidates(pc, self._host_addresses)
            try:
                await pc.setLocalDescription(await pc.createAnswer())
            except Exception as exc:  # an offer aiortc took but cannot answer is still the offer's fault
                raise InvalidOffer(f"cannot answer the offer: {exc}") from exc
            local = pc.localDescription
            assert local is not None
            done = True
            return local.sdp
        finally:
            if not done:
                await pc.close()

    def _tap(self, publisher: Publisher, transceiver: RTCRtpTransceiver) -> None:
        receiver = transceiver.receiver
        publisher.receiver = receiver
        publisher.buffer = tap_encoded_frames(receiver, lambda codec, frame: self._on_frame(publisher, codec, frame))

    def _install(self, peer: Peer) -> None:
        """Register ``peer`` and close it when its connection fails, closes, or never comes up."""
        self._peers[peer.id] = peer
        pc = peer.pc

        def on_state() -> None:
            state = pc.connectionState
            if state == "connected":
                if peer.setup_timer is not None:
                    peer.setup_timer.cancel()
                    peer.setup_timer = None
                if isinstance(peer, Viewer) and not peer.connected and peer.close_task is None:
                    peer.connected = True
                    self._viewer_wants_keyframe(peer)
                    self._emit("viewer_joined", peer, "")
            elif state in ("failed", "closed"):
                self._begin_close(peer, f"connection_{state}")

        pc.on("connectionstatechange", on_state)
        if pc.connectionState in ("failed", "closed"):  # went down while we answered
            self._begin_close(peer, f"connection_{pc.connectionState}")
        elif pc.connectionState == "connected":
            on_state()
        else:
            loop = asyncio.get_running_loop()
            peer.setup_timer = loop.call_later(self._setup_timeout_s, self._setup_expired, peer)

    def _setup_expired(self, peer: Peer) -> None:
        peer.setup_timer = None
        if peer.pc.connectionState != "connected":
            self._begin_close(peer, "setup_timeout")

    # -- media -----------------------------------------------------------------

    def _on_frame(self, publisher: Publisher, codec: RTCRtpCodecParameters, frame: TappedFrame) -> None:
        """A complete frame from a publisher (on the loop, inside its RTP handling)."""
        stream = self._streams.get(publisher.stream_id)
        if stream is None or stream.publisher is not publisher:
            return
        counters = self._counters
        complete = frame.synced or starts_frame(codec.name, frame.first_payload)
        if not complete or frame.after_loss:
            # The buffer lost packets or joined mid-frame: what follows until the next
            # keyframe cannot be decoded by anyone.
            counters.incomplete_frames += 1
            for viewer in stream.viewers.values():
                viewer.outlet.queue.resync()
            self._request_keyframe(stream)
            if not complete:
                return
        size = len(frame.data)
        counters.frames_received += 1
        counters.bytes_received += size
        keyframe = is_keyframe(codec.name, frame.data)
        if keyframe:
            stream.keyframes.keyframe_seen()
        timestamp = stream.rebase(publisher, frame.timestamp)
        if not any(viewer.connected for viewer in stream.viewers.values()):
            return  # a publisher nobody watches costs this much and no more
        received_at = asyncio.get_running_loop().time()
        packetised = PacketisedFrame(payloads=self._packetise(stream, codec, frame.data, timestamp),
                                     timestamp=timestamp, keyframe=keyframe, received_at=received_at)
        failed: list[Viewer] = []
        for viewer in stream.viewers.values():
            if not viewer.connected:
                continue
            queue = viewer.outlet.queue
            was_waiting = queue.waiting_for_keyframe
            try:
                sent = viewer.outlet.offer(packetised)
            except Exception:  # one viewer's broken transport must not cost the others this frame
                logger.exception("sending to viewer %s failed", viewer.id)
                failed.append(viewer)
                continue
            if sent:
                counters.frames_forwarded += 1
                counters.bytes_forwarded += size
                continue
            counters.frames_dropped += 1
            if not was_waiting:
                counters.queue_overflows += 1
            self._request_keyframe(stream)
        for viewer in failed:
            self._begin_close(viewer, "send_failed")

    @staticmethod
    def _packetise(stream: Stream, codec: RTCRtpCodecParameters, data: bytes, timestamp: int) -> tuple[bytes, ...]:
        """The frame's RTP payloads, as aiortc's sender would cut them, once for all viewers."""
        if stream.packer is None or stream.packer_codec != codec.mimeType:
            stream.packer, stream.packer_codec = get_encoder(codec), codec.mimeType
        packet = av.Packet(data)
        packet.pts = timestamp
        packet.time_base = RTP_VIDEO_TIME_BASE
        payloads, _ = stream.packer.pack(packet)
        return tuple(payloads)

    def _viewer_wants_keyframe(self, viewer: Viewer) -> None:
        stream = self._streams.get(viewer.stream_id)
        if stream is not None and viewer.id in stream.viewers:
            self._request_keyframe(stream)

    def _request_keyframe(self, stream: Stream) -> None:
        publisher = stream.publisher
        receiver, buffer = publisher.receiver, publisher.buffer
        if receiver is None or buffer is None or buffer.ssrc is None:
            return  # nothing received yet: the publisher's first frame is a keyframe anyway
        if not stream.keyframes.should_request(asyncio.get_running_loop().time()):
            return
        self._counters.keyframe_requests += 1
        self._spawn(send_picture_loss(receiver, buffer.ssrc))

    # -- tear-down -------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _begin_close(self, peer: Peer, reason: str) -> asyncio.Task[None]:
        """Detach ``peer`` now (and its viewers, for a publisher that was not replaced),
        tell ``on_event``, and close its peer connection in a task. Idempotent."""
        if peer.close_task is not None:
            return peer.close_task
        if peer.setup_timer is not None:
            peer.setup_timer.cancel()
            peer.setup_timer = None
        stream = self._streams.get(peer.stream_id)
        ended_viewers: list[Viewer] = []
        if isinstance(peer, Viewer):
            peer.outlet.close()
            if stream is not None:
                stream.viewers.pop(peer.id, None)
        elif stream is not None and stream.publisher is peer:
            del self._streams[peer.stream_id]
            ended_viewers = list(stream.viewers.values())
            stream.viewers.clear()
        peer.close_task = self._spawn(self._close_peer(peer))
        self._emit("publisher_ended" if isinstance(peer, Publisher) else "viewer_ended", peer, reason)
        for viewer in ended_viewers:
            self._begin_close(viewer, "publisher_ended")
        return peer.close_task

    async def _close_peer(self, peer: Peer) -> None:
        try:
            await peer.pc.close()
        except Exception:
            logger.exception("closing session %s failed", peer.id)
        finally:
            self._peers.pop(peer.id, None)

    async def _discard(self, peer: Peer) -> None:
        if isinstance(peer, Viewer):
            peer.outlet.close()
        await peer.pc.close()

    def _emit(self, kind: Literal["publisher_ended", "viewer_ended", "viewer_joined", "publisher_started"],
              peer: Peer, reason: str) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(RelayEvent(kind=kind, stream_id=peer.stream_id, session_id=peer.id, reason=reason))
        except Exception:
            logger.exception("relay event callback failed")


def _capabilities(mime_types: Sequence[str]) -> list[RTCRtpCodecCapability]:
    """The codec capabilities for these mime types (every profile), in that order, then RTX."""
    capabilities = RTCRtpSender.getCapabilities("video").codecs
    chosen = [c for mime in mime_types for c in capabilities if c.mimeType.lower() == mime.lower()]
    return chosen + [c for c in capabilities if c.mimeType.lower() == "video/rtx"]

