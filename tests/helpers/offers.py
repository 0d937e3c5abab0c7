"""SDP offers from a real aiortc peer connection, for tests of what the relay takes."""

from __future__ import annotations

from aiortc import RTCConfiguration, RTCPeerConnection

__all__ = ["real_offer"]


async def real_offer(direction: str = "sendonly", *, audio: bool = False) -> str:
    """An offer from a real aiortc peer connection, host candidates gathered (no STUN server:
    tests stay on this machine). Its peer connection is closed at once, so a session made
    from it is answered but never connects."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if audio:
        pc.addTransceiver("audio", direction=direction)
    pc.addTransceiver("video", direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    assert pc.localDescription is not None
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp
