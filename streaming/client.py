"""The other end of the relay, for tests, benchmarks and the simulated camera: a
publisher (WHIP-style) and a viewer (WHEP-style) that make an offer, hand it to an
*exchange* (a function from offer SDP to answer SDP: the relay in-process, or an HTTP
POST) and apply the answer.

Like the relay, a client never sends its offer before ICE gathering is complete, and
passes its ICE server list explicitly (empty by default).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters

from .aiortc_internals import (
    MarkerJitterBuffer,
    TappedFrame,
    on_keyframe_request,
    restrict_host_candidates,
    send_picture_loss,
    tap_encoded_frames,
    use_marker_jitter_buffer,
)
from .frames import EncodedFrame, is_keyframe, starts_frame
from .queues import KeyframeThrottle
from .sessions import IceServerConfig

__all__ = ["Exchange", "ExchangeRefused", "HttpAnswer", "ViewerPeer", "http_end_session", "http_exchange",
           "start_publisher", "start_viewer"]

Exchange = Callable[[str], Awaitable[str]]
"""Takes the complete offer SDP, returns the answer SDP."""


@dataclass(frozen=True)
class HttpAnswer:
    answer_sdp: str
    location: str | None


class ExchangeRefused(Exception):
    """The other side answered an offer with a status other than ``201 Created``."""

    def __init__(self, url: str, status: int, body: str) -> None:
        super().__init__(f"{url}: {status} {body[:200]}")
        self.status, self.body = status, body


async def http_exchange(url: str, offer_sdp: str, *, token: str | None = None, timeout_s: float = 15.0,
                        client: httpx.AsyncClient | None = None) -> HttpAnswer:
    """POST ``offer_sdp`` as ``application/sdp`` (WHIP, RFC 9725; WHEP in the same shape).

    Expects ``201 Created`` with the answer and a ``Location`` for the session (DELETE it,
    :func:`http_end_session`, to end the session). Raises :class:`ExchangeRefused` on any
    other status, ``httpx.HTTPError`` when the request fails. ``client`` lets a caller with
    many sessions share one connection pool; without it, one is opened for this request.
    """
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient())
        response = await client.post(url, content=offer_sdp.encode(), headers=headers, timeout=timeout_s)
    if response.status_code != 201:
        raise ExchangeRefused(url, response.status_code, response.text)
    location = response.headers.get("location")
    return HttpAnswer(answer_sdp=response.text, location=str(httpx.URL(url).join(location)) if location else None)


async def http_end_session(location: str, *, token: str | None = None, timeout_s: float = 15.0,
                           client: httpx.AsyncClient | None = None) -> None:
    """End a session by DELETE on its ``Location`` (RFC 9725); any status is accepted (a
    404 means it had ended already). Raises ``httpx.HTTPError`` when the request fails."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient())
        await client.delete(location, headers=headers, timeout=timeout_s)


def _peer_connection(ice_servers: Sequence[IceServerConfig]) -> RTCPeerConnection:
    servers = [RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential) for s in ice_servers]
    return RTCPeerConnection(RTCConfiguration(iceServers=servers))


async def _negotiate(pc: RTCPeerConnection, exchange: Exchange, host_addresses: Sequence[str] | None) -> None:
    try:
        if host_addresses is not None:
            restrict_host_candidates(pc, host_addresses)
        await pc.setLocalDescription(await pc.createOffer())  # returns once gathering is complete
        local = pc.localDescription
        assert local is not None
        answer = await exchange(local.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    except BaseException:
        await pc.close()
        raise


def _prefer(transceiver_codecs: list[str]) -> list[RTCRtpCodecCapability]:
    capabilities = RTCRtpSender.getCapabilities("video").codecs
    chosen = [c for mime in transceiver_codecs for c in capabilities if c.mimeType.lower() == mime.lower()]
    return chosen + [c for c in capabilities if c.mimeType.lower() == "video/rtx"]


async def start_publisher(*, track: MediaStreamTrack, exchange: Exchange, codec: str = "video/VP8",
                          ice_servers: Sequence[IceServerConfig] = (), host_addresses: Sequence[str] | None = None,
                          on_keyframe_wanted: Callable[[], None] | None = None) -> RTCPeerConnection:
    """Send ``track`` (raw frames, which aiortc encodes, or ``av.Packet``s already
    encoded) to the other side; returns the connecting peer connection.

    ``on_keyframe_wanted`` replaces aiortc's own keyframe forcing: give it when the track
    yields encoded packets, so that the remote side's PLI reaches your encoder.
    """
    pc = _peer_connection(ice_servers)
    transceiver = pc.addTransceiver(track, direction="sendonly")
    transceiver.setCodecPreferences(_prefer([codec]))
    if on_keyframe_wanted is not None:
        on_keyframe_request(transceiver.sender, on_keyframe_wanted)
    await _negotiate(pc, exchange, host_addresses)
    return pc


@dataclass
class ViewerPeer:
    """A connecting viewer: its peer connection, and the receiver's track (which yields
    decoded frames unless the viewer taps encoded frames)."""

    pc: RTCPeerConnection
    receiver: RTCRtpReceiver
    track: MediaStreamTrack | None


async def start_viewer(*, exchange: Exchange, on_frame: Callable[[EncodedFrame], None] | None = None,
                       ice_servers: Sequence[IceServerConfig] = (), host_addresses: Sequence[str] | None = None,
                       codecs: Sequence[str] = ("video/VP8", "video/H264")) -> ViewerPeer:
    """Receive video from the other side.

    With ``on_frame``, every complete encoded frame is handed to it (on the loop) and
    nothing is decoded. After a frame that lost packets, frames are skipped until the next
    keyframe, which is asked for (PLI) as a browser would. Without it,
    ``ViewerPeer.track`` yields decoded frames. Either way, frames leave the jitter
    buffer on the RTP marker bit.
    """
    pc = _peer_connection(ice_servers)
    transceiver = pc.addTransceiver("video", direction="recvonly")
    transceiver.setCodecPreferences(_prefer(list(codecs)))
    receiver = transceiver.receiver
    track: list[MediaStreamTrack] = []
    pc.on("track", track.append)
    if on_frame is None:
        use_marker_jitter_buffer(receiver)
    else:
        sink = _EncodedSink(receiver, on_frame)
        sink.buffer = tap_encoded_frames(receiver, sink.on_tapped)
    await _negotiate(pc, exchange, host_addresses)
    return ViewerPeer(pc=pc, receiver=receiver, track=track[0] if track and on_frame is None else None)


class _EncodedSink:
    """Hands a viewer's encoded frames on, from a keyframe on, and asks for a keyframe
    when it has to skip (at most one outstanding request, see :class:`KeyframeThrottle`)."""

    def __init__(self, receiver: RTCRtpReceiver, on_frame: Callable[[EncodedFrame], None]) -> None:
        self._receiver = receiver
        self._on_frame = on_frame
        self._synced = False
        self._throttle = KeyframeThrottle()
        self._tasks: set[asyncio.Task[None]] = set()
        self.buffer: MarkerJitterBuffer | None = None

    def on_tapped(self, codec: RTCRtpCodecParameters, frame: TappedFrame) -> None:
        complete = frame.synced or starts_frame(codec.name, frame.first_payload)
        if not complete or frame.after_loss:
            self._synced = False
        if complete:
            keyframe = is_keyframe(codec.name, frame.data)
            if keyframe:
                self._synced = True
                self._throttle.keyframe_seen()
            if self._synced:
                self._on_frame(EncodedFrame(data=frame.data, timestamp=frame.timestamp, keyframe=keyframe))
                return
        ssrc = self.buffer.ssrc if self.buffer is not None else None
        loop = asyncio.get_running_loop()
        if ssrc is not None and self._throttle.should_request(loop.time()):
            task = loop.create_task(send_picture_loss(self._receiver, ssrc))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
