"""Live view relay: WebRTC fan-out of a camera's encoded video to many viewers (aiortc).

Entry point: :class:`Relay` (``publish``, ``view``, ``close``, ``stats``, ``aclose``).
It knows nothing of HTTP, users or consent; the WHIP/WHEP routes in ``api`` call it.
``streaming.synthetic`` draws a test picture; ``streaming.client`` is the other end of a
WHIP/WHEP exchange, for tests, benchmarks and simulated cameras.
"""

from .errors import InvalidOffer, NoSuchStream, RelayError
from .metrics import HistogramSnapshot
from .offer import OfferLimits
from .relay import IceServerConfig, Relay, RelayEvent, RelayStats, Session

__all__ = [
    "HistogramSnapshot",
    "IceServerConfig",
    "InvalidOffer",
    "NoSuchStream",
    "OfferLimits",
    "Relay",
    "RelayError",
    "RelayEvent",
    "RelayStats",
    "Session",
]
