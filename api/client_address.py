"""Who the client is: the peer's address, or what a trusted proxy says it is.

Behind a proxy every request comes from the proxy's address, so limits keyed on the peer
would put every user in one bucket. The proxy names the client in ``X-Forwarded-For``
(nginx's ``$proxy_add_x_forwarded_for``) or ``Forwarded`` (RFC 7239), but anyone can send
those headers, so they are read only when the peer is one of ``WATCHFLOOR_TRUSTED_PROXIES``,
and then from the right: each trusted hop vouches for the one before it, and the first
address that is not a trusted proxy is the client. What a client wrote further left is
never believed. uvicorn's own ``proxy_headers`` is turned off (watchfloor/cli.py), so this
is the one place that reads them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection

__all__ = ["Network", "client_address", "networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAX_HOPS = 32  # a longer chain is read no further: the client is the last trusted hop's word


def networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """The trusted proxies' networks (settings.trusted_proxies was validated at start-up)."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def _forwarded_for(value: str) -> list[str]:
    """The ``for=`` addresses of a Forwarded header, in order (ports and brackets dropped)."""
    hops = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, raw = pair.strip().partition("=")
            if name.lower() == "for":
                node = raw.strip().strip('"')
                if node.startswith("["):  # "[2001:db8::1]:4711"
                    node = node[1:].partition("]")[0]
                elif node.count(":") == 1:  # "192.0.2.43:4711"
                    node = node.partition(":")[0]
                hops.append(node)
    return hops


def _chain(headers: Headers) -> list[str]:
    forwarded = headers.getlist("forwarded")
    if forwarded:
        return _forwarded_for(",".join(forwarded))
    return [hop.strip() for hop in ",".join(headers.getlist("x-forwarded-for")).split(",") if hop.strip()]


def client_address(connection: HTTPConnection, proxies: Sequence[Network]) -> str:
    """The client's address for limits and records ("unknown" without a peer)."""
    peer = connection.client.host if connection.client else "unknown"
    if not proxies or not _trusted(peer, proxies):
        return peer
    address = peer
    for hop in reversed(_chain(connection.headers)[-_MAX_HOPS:]):
        address = hop[:64]
        if not _trusted(hop, proxies):
            break
    return address
