"""Pure checks and clean-up of an SDP offer before a peer connection sees it.

An offer is untrusted input that steers the relay: aiortc parses every line, answers
every media section, and sends STUN binding requests to every candidate address, again
and again until the session connects or times out. So before aiortc sees an offer:

* its size is bounded (bytes, lines, media sections): a few hundred bundled sections
  cost aiortc hundreds of milliseconds of the event loop and an answer as large;
* every media section must say its direction (aiortc's ``createAnswer`` fails without
  one, after the offer was accepted);
* its candidates are capped in number, and those whose address the relay must never
  probe are dropped (:func:`candidate_refusal`): otherwise anyone who may post an offer
  makes the relay send UDP to addresses inside its own network.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from aiortc.sdp import SessionDescription

from .errors import InvalidOffer

__all__ = ["OfferLimits", "candidate_refusal", "check_offer", "check_size", "filter_candidates"]

# The cloud providers' instance-metadata and host-agent addresses that are not link-local
# already (169.254.169.254 and fe80::a9fe:a9fe are): AWS over IPv6, Alibaba, Azure's
# wire server. A metadata service answers whoever reaches it, so the relay never does.
_METADATA = frozenset(ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200", "168.63.129.16"))


@dataclass(frozen=True)
class OfferLimits:
    """What an offer may hold. A browser's offer (audio and video, bundled) is about 6 KB,
    150 lines, 2 sections and a handful of candidates; these leave room for any real
    client and none for an offer made to load the relay.

    ``allow_private_candidates``: control rooms and cameras reach the relay over private
    networks (RFC 1918, RFC 4193, carrier-grade NAT), so their candidates are allowed by
    default; a relay that only serves the internet sets it false and probes only global
    addresses.
    """

    max_bytes: int = 32 * 1024
    max_lines: int = 500
    max_sections: int = 4
    max_candidates: int = 16
    allow_private_candidates: bool = True


def check_size(sdp: str, limits: OfferLimits) -> None:
    """Raise :class:`InvalidOffer` if the offer is larger than ``limits`` allow; cheap, so
    it runs before the offer is parsed."""
    size = len(sdp.encode("utf-8", errors="replace"))
    if size > limits.max_bytes:
        raise InvalidOffer(f"the offer is {size} bytes, more than the {limits.max_bytes} allowed")
    lines = sdp.splitlines()
    if len(lines) > limits.max_lines:
        raise InvalidOffer(f"the offer has {len(lines)} lines, more than the {limits.max_lines} allowed")
    sections = sum(1 for line in lines if line.startswith("m="))
    if sections > limits.max_sections:
        raise InvalidOffer(f"the offer has {sections} media sections, more than the {limits.max_sections} allowed")
    candidates = sum(1 for line in lines if line.startswith("a=candidate:"))
    if candidates > limits.max_candidates:
        raise InvalidOffer(f"the offer has {candidates} candidates, more than the {limits.max_candidates} allowed")


def candidate_refusal(address: str, *, allow_private: bool) -> str | None:
    """Why the relay must not send to a candidate at ``address``, or None if it may.

    Refused: names (aiortc would resolve them: a DNS lookup chosen by the caller, and an
    address behind it that nobody checked), loopback, unspecified, link-local (which
    holds 169.254.169.254, the usual metadata address), multicast, reserved (the
    broadcast address among them), cloud metadata, and, unless allowed, private ranges.
    An IPv4 address written as IPv6 (``::ffff:127.0.0.1``) is judged as IPv4.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    checks = (("cloud metadata", ip in _METADATA), ("loopback", ip.is_loopback),
              ("unspecified", ip.is_unspecified), ("link-local", ip.is_link_local),
              ("multicast", ip.is_multicast), ("reserved", ip.is_reserved),
              ("private", not allow_private and not ip.is_global))
    return next((reason for reason, hit in checks if hit), None)


def filter_candidates(sdp: str, *, allow_private: bool) -> str:
    """Drop the ``a=candidate`` lines the relay must not use.

    mDNS names (``*.local``, how Chromium hides its host addresses) go silently: aiortc
    would try to resolve each and wait a second before giving up. The rest go by
    :func:`candidate_refusal`. Neither costs the session: the peer's own connectivity
    checks reveal its real address (a peer-reflexive candidate), which the relay then
    answers. Where a media section loses candidates this way, its
    ``a=end-of-candidates`` goes too: with no candidate left and the end signalled, the
    ICE agent would declare failure before the peer's first check arrives.
    """
    out: list[str] = []
    section: list[str] = []
    stripped = False

    def flush() -> None:
        nonlocal stripped
        out.extend(x for x in section if not (stripped and x.strip() == "a=end-of-candidates"))
        section.clear()
        stripped = False

    for line in sdp.splitlines():
        if line.startswith("m="):
            flush()
        if line.startswith("a=candidate:"):
            address = _candidate_address(line)
            if address.endswith(".local") or candidate_refusal(address, allow_private=allow_private):
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


def check_offer(sdp: str, *, role: Literal["publish", "view"], limits: OfferLimits = OfferLimits()) -> str:
    """The offer, cleaned for aiortc; raises :class:`InvalidOffer` if it cannot start a video session.

    Besides the bounds and candidates above, the checks are the ones aiortc would
    otherwise fail on later with less helpful errors (or not at all): the text parses as
    SDP; every section says its direction; it has a video section that is not rejected
    (port 0) and whose direction fits the role (a publisher sends video, a viewer
    receives it); that section carries ICE credentials and a DTLS fingerprint, and says
    ``a=setup:actpass`` as only an offer does.
    """
    if not isinstance(sdp, str) or not sdp.strip().startswith("v=0"):
        raise InvalidOffer("not an SDP session description")
    check_size(sdp, limits)
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever the bad line triggers
        raise InvalidOffer(f"unparsable SDP: {exc}") from exc
    for index, media in enumerate(parsed.media):
        if media.direction is None:
            raise InvalidOffer(f"media section {index} ({media.kind}) has no direction "
                               "(a=sendrecv, a=sendonly, a=recvonly or a=inactive)")
    video = [m for m in parsed.media if m.kind == "video" and m.port != 0]
    if not video:
        raise InvalidOffer("the offer has no video")
    wanted = _SENDS if role == "publish" else _RECEIVES
    if video[0].direction not in wanted:
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
    return filter_candidates(sdp, allow_private=limits.allow_private_candidates)
