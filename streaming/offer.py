"""Pure checks and clean-up of an SDP offer before a peer connection sees it."""

from __future__ import annotations

from typing import Literal

from aiortc.sdp import SessionDescription

from .errors import InvalidOffer

__all__ = ["check_offer", "strip_mdns_candidates"]


def strip_mdns_candidates(sdp: str) -> str:
    """Drop ``a=candidate`` lines whose address is an mDNS name (``*.local``).

    Chromium hides its host addresses behind mDNS names. aiortc tries to resolve each one
    and waits a second before giving up, then connects anyway through the peer-reflexive
    address that the browser's own connectivity checks reveal. Dropping the names saves
    that second. Where a media section loses candidates this way, its
    ``a=end-of-candidates`` goes too: with no candidate left and the end signalled, the
    ICE agent would declare failure before the browser's first check arrives.
    """
    lines = sdp.splitlines()
    out: list[str] = []
    section: list[str] = []
    stripped = False

    def flush() -> None:
        nonlocal stripped
        out.extend(x for x in section if not (stripped and x.strip() == "a=end-of-candidates"))
        section.clear()
        stripped = False

    for line in lines:
        if line.startswith("m="):
            flush()
        if line.startswith("a=candidate:") and _candidate_address(line).endswith(".local"):
            stripped = True
            continue
        section.append(line)
    flush()
    return "\r\n".join(out) + "\r\n"


def _candidate_address(line: str) -> str:
    # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...
    parts = line.split()
    return parts[4].lower() if len(parts) > 5 else ""


_SENDS = {"sendonly", "sendrecv"}
_RECEIVES = {"recvonly", "sendrecv"}


def check_offer(sdp: str, *, role: Literal["publish", "view"]) -> str:
    """The offer, cleaned for aiortc; raises :class:`InvalidOffer` if it cannot start a video session.

    The checks are the ones aiortc would otherwise fail on later with less helpful errors
    (or not at all): the text parses as SDP; it has a video section that is not rejected
    (port 0) and whose direction fits the role (a publisher sends video, a viewer
    receives it); that section carries ICE credentials and a DTLS fingerprint, and says
    ``a=setup:actpass`` as only an offer does.
    """
    if not isinstance(sdp, str) or not sdp.strip().startswith("v=0"):
        raise InvalidOffer("not an SDP session description")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever the bad line triggers
        raise InvalidOffer(f"unparsable SDP: {exc}") from exc
    video = [m for m in parsed.media if m.kind == "video" and m.port != 0]
    if not video:
        raise InvalidOffer("the offer has no video")
    wanted = _SENDS if role == "publish" else _RECEIVES
    if (video[0].direction or "sendrecv") not in wanted:
        raise InvalidOffer(f"the offer's video is {video[0].direction}: a {role} offer must "
                           f"{'send' if role == 'publish' else 'receive'} video")
    for media in video[:1]:
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise InvalidOffer("the offer has no ICE credentials")
        if media.dtls is None or not media.dtls.fingerprints:
            raise InvalidOffer("the offer has no DTLS fingerprint")
        if media.dtls.role != "auto":
            # An offerer must say a=setup:actpass (RFC 8842 section 5.2); anything else is
            # an answer posted by mistake.
            raise InvalidOffer("not an offer: a=setup is not actpass")
        if not media.rtp.codecs:
            raise InvalidOffer("the offer's video has no codec")
    return strip_mdns_candidates(sdp)
