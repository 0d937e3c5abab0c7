"""The relay's errors, one tree:

    RelayError
    ├── NoSuchStream   nobody publishes the stream a viewer asked for (WHEP: 404)
    └── InvalidOffer   the SDP is not an offer, cannot be parsed, has no video, or
                       offers no codec the relay forwards, is too large, or
                       cannot be answered (WHIP/WHEP: 400)

The HTTP layer maps them to status codes in one place; the relay never speaks HTTP.
"""

from __future__ import annotations

__all__ = ["InvalidOffer", "NoSuchStream", "RelayError"]


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class NoSuchStream(RelayError):
    """A viewer asked for a stream that has no publisher."""


class InvalidOffer(RelayError):
    """The SDP cannot start a session: not an offer, unparsable, no video, or no common codec."""
