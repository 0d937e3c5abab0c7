"""The live-view relay with real peer connections in one process, on loopback only:
a publisher, the relay, and viewers that either tap the encoded frames they receive
(to compare them byte for byte with what was sent) or decode them (to read the frame
number drawn into the picture)."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import fractions
import gc
import logging
import re
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import av
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streaming import InvalidOffer, NoSuchStream, Relay, RelayEvent
from streaming.aiortc_internals import send_picture_loss
from streaming.client import ExchangeRefused, ViewerPeer, http_exchange, start_publisher, start_viewer
from streaming.frames import EncodedFrame, is_keyframe
from streaming.offer import filter_candidates
from streaming.synthetic import SyntheticVideoTrack, read_frame_number
from tests.helpers.waiting import run

LOOPBACK = ("127.0.0.1",)
T = TypeVar("T")


async def until(condition: Callable[[], object], *, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class RecordingCamera(MediaStreamTrack):
    """A camera that encodes VP8 itself and remembers every frame it sent, byte for byte.

    Like a real camera it sends a keyframe first and then only when asked (its GOP is
    longer than any test), so a viewer sees a keyframe only if the relay asks for one.
    """

    kind = "video"

    def __init__(self, *, width: int = 320, height: int = 240, fps: int = 30) -> None:
        super().__init__()
        self.picture = SyntheticVideoTrack(label="CAM-TEST", width=width, height=height, fps=fps)
        self.fps = fps
        self.sent: list[bytes] = []
        self.keyframes_sent = 0
        self.keyframe_wanted = False
        self._codec = av.CodecContext.create("libvpx", "w")
        self._codec.width, self._codec.height = width, height
        self._codec.pix_fmt = "yuv420p"
        self._codec.bit_rate = 500_000
        self._codec.gop_size = 100_000
        self._codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        self._start: float | None = None

    def want_keyframe(self) -> None:
        self.keyframe_wanted = True

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        n = len(self.sent)
        self._start = self._start if self._start is not None else loop.time()
        await asyncio.sleep(max(0.0, self._start + n / self.fps - loop.time()))
        frame = self.picture.draw(n)
        if self.keyframe_wanted or n == 0:
            frame.pict_type = av.video.frame.PictureType.I
            self.keyframe_wanted = False
        data = b"".join(bytes(p) for p in self._codec.encode(frame))
        if is_keyframe("vp8", data):
            self.keyframes_sent += 1
        self.sent.append(data)
        packet = av.Packet(data)
        packet.pts = n * (90000 // self.fps)
        packet.time_base = fractions.Fraction(1, 90000)
        return packet


Exchange = Callable[[str], Awaitable[str]]


def exchange_with(call: Callable[[str], Awaitable[Any]], sessions: list[str] | None = None) -> Exchange:
    async def exchange(offer: str) -> str:
        session = await call(offer)
        if sessions is not None:
            sessions.append(session.id)
        return str(session.answer_sdp)
    return exchange


async def publish(relay: Relay, stream: str, track: MediaStreamTrack, sessions: list[str] | None = None,
                  on_keyframe_wanted: Callable[[], None] | None = None) -> RTCPeerConnection:
    return await start_publisher(track=track, exchange=exchange_with(lambda o: relay.publish(stream, o), sessions),
                                 host_addresses=LOOPBACK, on_keyframe_wanted=on_keyframe_wanted)


async def tap_viewer(relay: Relay, stream: str, frames: list[EncodedFrame],
                     sessions: list[str] | None = None) -> ViewerPeer:
    return await start_viewer(exchange=exchange_with(lambda o: relay.view(stream, o), sessions),
                              on_frame=frames.append, host_addresses=LOOPBACK)


@dataclasses.dataclass
class WatchedCamera:
    """A relay with a recording camera publishing and one tapped viewer connected and
    getting its frames: the arrange step of the tests of a viewer's send path."""

    relay: Relay
    camera: RecordingCamera
    publisher: RTCPeerConnection
    viewer: ViewerPeer
    frames: list[EncodedFrame]
    viewer_id: str

    @property
    def writer(self) -> Any:
        """The viewer's RtpWriter, whose path the tests replace."""
        return self.relay._peers[self.viewer_id].outlet._writer  # type: ignore[attr-defined]

    async def close(self) -> None:
        await self.viewer.pc.close()
        await self.publisher.close()
        await self.relay.aclose()


async def watched_camera() -> WatchedCamera:
    """A :class:`WatchedCamera` whose viewer has had its first ten frames."""
    relay = Relay(host_addresses=LOOPBACK)
    camera = RecordingCamera()
    publisher = await publish(relay, "cam-1", camera, on_keyframe_wanted=camera.want_keyframe)
    frames: list[EncodedFrame] = []
    ids: list[str] = []
    viewer = await tap_viewer(relay, "cam-1", frames, ids)
    await until(lambda: len(frames) >= 10, what="the viewer's first frames")
    return WatchedCamera(relay, camera, publisher, viewer, frames, ids[0])


def index_in(sent: list[bytes], frames: list[EncodedFrame]) -> list[int]:
    """Where each received frame is in what the camera sent (frames are unique: each
    picture differs, and the search starts after the previous match)."""
    positions, start = [], 0
    for frame in frames:
        at = sent.index(frame.data, start)
        positions.append(at)
        start = at + 1
    return positions


def own_threads() -> int:
    """Threads other than the default executor's, which grows lazily up to its limit."""
    return sum(1 for t in threading.enumerate() if not t.name.startswith("asyncio_"))


def live_peer_connections() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, RTCPeerConnection))


# -- forwarding -------------------------------------------------------------------------------


def test_two_viewers_receive_exactly_what_the_camera_sent() -> None:
    """Publisher → relay → two viewers: each viewer's first frame is a keyframe, and from
    there every frame arrives, in order, byte-identical to the camera's encoded frame,
    with the camera's timestamps (3000 ticks apart at 30 fps). Nothing is re-encoded."""

    async def scenario() -> None:
        relay = Relay(host_addresses=LOOPBACK)
        camera = RecordingCamera()
        a: list[EncodedFrame] = []
        b: list[EncodedFrame] = []
        pub = await publish(relay, "cam-1", camera, on_keyframe_wanted=camera.want_keyframe)
        await until(lambda: len(camera.sent) > 10, what="camera running")
        viewers = [await tap_viewer(relay, "cam-1", a), await tap_viewer(relay, "cam-1", b)]
        await until(lambda: relay.viewer_count("cam-1") == 2, what="both viewers connected")
        await until(lambda: len(a) > 45 and len(b) > 45, timeout=30, what="45 frames at each viewer")
        for frames in (a, b):
            assert frames[0].keyframe
            positions = index_in(camera.sent, frames)
            assert positions == list(range(positions[0], positions[0] + len(frames))), "a frame was lost"
            assert [f.timestamp - frames[0].timestamp for f in frames] == [3000 * i for i in range(len(frames))]
        stats = relay.stats()
        assert stats.streams == 1 and stats.viewers == 2
        assert stats.frames_forwarded >= len(a) + len(b)
        assert stats.frames_dropped <= 2 * len(camera.sent)  # only frames before each viewer's keyframe
        for v in viewers:
            await v.pc.close()
        await pub.close()
        await relay.aclose()

    run(scenario())


def record_rtp(viewer: ViewerPeer) -> list[tuple[int, int, int, int]]:
    """(SSRC, sequence number, payload type, timestamp) of every RTP packet this viewer's
    receiver is handed from now on (RTX included, before it is unwrapped)."""
    packets: list[tuple[int, int, int, int]] = []
    handle = viewer.receiver._handle_rtp_packet

    async def record(packet: Any, arrival_time_ms: int) -> None:
        packets.append((packet.ssrc, packet.sequence_number, packet.payload_type, packet.timestamp))
        await handle(packet, arrival_time_ms)

    viewer.receiver._handle_rtp_packet = record  # type: ignore[method-assign]
    return packets


def test_each_viewer_gets_decodable_frames_with_its_own_ssrc_and_unbroken_numbering() -> None:
    """The relay cuts each frame into packets once, and writes each viewer its own header:
    two decoding viewers each read consecutive frame numbers, and the media packets each
    one gets carry the SSRC its sender announced (not the camera's, not the other
    viewer's), sequence numbers that run on without a gap (modulo 2**16), and the
    camera's frame spacing (3000 ticks at 30 fps) from that viewer's own offset."""

    async def scenario() -> None:
        relay = Relay(host_addresses=LOOPBACK)
        camera = RecordingCamera()
        pub = await publish(relay, "cam-1", camera, on_keyframe_wanted=camera.want_keyframe)
        ids: list[str] = []
        viewers = [await start_viewer(exchange=exchange_with(lambda o: relay.view("cam-1", o), ids),
                                      host_addresses=LOOPBACK) for _ in range(2)]
        recorded = [record_rtp(v) for v in viewers]
        for viewer in viewers:
            assert viewer.track is not None
            numbers = [read_frame_number(await viewer.track.recv()) for _ in range(30)]  # type: ignore[arg-type]
            first = numbers[0]
            assert first is not None and numbers == list(range(first, first + 30))
        camera_ssrc = pub.getSenders()[0]._ssrc
        announced = [relay._peers[i].pc.getSenders()[0]._ssrc for i in ids]
        assert len(set(announced)) == 2 and camera_ssrc not in announced
        for packets, ssrc in zip(recorded, announced):
            media = [p for p in packets if p[0] == ssrc]
            assert len(media) > 30
            assert {p[2] for p in media} == {media[0][2]}  # one payload type
            assert all((b[1] - a[1]) % 65536 == 1 for a, b in zip(media, media[1:])), "a gap in sequence numbers"
            stamps = [t for i, (_, _, _, t) in enumerate(media) if i == 0 or t != media[i - 1][3]]
            assert all((b - a) % 2**32 == 3000 for a, b in zip(stamps, stamps[1:]))
        for v in viewers:
            await v.pc.close()
        await pub.close()
        await relay.aclose()

    run(scenario())


def viewer_protocol(viewer: ViewerPeer) -> Any:
    """The viewer's UDP protocol on its nominated pair: every datagram it receives."""
    dtls = viewer.pc.getReceivers()[0].transport
    return dtls.transport.iceGatherer._connection._nominated[1].protocol


def test_a_packet_lost_on_the_way_to_a_viewer_is_sent_again() -> None:
    """The relay keeps each viewer's recent packets: one it never delivered (lost between
    relay and viewer) is asked for again (NACK) and resent, so the viewer still gets
    every frame, byte for byte, without waiting for a keyframe."""

    async def scenario() -> None:
        watched = await watched_camera()
        camera, frames, viewer = watched.camera, watched.frames, watched.viewer
        keyframes_before = camera.keyframes_sent

        # Lost on the way: the viewer's socket never hands it on (the relay writes to its
        # own socket directly, so the loss is made at the receiving end).
        protocol = viewer_protocol(viewer)
        received = protocol.datagram_received
        dropped: list[bytes] = []

        def lose_one(data: bytes, address: Any) -> None:
            if not dropped and len(data) > 200:  # a media packet, once (RTCP is small)
                dropped.append(data)
                return
            received(data, address)

        protocol.datagram_received = lose_one  # type: ignore[method-assign]
        await until(lambda: dropped, what="a packet lost")
        lost_at = len(frames)
        await until(lambda: len(frames) >= lost_at + 30, what="frames after the loss")
        positions = index_in(camera.sent, frames)
        assert positions == list(range(positions[0], positions[0] + len(frames))), "a frame was lost"
        assert camera.keyframes_sent == keyframes_before  # repaired by retransmission, not a new keyframe
        await watched.close()

    run(scenario())


def test_a_frame_sent_in_one_call_arrives_as_the_same_datagrams() -> None:
    """The relay sends each frame's packets to a viewer in GSO runs (one sendmsg each,
    Linux cuts them apart): the viewer's socket receives exactly the datagrams the writer
    protected, byte for byte and in order, as it would from one sendto per packet."""

    async def scenario() -> None:
        watched = await watched_camera()
        viewer = watched.viewer

        received: list[bytes] = []
        protocol = viewer_protocol(viewer)
        datagram_received = protocol.datagram_received

        def receive(data: bytes, address: Any) -> None:
            received.append(data)
            datagram_received(data, address)

        protocol.datagram_received = receive  # type: ignore[method-assign]
        writer = watched.writer
        path = writer._path
        assert path is not None and path.sendmsg is not None, "the GSO path is in use"
        protect, sendmsg = path.protect, path.sendmsg
        protected: list[bytes] = []
        runs: list[int] = []

        def record_protect(datagram: bytes) -> bytes:
            data = protect(datagram)
            protected.append(data)
            return data

        def record_sendmsg(buffers: list[bytes], *args: Any) -> object:
            runs.append(len(buffers))
            return sendmsg(buffers, *args)

        writer._path = dataclasses.replace(path, protect=record_protect, sendmsg=record_sendmsg)
        # The camera's delta frames mostly fit one packet; a keyframe (7-10 kB) is several.
        watched.camera.want_keyframe()
        await until(lambda: len(protected) >= 60 and runs, timeout=30, what="60 packets, some in one call")
        writer._path = path
        sent = list(protected)
        await until(lambda: set(sent) <= set(received), what="every packet at the viewer")
        assert [d for d in received if d in set(sent)] == sent
        assert min(runs) > 1  # a run of one is a plain sendto
        await watched.close()

    run(scenario())


def test_a_kernel_that_refuses_gso_gets_the_frame_packet_by_packet(caplog: pytest.LogCaptureFixture) -> None:
    """Where the kernel will not segment (EIO: a device without checksum offload, say),
    the refused run and every later one go out packet by packet on the same socket, the
    viewer still gets every frame whole and in order, and the relay warns once."""

    async def scenario() -> None:
        watched = await watched_camera()
        camera, frames = watched.camera, watched.frames

        writer = watched.writer
        path = writer._path
        assert path is not None and path.send is not None and path.sendmsg is not None, "the GSO path is in use"
        send = path.send
        refused: list[bytes] = []
        sent: list[bytes] = []
        refused_at: list[int] = []

        def refuse(buffers: list[bytes], *args: Any) -> object:
            refused.extend(buffers)
            refused_at.append(len(sent))
            raise OSError(errno.EIO, "no checksum offload")

        def record(data: bytes, address: Any) -> object:
            sent.append(data)
            return send(data, address)

        writer._path = dataclasses.replace(path, send=record, sendmsg=refuse)
        watched.camera.want_keyframe()  # several packets, whatever size the delta frames are
        await until(lambda: refused, timeout=30, what="a run refused")
        frames_at = len(frames)
        await until(lambda: len(frames) >= frames_at + 30, what="frames after the refusal")
        assert len(refused_at) == 1 and writer._path.sendmsg is None
        assert sent[refused_at[0]:refused_at[0] + len(refused)] == refused
        positions = index_in(camera.sent, frames)
        assert positions == list(range(positions[0], positions[0] + len(frames))), "a frame was lost"
        assert [r.levelno for r in caplog.records if "GSO refused" in r.getMessage()] == [logging.WARNING]
        await watched.close()

    run(scenario())


@pytest.mark.parametrize("refusing", ["sendto", "sendmsg"])
def test_a_packet_the_socket_refuses_goes_out_through_asyncio(refusing: str) -> None:
    """The relay writes to a viewer's socket directly (a frame's packets one by one, or
    several in one GSO call); a packet or run the kernel refuses there (BlockingIOError:
    its buffer is full) is handed, with the rest of its frame, to asyncio's transport
    packet by packet, which sends what it can and buffers the rest, as it would have
    itself: the viewer gets every frame, in order, with no keyframe asked for."""

    async def scenario() -> None:
        watched = await watched_camera()
        camera, frames = watched.camera, watched.frames
        keyframes_before = camera.keyframes_sent

        writer = watched.writer
        path = writer._path
        assert path is not None and path.send is not None and path.sendmsg is not None, "the direct path is in use"
        send, sendmsg, sendto = path.send, path.sendmsg, path.udp.sendto
        refused: list[bytes] = []
        through_asyncio: list[bytes] = []

        def refuse_once(buffers: list[bytes]) -> None:
            if not refused and sum(map(len, buffers)) > 200:  # media (RTCP does not come here)
                refused.extend(buffers)
                raise BlockingIOError

        def send_or_refuse(data: bytes, address: Any) -> object:
            if refusing == "sendto":
                refuse_once([data])
            return send(data, address)

        def sendmsg_or_refuse(buffers: list[bytes], *args: Any) -> object:
            refuse_once(buffers)
            return sendmsg(buffers, *args)

        def record(data: bytes, address: Any = None) -> None:
            through_asyncio.append(data)
            sendto(data, address)

        # Packet by packet (a kernel without GSO), or in runs: a frame of one packet is
        # still sent with sendto then.
        gso = sendmsg_or_refuse if refusing == "sendmsg" else None
        writer._path = dataclasses.replace(path, send=send_or_refuse, sendmsg=gso)
        path.udp.sendto = record
        if gso is not None:
            # A run needs a frame of several packets: a keyframe, whatever size the delta
            # frames are (on a busy machine the encoder's fit one packet). The camera's own.
            camera.want_keyframe()
            await until(lambda: camera.keyframes_sent > keyframes_before, what="the camera's keyframe")
            keyframes_before = camera.keyframes_sent
        await until(lambda: refused, timeout=30, what="a packet refused")
        refused_at = len(frames)
        await until(lambda: len(frames) >= refused_at + 30, what="frames after the refusal")
        assert through_asyncio[:len(refused)] == refused
        assert writer._path.sendmsg is gso  # a full buffer is no refusal of GSO
        positions = index_in(camera.sent, frames)
        assert positions == list(range(positions[0], positions[0] + len(frames))), "a frame was lost"
        assert camera.keyframes_sent == keyframes_before
        await watched.close()

    run(scenario())


def test_answer_is_complete_and_uses_no_public_stun() -> None:
    """The answer comes back with its ICE candidates in it (gathering done first), only
    host candidates on the configured address, and no STUN server behind them."""

    async def scenario() -> None:
        relay = Relay(host_addresses=LOOPBACK)
        answers: list[str] = []

        async def exchange(offer: str) -> str:
            session = await relay.publish("cam-1", offer)
            answers.append(session.answer_sdp)
            return session.answer_sdp

        pub = await start_publisher(track=SyntheticVideoTrack(width=320, height=240), exchange=exchange,
                                    host_addresses=LOOPBACK)
        candidates = re.findall(r"^a=candidate:.*$", answers[0], re.M)
        assert candidates and all(" 127.0.0.1 " in c and " typ host" in c for c in candidates)
        await pub.close()
        await relay.aclose()

    run(scenario())


def test_decoding_viewer_sees_the_pictures_in_order() -> None:
    """A viewer that decodes (aiortc encoding a 640x480 synthetic camera) gets 640x480
    pictures whose drawn frame numbers increase one by one."""

    async def scenario() -> None:
        relay = Relay(host_addresses=LOOPBACK)
        camera = SyntheticVideoTrack(label="CAM-0001")
        pub = await publish(relay, "cam-1", camera)
        viewer = await start_viewer(exchange=exchange_with(lambda o: relay.view("cam-1", o)), host_addresses=LOOPBACK)
        assert viewer.track is not None
        numbers = []
        for _ in range(20):
            frame = await viewer.track.recv()
            assert isinstance(frame, av.VideoFrame)
            assert (frame.width, frame.height) == (640, 480)
            numbers.append(read_frame_number(frame))
        assert None not in numbers
        assert numbers == list(range(numbers[0], numbers[0] + 20))  # type: ignore[arg-type]
        await viewer.pc.close()
        await pub.close()
        await relay.aclose()

    run(scenario())


def test_joining_viewer_gets_a_keyframe_the_relay_asks_for() -> None:
    """A viewer joining a running stream (whose camera sends keyframes only on request)
    makes the relay ask the camera for one: its first frame is a keyframe (without the
    request it would never come). A viewer's own picture-loss report reaches the camera too."""

    async def scenario() -> None:
        relay = Relay(host_addresses=LOOPBACK)
        camera = RecordingCamera()
        pub = await publish(relay, "cam-1", camera, on_keyframe_wanted=camera.want_keyframe)
        await until(lambda: len(camera.sent) >= 45, what="camera running for 1.5 s")
        assert camera.keyframes_sent == 1
        frames: list[EncodedFrame] = []
        viewer = await tap_viewer(relay, "cam-1", frames)
        await until(lambda: viewer.pc.connectionState == "connected", what="viewer connected")
        await until(lambda: frames, timeout=30, what="first frame")
        assert frames[0].keyframe
        assert camera.keyframes_sent >= 2
        assert relay.stats().keyframe_requests >= 1

        # The viewer reports picture loss (as a browser does after losing packets).
        await asyncio.sleep(0.6)  # past the relay's keyframe request throttle
        sent_before, seen_before = camera.keyframes_sent, sum(f.keyframe for f in frames)
        ssrc = viewer.receiver.getSynchronizationSources()[0].source
        await send_picture_loss(viewer.receiver, ssrc)
        await until(lambda: camera.keyframes_sent > sent_before, timeout=5, what="keyframe after the viewer's PLI")
        await until(lambda: sum(f.keyframe for f in frames) > seen_before, timeout=5,
                    what="that keyframe at the viewer")
        await viewer.pc.close()
        await pub.close()
        await relay.aclose()

    run(scenario())


def test_h264_is_forwarded_too() -> None:
    """A camera that sends H264 is forwarded as H264: a tapping viewer's first frame is a
    keyframe, a decoding viewer reads consecutive frame numbers, and a viewer that only
    accepts VP8 is refused with InvalidOffer."""

    async def scenario() -> None:
        relay = Relay(host_addresses=LOOPBACK)
        pub = await start_publisher(track=SyntheticVideoTrack(width=320, height=240), codec="video/H264",
                                    exchange=exchange_with(lambda o: relay.publish("cam-1", o)),
                                    host_addresses=LOOPBACK)
        frames: list[EncodedFrame] = []
        tap = await tap_viewer(relay, "cam-1", frames)
        decoder = await start_viewer(exchange=exchange_with(lambda o: relay.view("cam-1", o)), host_addresses=LOOPBACK)
        await until(lambda: len(frames) >= 10, what="H264 frames")
        assert frames[0].keyframe and is_keyframe("h264", frames[0].data)
        assert decoder.track is not None
        numbers = [read_frame_number(await decoder.track.recv()) for _ in range(10)]  # type: ignore[arg-type]
        assert numbers == list(range(numbers[0], numbers[0] + 10))  # type: ignore[arg-type]
        with pytest.raises(InvalidOffer):
            await start_viewer(exchange=exchange_with(lambda o: relay.view("cam-1", o)), codecs=("video/VP8",),
                               host_addresses=LOOPBACK)
        for pc in (tap.pc, decoder.pc, pub):
            await pc.close()
        await relay.aclose()

    run(scenario())


def test_a_viewer_counts_once_connected() -> None:
    """A viewer whose offer was answered but who never connects (an offer posted in a loop)
    is not counted, in viewer_count, the stats or a viewer_joined event; one that connects is."""

    async def scenario() -> None:
        events: list[RelayEvent] = []
        relay = Relay(host_addresses=LOOPBACK, on_event=events.append)
        pub = await publish(relay, "cam-1", SyntheticVideoTrack(width=320, height=240))
        silent = await offer_sdp("video", "recvonly")
        await relay.view("cam-1", silent)  # the answer is never applied: no connectivity checks come
        frames: list[EncodedFrame] = []
        viewer = await tap_viewer(relay, "cam-1", frames)
        await until(lambda: frames, what="a frame at the connected viewer")
        joined = [e for e in events if e.kind == "viewer_joined"]
        assert len(joined) == 1
        assert relay.viewer_count("cam-1") == 1 and relay.stats().viewers == 1
        await viewer.pc.close()
        await pub.close()
        await relay.aclose()

    run(scenario())


def test_viewer_of_unknown_stream_is_refused() -> None:
    """Viewing a stream nobody publishes raises NoSuchStream and leaves nothing open."""

    async def scenario() -> None:
        relay = Relay(host_addresses=LOOPBACK)
        with pytest.raises(NoSuchStream):
            await tap_viewer(relay, "nobody", [])
        assert relay.stats().viewers == 0
        await relay.aclose()

    run(scenario())
    assert live_peer_connections() == 0


# -- endings ---------------------------------------------------------------------------------


def test_publisher_leaving_ends_its_viewers_with_events() -> None:
    """When a publisher goes away, by an explicit close (WHIP DELETE) or because its
    connection closed, its stream stops, every viewer of it is closed, and the events
    say so: publisher_ended with the reason, then viewer_ended (publisher_ended) for
    each viewer. The viewers' own peer connections see the end. Nothing stays open."""

    async def scenario() -> None:
        events: list[RelayEvent] = []
        relay = Relay(host_addresses=LOOPBACK, on_event=events.append)
        sessions: list[str] = []
        pubs = [await publish(relay, name, SyntheticVideoTrack(width=320, height=240), sessions)
                for name in ("by-delete", "by-disconnect")]
        viewers = {name: [await tap_viewer(relay, name, []) for _ in range(2)]
                   for name in ("by-delete", "by-disconnect")}
        await until(lambda: all(v.pc.connectionState == "connected" for vs in viewers.values() for v in vs),
                    what="viewers connected")

        await relay.close(sessions[0], reason="whip_delete")
        await pubs[1].close()
        await until(lambda: not relay.is_publishing("by-disconnect"), what="relay noticing the closed connection")
        for name in ("by-delete", "by-disconnect"):
            assert not relay.is_publishing(name) and relay.viewer_count(name) == 0
            ended = [e for e in events if e.stream_id == name and e.kind.endswith("_ended")]
            assert [e.kind for e in ended] == ["publisher_ended", "viewer_ended", "viewer_ended"]
            assert all(e.reason == "publisher_ended" for e in ended[1:])
        reasons = {e.stream_id: e.reason for e in events if e.kind == "publisher_ended"}
        assert reasons == {"by-delete": "whip_delete", "by-disconnect": "connection_closed"}
        await until(lambda: all(v.pc.connectionState in ("closed", "failed") for vs in viewers.values() for v in vs),
                    what="viewers' connections ended")
        await relay.close(sessions[0], reason="again")  # idempotent
        for pc in [pubs[0], *[v.pc for vs in viewers.values() for v in vs]]:
            await pc.close()
        await relay.aclose()
        assert relay.stats().streams == 0

    run(scenario())
    assert live_peer_connections() == 0


def test_replacing_the_publisher_keeps_the_viewers() -> None:
    """A second publisher on the same stream (the camera reconnecting) replaces the
    first, which ends with reason 'replaced'; the viewer stays and continues from the new
    publisher's keyframe, with timestamps that keep increasing."""

    async def scenario() -> None:
        events: list[RelayEvent] = []
        relay = Relay(host_addresses=LOOPBACK, on_event=events.append)
        first, second = RecordingCamera(), RecordingCamera()
        pub1 = await publish(relay, "cam-1", first, on_keyframe_wanted=first.want_keyframe)
        frames: list[EncodedFrame] = []
        viewer = await tap_viewer(relay, "cam-1", frames)
        await until(lambda: len(frames) >= 10, what="frames from the first publisher")
        pub2 = await publish(relay, "cam-1", second, on_keyframe_wanted=second.want_keyframe)
        assert [e.reason for e in events if e.kind == "publisher_ended"] == ["replaced"]
        await until(lambda: any(f.data in second.sent for f in frames), what="frames from the second publisher")
        switch = next(i for i, f in enumerate(frames) if f.data in second.sent)
        assert frames[switch].keyframe
        assert all(b.timestamp > a.timestamp for a, b in zip(frames, frames[1:]))
        assert relay.viewer_count("cam-1") == 1
        for pc in (viewer.pc, pub1, pub2):
            await pc.close()
        await relay.aclose()

    run(scenario())


# -- backpressure ----------------------------------------------------------------------------


# The queue's own rules, pure: tests/test_queues.py.


def test_lagging_viewer_drops_to_the_next_keyframe_and_recovers() -> None:
    """A viewer whose sending stalls for a second overflows its small queue: the relay
    drops its frames until the next keyframe (asking the camera for one), never hands it
    a delta frame after a gap, and the other viewer loses nothing."""

    async def scenario() -> None:
        relay = Relay(host_addresses=LOOPBACK, viewer_queue_frames=3)
        camera = RecordingCamera()
        pub = await publish(relay, "cam-1", camera, on_keyframe_wanted=camera.want_keyframe)
        steady: list[EncodedFrame] = []
        lagging: list[EncodedFrame] = []
        ids: list[str] = []
        viewers = [await tap_viewer(relay, "cam-1", steady), await tap_viewer(relay, "cam-1", lagging, ids)]
        await until(lambda: len(lagging) >= 10 and len(steady) >= 10, what="both viewers receiving")

        # Stall the relay's socket to the second viewer for a second, as a network that
        # cannot keep up does: asyncio reports data waiting to go out on it.
        dtls = relay._peers[ids[0]].pc.getSenders()[0].transport
        udp = dtls.transport.iceGatherer._connection._nominated[1].protocol.transport
        udp.get_write_buffer_size = lambda: 65536  # type: ignore[attr-defined]
        await asyncio.sleep(1.0)
        del udp.get_write_buffer_size  # type: ignore[attr-defined]
        before = len(lagging)
        await until(lambda: len(lagging) > before + 20, what="the lagging viewer recovering")

        stats = relay.stats()
        assert stats.queue_overflows >= 1 and stats.frames_dropped >= 1
        positions = index_in(camera.sent, lagging)
        gaps = [i for i in range(1, len(positions)) if positions[i] != positions[i - 1] + 1]
        assert gaps, "the stalled viewer should have lost frames"
        assert all(lagging[i].keyframe for i in gaps), "a delta frame followed a gap"
        steady_positions = index_in(camera.sent, steady)
        assert steady_positions == list(range(steady_positions[0], steady_positions[0] + len(steady)))
        for v in viewers:
            await v.pc.close()
        await pub.close()
        await relay.aclose()

    run(scenario())


def test_a_viewer_whose_sending_fails_is_ended_alone() -> None:
    """Writing to one viewer raising (a transport in a state nobody foresaw) ends that
    viewer with reason send_failed; the other viewer of the stream loses no frame."""

    async def scenario() -> None:
        events: list[RelayEvent] = []
        relay = Relay(host_addresses=LOOPBACK, on_event=events.append)
        camera = RecordingCamera()
        pub = await publish(relay, "cam-1", camera, on_keyframe_wanted=camera.want_keyframe)
        steady: list[EncodedFrame] = []
        broken: list[EncodedFrame] = []
        ids: list[str] = []
        viewers = [await tap_viewer(relay, "cam-1", steady), await tap_viewer(relay, "cam-1", broken, ids)]
        await until(lambda: len(steady) >= 10 and len(broken) >= 10, what="both viewers receiving")

        def fail(*args: object) -> None:
            raise RuntimeError("a transport nobody foresaw")

        relay._peers[ids[0]].outlet._writer.write = fail  # type: ignore[attr-defined]
        await until(lambda: any(e.reason == "send_failed" for e in events), what="the broken viewer ended")
        before = len(steady)
        await until(lambda: len(steady) >= before + 20, what="the other viewer carrying on")
        positions = index_in(camera.sent, steady)
        assert positions == list(range(positions[0], positions[0] + len(steady))), "a frame was lost"
        assert relay.viewer_count("cam-1") == 1
        for v in viewers:
            await v.pc.close()
        await pub.close()
        await relay.aclose()

    run(scenario())


def test_a_frame_lost_for_good_is_given_up_and_the_stream_goes_on() -> None:
    """A camera packet lost together with every retransmission of it: the relay gives up on
    that frame (after GAP_GIVE_UP_S, tested on its own clock in test_jitter_give_up.py,
    instead of the seconds aiortc's receiver would wait for a full jitter buffer) and the
    stream goes on. Every frame the viewer gets is byte-identical to one the camera sent,
    and after any frame it missed it goes on from a keyframe (never a broken delta)."""

    async def scenario() -> None:
        relay = Relay(host_addresses=LOOPBACK)
        camera = RecordingCamera()
        pub = await publish(relay, "cam-1", camera, on_keyframe_wanted=camera.want_keyframe)
        arrivals: list[tuple[float, EncodedFrame]] = []
        viewer = await start_viewer(exchange=exchange_with(lambda o: relay.view("cam-1", o)), host_addresses=LOOPBACK,
                                    on_frame=lambda f: arrivals.append((time.monotonic(), f)))
        await until(lambda: len(arrivals) >= 15, what="frames before the loss")

        # Lose one media packet on the camera's side, and every retransmission (RTX) too.
        sender = pub.getSenders()[0]
        transport = sender.transport
        send = transport._send_rtp
        dropped: list[int] = []

        async def lossy(data: bytes) -> None:
            if len(data) >= 12 and (data[1] & 0x7F) >= 96:  # RTP (RTCP types read as 72-79 here)
                ssrc, seq = int.from_bytes(data[8:12], "big"), int.from_bytes(data[2:4], "big")
                if ssrc == sender._rtx_ssrc:
                    return
                if ssrc == sender._ssrc and (not dropped or seq == dropped[0]):
                    dropped.append(seq)
                    return
            await send(data)

        transport._send_rtp = lossy  # type: ignore[method-assign]
        lost_at = time.monotonic()
        await until(lambda: sum(t > lost_at for t, _ in arrivals) >= 20, timeout=30, what="frames after the loss")
        assert dropped, "a packet was lost"
        assert relay.stats().incomplete_frames >= 1, "the relay gave up on the damaged frame"
        frames = [f for _, f in arrivals]
        positions = index_in(camera.sent, frames)
        assert all(frames[i].keyframe for i in range(1, len(frames)) if positions[i] != positions[i - 1] + 1)
        await viewer.pc.close()
        await pub.close()
        await relay.aclose()

    run(scenario())


def test_publisher_without_viewers_forwards_nothing() -> None:
    """A publisher with no viewer: frames are received and counted, nothing is queued or
    forwarded, and no keyframe is asked for."""

    async def scenario() -> None:
        relay = Relay(host_addresses=LOOPBACK)
        camera = RecordingCamera()
        pub = await publish(relay, "cam-1", camera, on_keyframe_wanted=camera.want_keyframe)
        await until(lambda: relay.stats().frames_received >= 20, what="frames received")
        stats = relay.stats()
        assert stats.frames_forwarded == 0 and stats.frames_dropped == 0 and stats.keyframe_requests == 0
        await pub.close()
        await relay.aclose()

    run(scenario())


# -- leaks -----------------------------------------------------------------------------------


def test_hundred_join_leave_cycles_leak_nothing() -> None:
    """100 viewers join (connect, receive a frame) and leave, half by closing their own
    connection and half by an explicit close (WHEP DELETE). Afterwards the loop has as
    many tasks, the process as many threads (beside the default executor's pool) and
    live RTCPeerConnections as before, and traced memory grew by less than 1.5 MB."""

    async def cycle(relay: Relay, n: int) -> None:
        frames: list[EncodedFrame] = []
        ids: list[str] = []
        viewer = await tap_viewer(relay, "cam-1", frames, ids)
        await until(lambda: frames, what=f"a frame at viewer {n}")
        if n % 2:
            await viewer.pc.close()
            await until(lambda: relay.viewer_count("cam-1") == 0, what="relay noticing the viewer left")
        else:
            await relay.close(ids[0], reason="whep_delete")
            await viewer.pc.close()

    async def scenario() -> tuple[int, int, int, int, int, int, int]:
        relay = Relay(host_addresses=LOOPBACK)
        camera = SyntheticVideoTrack(width=160, height=120)
        pub = await publish(relay, "cam-1", camera)
        publisher_pcs = live_peer_connections()
        for n in range(6):  # warm up: caches, the executor's threads
            await cycle(relay, n)
        await until(lambda: live_peer_connections() == publisher_pcs, what="the warm-up viewers' connections closed")
        gc.collect()
        tasks, threads, pcs = len(asyncio.all_tasks()), own_threads(), live_peer_connections()
        memory = tracemalloc.get_traced_memory()[0]
        for n in range(100):
            await cycle(relay, n)
        # The last closes finish (a leak keeps this from happening, and the test fails here).
        await until(lambda: live_peer_connections() == publisher_pcs and len(asyncio.all_tasks()) <= tasks
                    and own_threads() <= threads, what="the last viewers' connections closed")
        gc.collect()
        after = (len(asyncio.all_tasks()), own_threads(), live_peer_connections(),
                 tracemalloc.get_traced_memory()[0])
        await pub.close()
        await relay.aclose()
        return tasks, after[0], threads, after[1], pcs, after[2], after[3] - memory

    tracemalloc.start()
    try:
        tasks, tasks_after, threads, threads_after, pcs, pcs_after, growth = run(scenario(), timeout=240)
    finally:
        tracemalloc.stop()
    assert tasks_after == tasks
    assert threads_after == threads
    assert pcs_after == pcs
    assert growth < 1_500_000, f"memory grew by {growth} bytes"
    assert live_peer_connections() == 0


# -- offers ----------------------------------------------------------------------------------


def test_http_exchange_posts_sdp_and_returns_the_location() -> None:
    """The WHIP/WHEP client helper POSTs the offer as application/sdp with the bearer
    token, and returns the answer and the session's Location made absolute; a status
    other than 201 is an error."""

    async def scenario() -> None:
        seen: list[bytes] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            seen.append(head + await reader.readexactly(length))
            status = b"201 Created" if b"/whip/" in head else b"403 Forbidden"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 6\r\nLocation: /whip/s/1\r\n"
                         b"Connection: close\r\n\r\nanswer")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        result = await http_exchange(f"http://127.0.0.1:{port}/whip/s", "v=0 offer", token="t0k3n")
        assert result.answer_sdp == "answer" and result.location == f"http://127.0.0.1:{port}/whip/s/1"
        assert b"POST /whip/s " in seen[0] and b"Content-Type: application/sdp" in seen[0]
        assert b"Authorization: Bearer t0k3n" in seen[0] and seen[0].endswith(b"v=0 offer")
        with pytest.raises(ExchangeRefused) as refused:
            await http_exchange(f"http://127.0.0.1:{port}/whep/s", "v=0 offer")
        assert refused.value.status == 403
        server.close()
        await server.wait_closed()

    run(scenario())


async def offer_sdp(kind: str, direction: str) -> str:
    pc = RTCPeerConnection()
    pc.addTransceiver(kind, direction=direction)
    offer = await pc.createOffer()
    await pc.close()
    return str(offer.sdp)


def test_bad_offers_are_refused() -> None:
    """Garbage, an SDP with no video, an answer instead of an offer, a publisher offer
    that only receives and a viewer offer that only sends all raise InvalidOffer, and
    leave no session behind."""

    async def scenario() -> None:
        relay = Relay(host_addresses=LOOPBACK)
        audio = await offer_sdp("audio", "sendonly")
        recv_video = await offer_sdp("video", "recvonly")
        send_video = await offer_sdp("video", "sendonly")
        an_answer = send_video.replace("a=setup:actpass", "a=setup:active")
        for bad in ("", "hello", "v=0\r\nthis is not sdp\r\n", audio, recv_video, an_answer):
            with pytest.raises(InvalidOffer):
                await relay.publish("cam-1", bad)
        assert not relay.is_publishing("cam-1")
        pub = await publish(relay, "cam-1", SyntheticVideoTrack(width=320, height=240))
        for bad in ("garbage", audio, send_video):
            with pytest.raises(InvalidOffer):
                await relay.view("cam-1", bad)
        assert relay.viewer_count("cam-1") == 0
        await pub.close()
        await relay.aclose()

    run(scenario())
    assert live_peer_connections() == 0


def test_mdns_candidates_are_stripped() -> None:
    """A Chromium-style offer whose only candidate is an mDNS name connects anyway, well
    under the second aiortc would spend trying to resolve the name; the pure clean-up
    drops exactly the .local candidates and the end-of-candidates they leave behind."""
    sdp = ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=candidate:1 1 udp 2122 abcd-1234.local 5000 typ host\r\n"
           "a=candidate:2 1 udp 2121 10.0.0.1 5001 typ host\r\na=end-of-candidates\r\n"
           "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=candidate:3 1 udp 2122 ffff.local 5002 typ host\r\n"
           "a=end-of-candidates\r\n")
    cleaned = filter_candidates(sdp, allow_private=True)
    assert ".local" not in cleaned
    assert "a=candidate:2 1 udp 2121 10.0.0.1 5001 typ host" in cleaned
    assert "end-of-candidates" not in cleaned

    async def scenario() -> float:
        relay = Relay(host_addresses=LOOPBACK)
        pub = await publish(relay, "cam-1", SyntheticVideoTrack(width=320, height=240))

        async def exchange(offer: str) -> str:
            hidden = re.sub(r"(a=candidate:\S+ \d \S+ \d+ )127\.0\.0\.1 ", r"\g<1>0f1e2d3c-aaaa.local ", offer)
            assert ".local" in hidden
            return (await relay.view("cam-1", hidden + "a=end-of-candidates\r\n")).answer_sdp

        started = time.monotonic()
        frames: list[EncodedFrame] = []
        viewer = await start_viewer(exchange=exchange, on_frame=frames.append, host_addresses=LOOPBACK)
        await until(lambda: viewer.pc.connectionState == "connected", timeout=5, what="viewer connected")
        took = time.monotonic() - started
        await viewer.pc.close()
        await pub.close()
        await relay.aclose()
        return took

    assert run(scenario()) < 0.9
