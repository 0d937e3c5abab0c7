"""The relay's offer checks (streaming/offer.py): pure unit tests of the bounds, the
directions and the candidate filter, and the attack they stop, against a real relay: an
offer naming loopback never makes the relay send it a STUN request."""

from __future__ import annotations

import asyncio
import re
import struct

import aioice.ice
import pytest

from streaming import InvalidOffer, OfferLimits, Relay
from streaming.offer import candidate_refusal, check_offer, check_size, filter_candidates
from tests.helpers.offers import real_offer
from tests.helpers.waiting import run

_STUN_COOKIE = 0x2112A442


def with_candidates(sdp: str, *addresses: tuple[str, int]) -> str:
    """``sdp`` with its own candidates replaced by host candidates at ``addresses``, the
    first with the highest priority."""
    sdp = re.sub(r"a=candidate:[^\r\n]*\r\n|a=end-of-candidates\r\n", "", sdp)
    lines = "".join(f"a=candidate:{i} 1 udp {2130706431 - i * 1000} {host} {port} typ host\r\n"
                    for i, (host, port) in enumerate(addresses, start=1))
    head, video, rest = sdp.partition("m=video")
    return head + video + rest.replace("\r\n", "\r\n" + lines, 1) if video else sdp


# -- the candidate filter -------------------------------------------------------

@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("169.254.169.254", "link-local"), ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"), ("224.0.0.251", "multicast"), ("ff02::fb", "multicast"),
    ("255.255.255.255", "reserved"), ("fd00:ec2::254", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"), ("168.63.129.16", "cloud metadata"),
    ("metadata.google.internal", "not an IP address"), ("", "not an IP address"),
])
def test_addresses_the_relay_never_probes(address: str, reason: str) -> None:
    """Loopback, unspecified, link-local (the usual metadata address among them),
    multicast, reserved, cloud metadata and names are refused whatever the setting."""
    assert candidate_refusal(address, allow_private=True) == reason
    assert candidate_refusal(address, allow_private=False) == reason


@pytest.mark.parametrize("address", ["10.1.2.3", "172.16.0.9", "192.168.1.20", "fd12:3456::1", "100.64.0.1"])
def test_private_addresses_follow_the_setting(address: str) -> None:
    """Private ranges (RFC 1918, RFC 4193, carrier-grade NAT) are allowed by default (control
    rooms are on private networks) and refused when the setting says so; global ones never."""
    assert candidate_refusal(address, allow_private=True) is None
    assert candidate_refusal(address, allow_private=False) == "private"
    assert candidate_refusal("81.2.69.160", allow_private=False) is None


def test_filter_keeps_only_usable_candidates() -> None:
    """Exactly the refused and mDNS candidates go, and a section's end-of-candidates with
    them; a section that lost none keeps its own."""
    sdp = ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
           "a=candidate:1 1 udp 2122 abcd-1234.local 5000 typ host\r\n"
           "a=candidate:2 1 udp 2121 127.0.0.1 5001 typ host\r\n"
           "a=candidate:3 1 udp 2120 169.254.169.254 80 typ host\r\n"
           "a=candidate:4 1 udp 2119 10.0.0.8 5003 typ host\r\n"
           "a=candidate:5 1 udp 2118 81.2.69.160 5004 typ srflx raddr 10.0.0.8 rport 5003\r\n"
           "a=end-of-candidates\r\n"
           "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=candidate:6 1 udp 2122 10.0.0.9 5002 typ host\r\n"
           "a=end-of-candidates\r\n")
    kept = [line.split()[4] for line in filter_candidates(sdp, allow_private=True).splitlines()
            if line.startswith("a=candidate:")]
    assert kept == ["10.0.0.8", "81.2.69.160", "10.0.0.9"]
    cleaned = filter_candidates(sdp, allow_private=True)
    assert cleaned.count("a=end-of-candidates") == 1 and cleaned.endswith("a=end-of-candidates\r\n")
    public = [line.split()[4] for line in filter_candidates(sdp, allow_private=False).splitlines()
              if line.startswith("a=candidate:")]
    assert public == ["81.2.69.160"]


def test_candidates_per_offer_are_capped() -> None:
    """An offer with more candidates than the limit is refused before it is parsed."""
    addresses = [(f"10.0.0.{i}", 5000 + i) for i in range(1, 18)]
    with pytest.raises(InvalidOffer, match="17 candidates, more than the 16"):
        check_size(with_candidates("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", *addresses), OfferLimits())


# -- bounds and directions -------------------------------------------------------

def test_offers_past_the_bounds_are_refused_with_the_reason() -> None:
    """Too many media sections (the 580 bundled audio sections that stalled the loop),
    lines or bytes: refused by the cheap check, before aiortc parses anything."""
    offer = run(real_offer(audio=True))
    check_offer(offer, role="publish")
    audio = offer[offer.index("m=audio"):offer.index("m=video")]
    many = offer.replace("m=video", audio * 580 + "m=video", 1)
    with pytest.raises(InvalidOffer, match="more than the 4 allowed"):
        check_offer(many, role="publish", limits=OfferLimits(max_bytes=10**7, max_lines=10**6))
    with pytest.raises(InvalidOffer, match="media sections"):
        check_offer(offer.replace("m=video", audio * 3 + "m=video", 1), role="publish")
    with pytest.raises(InvalidOffer, match="lines, more than"):
        check_offer(offer + "a=x\r\n" * 500, role="publish")
    with pytest.raises(InvalidOffer, match="bytes, more than"):
        check_offer(offer + "a=" + "x" * 40_000 + "\r\n", role="publish")


def test_a_section_without_a_direction_is_refused() -> None:
    """aiortc's createAnswer fails on a section that does not say its direction; the check
    refuses it first, naming the section."""
    offer = run(real_offer(audio=True))
    no_direction = offer.replace("a=sendonly\r\n", "", 1)
    with pytest.raises(InvalidOffer, match=r"media section 0 \(audio\) has no direction"):
        check_offer(no_direction, role="publish")


def test_the_relay_refuses_a_section_without_a_direction() -> None:
    """Through the relay: InvalidOffer (the API's 400), not whatever createAnswer raises."""
    async def scenario() -> None:
        relay = Relay(host_addresses=("127.0.0.1",))
        offer = await real_offer(audio=True)
        with pytest.raises(InvalidOffer):
            await relay.publish("cam-1", offer.replace("a=sendonly\r\n", "", 1))
        assert not relay.is_publishing("cam-1")
        await relay.aclose()

    run(scenario())


# -- the attack, against a real relay --------------------------------------------

class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.stun: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if len(data) >= 20 and struct.unpack("!I", data[4:8])[0] == _STUN_COOKIE:
            self.stun.put_nowait(data)


def test_the_relay_never_probes_loopback_named_in_an_offer() -> None:
    """A publisher offer names 127.0.0.1 (first, with the highest priority: the relay's
    first check would go there) and, after it, one of the machine's own addresses. The
    relay's STUN binding request reaches the second, the sentinel; by then the loopback
    socket, which would have been probed first, has received nothing."""
    hosts = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
    if not hosts:
        pytest.skip("no non-loopback IPv4 address to offer as the sentinel")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        trap_transport, trap = await loop.create_datagram_endpoint(_Inbox, local_addr=("127.0.0.1", 0))
        sentinel_transport, sentinel = await loop.create_datagram_endpoint(_Inbox, local_addr=(hosts[0], 0))
        trap_port = trap_transport.get_extra_info("sockname")[1]
        sentinel_port = sentinel_transport.get_extra_info("sockname")[1]
        relay = Relay(host_addresses=(hosts[0],))
        offer = with_candidates(await real_offer(), ("127.0.0.1", trap_port), (hosts[0], sentinel_port))
        assert f"127.0.0.1 {trap_port}" in offer
        await relay.publish("cam-1", offer)
        await asyncio.wait_for(sentinel.stun.get(), 10)
        assert trap.stun.empty(), "the relay sent a STUN request to a loopback address"
        await relay.aclose()
        trap_transport.close()
        sentinel_transport.close()

    run(scenario())
