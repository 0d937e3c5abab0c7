"""Live view: consent, the relay's sessions, and what everyone is told.

* :mod:`.workflow` (requests, consent, the sweeper, the stream) and :mod:`.viewers` (who may
  watch, when a viewing is over, what the wearer is told): the pure decisions, an event and
  the records in, :mod:`.effects` as data out;
* :mod:`.records`: the transactions (SQL through :mod:`services.viewings`, with their audit rows);
* :mod:`.broker`: the paho adapter (commands out, replies and events in, one hand-over);
* :mod:`.service`: :class:`LiveView`, the adapter that runs them, owned by the app's lifespan.
"""

from services.live_view.broker import LIVE_VIEW_TOPIC
from services.live_view.service import LiveView, Notifier, ice_servers

__all__ = ["LIVE_VIEW_TOPIC", "LiveView", "Notifier", "ice_servers"]
