"""Every place where Watchfloor reaches into aiortc's internals, and why. Pinned to
aiortc 1.16 (pyproject.toml); each hook checks that what it replaces is still there and
raises :class:`AiortcChanged` otherwise, so an upgrade fails loudly instead of quietly
falling back to decoding every frame.

* **Encoded frames out of a receiver** (:func:`tap_encoded_frames`). aiortc hands each
  frame that leaves the jitter buffer to a decoder thread through a ``queue.Queue``. The
  tap replaces that queue with an object whose ``put`` hands the encoded frame to a
  callback on the event loop (``put`` is called from the receiver's RTP handler, which
  runs on the loop) and whose ``get`` parks the idle decoder thread until the receiver
  stops. Nothing is decoded.
* **A frame leaves the jitter buffer when complete** (:class:`MarkerJitterBuffer`).
  aiortc's buffer releases a frame only when the first packet of the *next* frame
  arrives, which adds one frame interval (33 ms at 30 fps) per hop. This one releases
  it on the RTP marker bit, which the sender sets on a frame's last packet, and gives
  up on a frame whose missing packet does not come back within 0.3 s.
* **Keyframe requests out of a sender** (:func:`on_keyframe_request`). A sender fed with
  encoded packets has no encoder to force a keyframe from, so a viewer's PLI or FIR is
  handed to a callback instead (the relay forwards it to the publisher).
* **RTP written past a sender** (:class:`RtpWriter`). The relay cuts each frame into RTP
  payloads once for all viewers; per viewer it only writes the header (its SSRC,
  sequence numbers, timestamp offset, payload type, and the sender's negotiated header
  extensions: serialized by aiortc from ``RTCRtpSender.__rtp_header_extensions_map`` once,
  when the connection is up, into a template whose per-packet fields are written in
  place) and hands the packets to the viewer's SRTP session (``RTCDtlsTransport._tx_srtp``)
  and nominated ICE pair (``Connection._nominated``: its protocol's UDP transport and
  remote address; the path is found once and kept while the pair stays nominated) in one
  synchronous loop, where aiortc's sender runs a task per viewer and a chain of
  coroutines per packet. Under asyncio's selector loop the packets go straight to the
  transport's socket (``_SelectorDatagramTransport._sock``), as the transport's own
  ``sendto`` would when it has nothing buffered; on Linux a frame's packets go in one
  ``sendmsg`` with UDP GSO where their sizes allow (:mod:`streaming.gso`), so the frame
  crosses the kernel's UDP/IP stack once instead of once per packet, and the viewer still
  receives the same separate datagrams. A path whose kernel refuses GSO is warned about
  once and sent packet by packet from then on; any other ``OSError`` (a full buffer) hands
  the packet or run and the rest of the frame back to the transport's ``sendto``, packet
  by packet, which buffers or reports as usual. The
  sender stays in charge of RTCP: its sender reports read the counters the writer keeps
  up to date (``__packet_count``, ``__octet_count``, ``__rtp_timestamp``,
  ``__ntp_timestamp``), NACKs reach the writer's own history through ``_retransmit``
  (sent as RTX on ``_rtx_ssrc`` when negotiated), and the SSRC is the sender's own
  ``_ssrc``, as signalled in the SDP. A pair that is not plain UDP (TURN) is written
  through ``RTCDtlsTransport._send_rtp``, which may wait.
* **The whole inventory at start-up** (:func:`check_aiortc`): every class-level name
  above is looked up when the relay is made, so a changed aiortc stops it there.
* **Picture loss sent by a receiver** (:func:`send_picture_loss`), to ask a publisher
  for a keyframe.
* **The codec a transceiver negotiated** (:func:`negotiated_codec`): aiortc keeps it in
  ``RTCRtpTransceiver._codecs`` once the remote description is set.
* **Host candidates from chosen addresses** (:func:`restrict_host_candidates`). aioice
  offers every interface address; a relay behind a known address (or a test that must
  stay on loopback) offers only those.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
import time
from asyncio import selector_events
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pylibsrtp
from aioice.ice import CandidatePair, Connection, StunProtocol
from aiortc import RTCDtlsTransport, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTP_HISTORY_SIZE, HeaderExtensionsMap, RtpPacket, wrap_rtx
from aiortc.utils import uint16_add

from .gso import GSO_REFUSED, gso_option, gso_runs, supports_gso
from .rtp_headers import HeaderTemplate, abs_send_time_offset, ntp_time, sequence_number

__all__ = [
    "AiortcChanged",
    "MarkerJitterBuffer",
    "RtpWriter",
    "TappedFrame",
    "check_aiortc",
    "negotiated_codec",
    "on_keyframe_request",
    "restrict_host_candidates",
    "send_picture_loss",
    "tap_encoded_frames",
    "use_marker_jitter_buffer",
]

logger = logging.getLogger(__name__)

# aiortc's receiver keeps these in name-mangled attributes.
_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
_DECODER_THREAD = "_RTCRtpReceiver__decoder_thread"
# ... and the sender, its header extensions and what its RTCP sender reports count.
_EXTENSIONS_MAP = "_RTCRtpSender__rtp_header_extensions_map"
_NTP_TIMESTAMP = "_RTCRtpSender__ntp_timestamp"
_RTP_TIMESTAMP = "_RTCRtpSender__rtp_timestamp"
_PACKET_COUNT = "_RTCRtpSender__packet_count"
_OCTET_COUNT = "_RTCRtpSender__octet_count"
_SENDER_STATE = (_EXTENSIONS_MAP, _NTP_TIMESTAMP, _RTP_TIMESTAMP, _PACKET_COUNT, _OCTET_COUNT, "_ssrc", "_rtx_ssrc")
# Methods and attributes looked up on classes, at start-up (instances get them later).
_CLASS_INVENTORY: tuple[tuple[type, str], ...] = (
    (RTCRtpSender, "_send_keyframe"), (RTCRtpSender, "_retransmit"), (RTCRtpSender, "_handle_rtcp_packet"),
    (RTCRtpSender, "transport"), (RTCDtlsTransport, "_send_rtp"), (RTCDtlsTransport, "state"),
    (RTCDtlsTransport, "transport"), (RTCRtpReceiver, "_send_rtcp_pli"), (RTCRtpTransceiver, "mid"),
    (HeaderExtensionsMap, "set"), (RtpPacket, "serialize"), (RtpPacket, "parse"), (CandidatePair, "remote_addr"),
    (StunProtocol, "connection_made"), (Connection, "get_component_candidates"),
)
# asyncio's datagram transport under the selector event loop (the default on Linux), whose
# socket the writer sends on directly; ``_sock`` is declared on the class.
_SELECTOR_DATAGRAM_TRANSPORT: type | None = getattr(selector_events, "_SelectorDatagramTransport", None)

# A video frame at 1.5 Mbps is at most a few dozen packets; 256 packets is about 2 s of
# video at 1 Mbps. aiortc uses 512; a smaller buffer gives up sooner on a packet that
# never comes (the sender only keeps 128 for retransmission anyway).
VIDEO_JITTER_CAPACITY = 256
# How long a missing packet may hold the stream before the frame it belongs to is given
# up: long enough for a NACK and its retransmission over a mobile network's round trip.
GAP_GIVE_UP_S = 0.3


class AiortcChanged(RuntimeError):
    """The aiortc in use no longer has the internals these hooks replace."""


class TappedFrame(JitterFrame):
    """A frame out of :class:`MarkerJitterBuffer`, with what is needed to trust it.

    ``synced`` is True when the frame follows a frame this buffer released whole, so it
    starts at a frame boundary; otherwise (the first frame, or after the buffer dropped
    packets) ``first_payload`` lets the caller check the codec's start-of-frame bit.
    ``after_loss`` is True for the first frame after the buffer threw packets away: it may
    refer to a picture that never came, so only a keyframe is safe from here.
    """

    def __init__(self, data: bytes, timestamp: int, *, synced: bool, first_payload: bytes,
                 after_loss: bool = False) -> None:
        super().__init__(data=data, timestamp=timestamp)
        self.synced = synced
        self.first_payload = first_payload
        self.after_loss = after_loss


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer, releasing a frame as soon as its marker packet is in.

    A frame is released when every packet from the buffer's origin up to a packet with
    the marker bit is present and they share one timestamp. If a sender never sets the
    marker, aiortc's rule still applies: the frame is released when the next one starts.

    A missing packet holds every later frame back until it is retransmitted. aiortc asks
    for it once (NACK) and would wait until the buffer is full, seconds at a camera's
    bitrate, if the retransmission is lost too. This buffer gives up on the damaged
    frame after ``give_up_s`` instead, skips to the next frame boundary, and asks for a
    keyframe (the ``pli_flag`` of :meth:`add`); the frame after the skip is marked
    ``after_loss``. Also remembers the stream's SSRC, to address picture-loss reports.
    """

    def __init__(self, capacity: int = VIDEO_JITTER_CAPACITY, *, give_up_s: float = GAP_GIVE_UP_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(capacity=capacity, is_video=True)
        self._synced = False
        self._lost = False
        self._give_up_s = give_up_s
        self._clock = clock  # a test's own clock: the give-up is a rule on time, tested without waiting
        self._blocked_since: float | None = None
        self.ssrc: int | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        self.ssrc = packet.ssrc
        pli_flag, frame = super().add(packet)
        if frame is not None or self._origin is None:
            self._blocked_since = None
            return pli_flag, frame
        now = self._clock()
        if self._blocked_since is None:
            if self._has_gap_before(packet.sequence_number):
                self._blocked_since = now
        elif now - self._blocked_since >= self._give_up_s and self._skip_damaged_frame():
            self._blocked_since = None
            return True, self._remove_frame(packet.sequence_number)
        return pli_flag, frame

    def remove(self, count: int) -> None:
        # Called by the base class only when it throws packets away (a large jump in
        # sequence numbers): whatever comes next may start mid-frame.
        self._synced = False
        self._lost = True
        super().remove(count)

    def smart_remove(self, count: int) -> bool:
        self._synced = False
        self._lost = True
        return super().smart_remove(count)

    def _has_gap_before(self, sequence_number: int) -> bool:
        """A packet is missing between the origin and ``sequence_number``."""
        assert self._origin is not None
        span = uint16_add(sequence_number, -self._origin)
        if span >= self.capacity:
            return False  # an old packet (the base class ignored it)
        return any(self._packets[(self._origin + count) % self.capacity] is None for count in range(span))

    def _skip_damaged_frame(self) -> bool:
        """Drop everything before the first frame that surely starts after the gap (its
        packet follows one with the marker bit); False if none has arrived yet."""
        assert self._origin is not None
        previous: RtpPacket | None = None
        seen_gap = False
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None:
                seen_gap = True
            elif seen_gap and previous is not None and previous.marker:
                JitterBuffer.remove(self, count)
                self._synced = True
                self._lost = True
                return True
            previous = packet
        return False

    def _release(self, packets: list[RtpPacket], count: int) -> TappedFrame:
        frame = TappedFrame(
            data=b"".join(p._data for p in packets),  # type: ignore[attr-defined]
            timestamp=packets[0].timestamp,
            synced=self._synced,
            first_payload=packets[0].payload,
            after_loss=self._lost,
        )
        self._lost = False
        JitterBuffer.remove(self, count)
        return frame

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        assert self._origin is not None
        packets: list[RtpPacket] = []
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None:
                return None  # a gap: wait for the missing packet (NACK) or give up later
            if packets and packet.timestamp != packets[0].timestamp:
                # The next frame began and no marker was seen (a sender that never sets it):
                # aiortc's own rule. The next frame starts here, so the buffer is in step.
                frame = self._release(packets, count)
                self._synced = True
                return frame
            packets.append(packet)
            if packet.marker:
                frame = self._release(packets, count + 1)
                self._synced = True
                return frame
        return None


class _FrameTap:
    """Stands in for the receiver's decoder queue (see the module docstring)."""

    def __init__(self, on_frame: Callable[[RTCRtpCodecParameters, JitterFrame], None]) -> None:
        self._on_frame = on_frame
        self._stopped = threading.Event()

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        if item is None:  # the receiver is stopping its decoder thread
            self._stopped.set()
            return
        try:
            self._on_frame(*item)
        except Exception:  # never let a callback break aiortc's RTP handling
            logger.exception("encoded frame callback failed")

    def get(self) -> None:
        self._stopped.wait()
        return None


def _receiver_attr(receiver: RTCRtpReceiver, name: str) -> Any:
    if not hasattr(receiver, name):
        raise AiortcChanged(f"RTCRtpReceiver has no {name}")
    return getattr(receiver, name)


def use_marker_jitter_buffer(receiver: RTCRtpReceiver) -> MarkerJitterBuffer:
    """Give a video receiver a :class:`MarkerJitterBuffer`. Call before it starts
    (after ``setRemoteDescription``, before the connection is up)."""
    if not isinstance(_receiver_attr(receiver, _JITTER_BUFFER), JitterBuffer):
        raise AiortcChanged("RTCRtpReceiver's jitter buffer is not a JitterBuffer")
    if _receiver_attr(receiver, _DECODER_THREAD) is not None:
        raise RuntimeError("the receiver has started already")
    buffer = MarkerJitterBuffer()
    setattr(receiver, _JITTER_BUFFER, buffer)
    return buffer


def tap_encoded_frames(receiver: RTCRtpReceiver,
                       on_frame: Callable[[RTCRtpCodecParameters, TappedFrame], None]) -> MarkerJitterBuffer:
    """Hand each frame a video receiver assembles to ``on_frame`` instead of its decoder.

    ``on_frame`` runs on the event loop, inside the receiver's RTP handling: it must be
    quick and must not block. The receiver's track never yields a frame. Call before the
    receiver starts. Returns the receiver's new jitter buffer (it knows the SSRC).
    """
    if not hasattr(_receiver_attr(receiver, _DECODER_QUEUE), "put"):
        raise AiortcChanged("RTCRtpReceiver's decoder queue has no put()")
    buffer = use_marker_jitter_buffer(receiver)

    def forward(codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        if isinstance(frame, TappedFrame):
            on_frame(codec, frame)

    setattr(receiver, _DECODER_QUEUE, _FrameTap(forward))
    return buffer


def check_aiortc() -> None:
    """Raise :class:`AiortcChanged` unless every class-level internal the hooks use is
    there (instance attributes are checked when a hook is applied)."""
    for cls, name in _CLASS_INVENTORY:
        if not hasattr(cls, name):
            raise AiortcChanged(f"{cls.__module__}.{cls.__name__} has no {name}")
    if RTP_HISTORY_SIZE < 1:
        raise AiortcChanged("aiortc.rtp.RTP_HISTORY_SIZE is not a positive size")
    if _SELECTOR_DATAGRAM_TRANSPORT is None or not hasattr(_SELECTOR_DATAGRAM_TRANSPORT, "_sock"):
        raise AiortcChanged("asyncio.selector_events has no _SelectorDatagramTransport with a _sock")


class RtpWriter:
    """Sends one viewer's RTP packets itself, through its sender's transport (see the
    module docstring). Make it before the connection is up; the sender then never
    packetises (give it a track that never yields).

    The caller :meth:`write`s a frame's payloads at once when :meth:`ready` says the path
    takes them without waiting, or awaits :meth:`write_waiting`. The writer puts each
    payload behind the viewer's header (a :class:`~streaming.rtp_headers.HeaderTemplate`
    made once from aiortc's serializer, with the sender's SSRC, payload type and header
    extensions) and sends it through the path :meth:`ready` found, kept while it holds.
    """

    def __init__(self, transceiver: RTCRtpTransceiver) -> None:
        sender = transceiver.sender
        for name in _SENDER_STATE:
            if not hasattr(sender, name):
                raise AiortcChanged(f"RTCRtpSender has no {name}")
        if not isinstance(getattr(sender, _EXTENSIONS_MAP), HeaderExtensionsMap):
            raise AiortcChanged("RTCRtpSender's header extensions map is not a HeaderExtensionsMap")
        if not callable(getattr(sender, "_retransmit", None)):
            raise AiortcChanged("RTCRtpSender has no _retransmit()")
        if not hasattr(sender.transport, "_tx_srtp"):
            raise AiortcChanged("RTCDtlsTransport has no _tx_srtp")
        self._transceiver = transceiver
        self._sender = sender
        self._extensions: HeaderExtensionsMap = getattr(sender, _EXTENSIONS_MAP)
        self.ssrc: int = sender._ssrc
        self._template: HeaderTemplate | None = None
        self._rtx_payload_type: int | None = None
        self._rtx_sequence = random.randrange(1 << 15)
        self._history: list[bytes | None] = [None] * RTP_HISTORY_SIZE
        self._path: _UdpPath | None = None
        setattr(sender, "_retransmit", self._retransmit)

    def ready(self) -> bool:
        """Whether :meth:`write` can send now: DTLS is up, the nominated pair is plain UDP
        and its socket has nothing waiting to go out (asyncio buffers what the kernel
        refused: a viewer whose network cannot keep up)."""
        path = self._path
        # A path found once is kept until its DTLS transport's state changes (see
        # _find_path) and while its pair is still nominated (aioice clears the
        # nominations when the connection closes).
        if path is None or path.nominated.get(1) is not path.pair or path.dtls is not self._sender.transport:
            path = self._path = self._find_path()
            if path is None:
                return False
        udp = path.udp
        # asyncio's selector datagram transport counts what it buffered (typeshed omits it).
        return not (udp.is_closing() or udp.get_write_buffer_size())  # type: ignore[attr-defined]

    def write(self, payloads: Sequence[bytes], *, first_sequence: int, timestamp: int) -> None:
        """Protect and send one frame's packets (``payloads`` behind this viewer's header,
        numbered from ``first_sequence``, at ``timestamp``), right after :meth:`ready`
        returned True."""
        path, template = self._path, self._template
        assert path is not None and template is not None
        now = ntp_time(time.time_ns())
        datagrams = template.datagrams(payloads, first_sequence=first_sequence, timestamp=timestamp,
                                       abs_send_time=now >> 14)
        history = self._history
        for i, datagram in enumerate(datagrams):
            history[((first_sequence + i) & 0xFFFF) % RTP_HISTORY_SIZE] = datagram
        protect = path.protect
        packets = [protect(datagram) for datagram in datagrams]
        sent = 0 if path.send is None else self._send_direct(path, packets)
        sendto, address = path.udp.sendto, path.address
        for i in range(sent, len(packets)):
            # What asyncio's own sendto does with it: try again, buffer what the kernel
            # refused, or report the error to the protocol. The rest of the frame follows
            # the same way, behind anything it buffered.
            sendto(packets[i], address)
        self._count(len(datagrams), timestamp, sum(map(len, payloads)), now)

    def _send_direct(self, path: _UdpPath, packets: list[bytes]) -> int:
        """Send ``packets`` on the path's socket itself, in GSO runs where it can. Returns
        how many went out: all, or those before the one the kernel refused (its buffer is
        full, say)."""
        send, sendmsg, address = path.send, path.sendmsg, path.address
        assert send is not None
        sent = 0
        try:
            if sendmsg is not None:
                for run in gso_runs(packets):
                    if len(run) == 1:
                        send(run[0], address)
                    else:
                        try:
                            sendmsg(run, gso_option(len(run[0])), 0, address)
                        except OSError as exc:
                            if exc.errno not in GSO_REFUSED:
                                raise
                            self._refuse_gso(path, exc)
                            break
                    sent += len(run)
            for i in range(sent, len(packets)):  # without GSO, or from where it was refused
                send(packets[i], address)
                sent += 1
        except OSError:
            pass  # the caller hands this packet and the rest to asyncio
        return sent

    def _refuse_gso(self, path: _UdpPath, exc: OSError) -> None:
        """The kernel will not segment on this path: send packet by packet from now on.
        Remembered per path, not per process: what refuses (a device without checksum
        offload, IPsec on the route, an MTU below the segment size) belongs to the route
        to one viewer, and a viewer on another route keeps the saving. A kernel without
        GSO at all is found out before (:func:`~streaming.gso.supports_gso`)."""
        logger.warning("UDP GSO refused on the path to %s (%s): sending packet by packet", path.address, exc)
        self._path = replace(path, sendmsg=None)

    async def write_waiting(self, payloads: Sequence[bytes], *, first_sequence: int, timestamp: int) -> None:
        """Send one frame's packets (as :meth:`write`) once the path takes them, so their
        header says when they really left: at once if the path is ready or becomes ready
        (polled every 5 ms while the socket is backed up), through aiortc's own awaitable
        path if it is not plain UDP (TURN). Raises ``ConnectionError`` once the transport
        has ended."""
        while not self.ready():
            dtls = self._sender.transport
            if dtls.state in ("closed", "failed"):
                raise ConnectionError("the viewer's transport has ended")
            pair = _nominated_pair(dtls) if dtls.state == "connected" else None
            if pair is not None and type(pair.protocol) is not StunProtocol:
                if self._template is None:
                    self._bind()
                assert self._template is not None
                now = ntp_time(time.time_ns())
                datagrams = self._template.datagrams(payloads, first_sequence=first_sequence, timestamp=timestamp,
                                                     abs_send_time=now >> 14)
                for datagram in datagrams:
                    self._history[sequence_number(datagram) % RTP_HISTORY_SIZE] = datagram
                    await dtls._send_rtp(datagram)
                self._count(len(datagrams), timestamp, sum(map(len, payloads)), now)
                return
            await asyncio.sleep(0.005)
        self.write(payloads, first_sequence=first_sequence, timestamp=timestamp)

    def _find_path(self) -> _UdpPath | None:
        """The plain UDP path to the viewer, once DTLS is up; None before, or for TURN."""
        dtls = self._sender.transport
        if dtls.state != "connected":
            return None
        nominated = _nominations(dtls)
        pair = nominated.get(1)
        if pair is None or type(pair.protocol) is not StunProtocol:
            return None
        udp = pair.protocol.transport
        if self._template is None:
            self._bind()
        dtls.once("statechange", self._forget_path)  # no longer connected: look again
        sock = _direct_socket(udp)
        return _UdpPath(dtls=dtls, nominated=nominated, pair=pair, udp=udp, protect=dtls._tx_srtp.protect,
                        send=None if sock is None else sock.sendto,
                        sendmsg=sock.sendmsg if sock is not None and supports_gso(sock) else None,
                        address=pair.remote_addr)

    def _forget_path(self) -> None:
        self._path = None

    def _bind(self) -> None:
        """What negotiation decided: the payload types, the MID, and so the header."""
        codecs = self._transceiver._codecs
        if not codecs:
            raise AiortcChanged("RTCRtpTransceiver has no negotiated codec once connected")
        payload_type = codecs[0].payloadType
        if payload_type is None:
            raise AiortcChanged("RTCRtpTransceiver's negotiated codec has no payload type")
        self._rtx_payload_type = next((c.payloadType for c in codecs if c.mimeType.lower() == "video/rtx"
                                       and c.parameters.get("apt") == payload_type), None)
        packet = RtpPacket(payload_type=payload_type, ssrc=self.ssrc)
        packet.extensions.mid = self._transceiver.mid
        packet.extensions.abs_send_time = 0
        zeroed = packet.serialize(self._extensions)
        packet.extensions.abs_send_time = 0xFFFFFF
        try:
            at = abs_send_time_offset(zeroed, packet.serialize(self._extensions))
            self._template = HeaderTemplate(zeroed, abs_send_time_at=at)
        except ValueError as exc:
            raise AiortcChanged(f"RtpPacket.serialize wrote an unexpected header: {exc}") from exc

    def _count(self, packets: int, timestamp: int, octets: int, ntp_time: int) -> None:
        sender = self._sender
        setattr(sender, _NTP_TIMESTAMP, ntp_time)
        setattr(sender, _RTP_TIMESTAMP, timestamp)
        setattr(sender, _PACKET_COUNT, getattr(sender, _PACKET_COUNT) + packets)
        setattr(sender, _OCTET_COUNT, getattr(sender, _OCTET_COUNT) + octets)

    async def _retransmit(self, sequence: int) -> None:
        """A packet the viewer reported lost (NACK), again: as RTX if negotiated."""
        datagram = self._history[sequence % RTP_HISTORY_SIZE]
        if datagram is None or sequence_number(datagram) != sequence:
            return
        if self._rtx_payload_type is not None:
            packet = wrap_rtx(RtpPacket.parse(datagram, self._extensions), payload_type=self._rtx_payload_type,
                              sequence_number=self._rtx_sequence, ssrc=self._sender._rtx_ssrc)
            self._rtx_sequence = uint16_add(self._rtx_sequence, 1)
            datagram = packet.serialize(self._extensions)
        try:
            await self._sender.transport._send_rtp(datagram)
        except (ConnectionError, pylibsrtp.Error):
            # Gone, or SRTP refuses the packet (aiortc's own retransmission of a packet
            # already protected, without RTX): the viewer asks for a keyframe in the end.
            # Raised here, it would end the transport's receive loop.
            pass


@dataclass(frozen=True, slots=True)
class _UdpPath:
    """Where :meth:`RtpWriter.write` sends: the viewer's SRTP session and nominated pair."""

    dtls: RTCDtlsTransport
    nominated: dict[int, CandidatePair]  # aioice's own dict: a pair no longer in it is gone
    pair: CandidatePair
    udp: asyncio.DatagramTransport
    protect: Callable[[bytes], bytes]
    send: Callable[[bytes, tuple[str, int]], object] | None  # the socket's own sendto, if safe
    # ... and its sendmsg, where send is and the kernel segments UDP (GSO; see streaming/gso.py)
    sendmsg: Callable[[Sequence[bytes], list[tuple[int, int, bytes]], int, tuple[str, int]], object] | None
    address: tuple[str, int]


def _direct_socket(udp: asyncio.DatagramTransport) -> socket.socket | None:
    """The socket under asyncio's selector datagram transport, whose own sendto the
    transport calls first (when nothing is buffered, as :meth:`RtpWriter.ready` made sure)
    after checks that cost as much as the call; None for any other transport (another
    event loop) or a connected socket (asyncio would send without the address)."""
    if type(udp) is not _SELECTOR_DATAGRAM_TRANSPORT or udp.get_extra_info("peername") is not None:
        return None
    sock = getattr(udp, "_sock", None)
    if not isinstance(sock, socket.socket):
        raise AiortcChanged("asyncio's datagram transport has no _sock socket")
    return sock


def _nominations(dtls: RTCDtlsTransport) -> dict[int, CandidatePair]:
    connection = dtls.transport.iceGatherer._connection
    nominated = getattr(connection, "_nominated", None)
    if not isinstance(nominated, dict):
        raise AiortcChanged("aioice Connection has no _nominated")
    return nominated


def _nominated_pair(dtls: RTCDtlsTransport) -> CandidatePair | None:
    return _nominations(dtls).get(1)


def negotiated_codec(transceiver: RTCRtpTransceiver) -> RTCRtpCodecParameters | None:
    """The first (sending) codec negotiated for ``transceiver``, after ``setRemoteDescription``."""
    codecs = getattr(transceiver, "_codecs", None)
    if codecs is None:
        raise AiortcChanged("RTCRtpTransceiver has no _codecs")
    return codecs[0] if codecs else None


async def send_picture_loss(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Send a PLI (RFC 4585 section 6.3.1) for ``media_ssrc`` from this receiver."""
    await receiver._send_rtcp_pli(media_ssrc)


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` (on the loop) when the remote side asks this sender for a keyframe."""
    if not callable(getattr(sender, "_send_keyframe", None)):
        raise AiortcChanged("RTCRtpSender has no _send_keyframe()")
    setattr(sender, "_send_keyframe", callback)


def restrict_host_candidates(pc: RTCPeerConnection, addresses: Sequence[str]) -> None:
    """Gather host candidates only on ``addresses`` for every transceiver ``pc`` has now.

    Call after the transceivers exist and before ``setLocalDescription`` (which gathers).
    STUN and TURN candidates, if ICE servers are configured, are still gathered from
    these host sockets.
    """
    wanted = list(addresses)
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport.iceGatherer._connection
        for name in ("_local_candidates_start", "_local_candidates_end", "_local_candidates", "_components",
                     "get_component_candidates"):
            if not hasattr(connection, name):
                raise AiortcChanged(f"aioice Connection has no {name}")
        setattr(connection, "gather_candidates", _gather_on(connection, wanted))


def _gather_on(connection: Any, addresses: list[str]) -> Callable[[], Any]:
    async def gather_candidates() -> None:
        # The same steps as aioice's Connection.gather_candidates, with our addresses.
        if connection._local_candidates_start:
            return
        connection._local_candidates_start = True
        results = await asyncio.gather(*[
            connection.get_component_candidates(component=component, addresses=addresses)
            for component in connection._components])
        for candidates in results:
            connection._local_candidates += candidates
        connection._local_candidates_end = True

    return gather_candidates
