"""The live picture: every unit's latest state, fed by the broker, fanned out to clients.

One module per part, pure ones first:

- ``state``: every unit's latest state, merged from telemetry, status and the registry, and
  which fields changed since the last tick (pure);
- ``deltas``: what a client of a given role and area receives each tick, and how a lagging
  client's deltas conflate (pure);
- ``snapshot``: a view's units as columns, deflated once per view, and each client's
  snapshot message around them (pure);
- ``client``: one websocket client's bounded queues and its sender;
- ``handover``: the lock, and the one function paho's thread calls;
- ``broker``: the paho adapter;
- ``hub``: :class:`LiveHub`, which ties them together and runs the ticker.
"""

from api.live.client import FeedCounters, LiveClient
from api.live.deltas import unit_view
from api.live.hub import LiveHub

__all__ = ["FeedCounters", "LiveClient", "LiveHub", "unit_view"]
