"""Which rejected messages are kept row by row: the first few per device, reason and minute.

Every rejection used to become a row of ``rejected_messages``, so one camera sending over
its rate (or junk) filled the table as fast as it could publish. Now, per (device, reason)
and per window, the first ``keep`` rejections are kept with their payload as before; the
rest are only counted (``watchfloor_ingest_messages_rejected`` counts them all, and
``watchfloor_ingest_rejections_not_kept`` those not stored) and, once the window has closed,
written as **one** summary row (empty payload, ``detail`` says how many and when). The
table then grows with time and the number of misbehaving devices, not with what a device
sends. Summaries are written with the next batch after their window closes, and when the
worker stops.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

from telemetry.decode import Reason, Rejection
from telemetry.store import RejectedMessage

__all__ = ["RejectionSampler"]


@dataclass
class _Window:
    opened: datetime
    kept: int = 0
    dropped: int = 0
    last: datetime | None = None
    topic: str = ""


class RejectionSampler:
    """Used by the decoder thread only. Bounded: past ``max_keys`` open windows, the oldest
    is closed early (its summary written), which only ever keeps more rows, never fewer."""

    def __init__(self, *, keep: int, window_s: float = 60.0, max_keys: int = 100_000) -> None:
        self._keep, self._window, self._max_keys = keep, timedelta(seconds=window_s), max_keys
        self._open: OrderedDict[tuple[str | None, Reason], _Window] = OrderedDict()
        self.not_kept: Counter[str] = Counter()  # by reason; read by the metrics

    def admit(self, message: RejectedMessage) -> list[RejectedMessage]:
        """The rows to write for ``message``: itself (kept), nothing (counted), and any summary due."""
        key = (message.rejection.device_id, message.rejection.reason)
        out: list[RejectedMessage] = []
        window = self._open.get(key)
        if window is not None and message.received_at - window.opened >= self._window:
            out += self._summary(key, self._open.pop(key))
            window = None
        if window is None:
            window = self._open[key] = _Window(opened=message.received_at)
            while len(self._open) > self._max_keys:
                out += self._summary(*self._open.popitem(last=False))
        if window.kept < self._keep:
            window.kept += 1
            out.append(message)
        else:
            window.dropped += 1
            window.last, window.topic = message.received_at, message.topic
            self.not_kept[key[1].value] += 1
        return out

    def due(self, now: datetime, *, everything: bool = False) -> list[RejectedMessage]:
        """Summaries of the windows that have closed by ``now`` (every window with ``everything``)."""
        closed = [k for k, w in self._open.items() if everything or now - w.opened >= self._window]
        return [row for key in closed for row in self._summary(key, self._open.pop(key))]

    @staticmethod
    def _summary(key: tuple[str | None, Reason], window: _Window) -> list[RejectedMessage]:
        if not window.dropped or window.last is None:
            return []
        device_id, reason = key
        source = device_id or "unnamed devices"
        detail = (f"{window.dropped} more {reason.value} messages from {source} not kept row by row"
                  f" ({window.opened.isoformat()} to {window.last.isoformat()}); the first {window.kept} are kept")
        rejection = Rejection(reason, detail, device_id)
        return [RejectedMessage(rejection, window.topic, b"", window.last)]
