"""Failed sign-ins in the audit log without letting a flood write it row by row.

Every audit entry is a link of the hash chain, written under one global lock; a guesser
sending thousands of wrong passwords would make the log (and every writer waiting on that
lock) as busy as they liked. So per (username, client) and per window (a minute): the first
failure is audited at once, as ever; the rest are counted, and written as **one**
``sign_in_failed`` entry with ``count`` (and the window's first and last time) when the
window has closed: at the pair's next failure, or by the API's sweep (every few seconds),
or when the process stops. The log keeps the fact and the number of every failure; it
loses only the exact time of each one after the first of a minute.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

__all__ = ["FailureDigest", "FailureEntry"]


@dataclass(frozen=True)
class FailureEntry:
    """A ``sign_in_failed`` entry to append: its actor and details."""

    username: str
    details: dict[str, object]


@dataclass
class _Window:
    opened: datetime
    last: datetime | None = None
    counted: int = 0  # failures after the first, not yet written


class FailureDigest:
    """Thread-safe; bounded to ``max_pairs`` open windows (past it the oldest is written out)."""

    def __init__(self, *, window_s: float = 60.0, max_pairs: int = 10_000) -> None:
        self._window = timedelta(seconds=window_s)
        self._max_pairs = max_pairs
        self._open: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        self._lock = threading.Lock()

    def failed(self, username: str, client: str, now: datetime | None = None) -> list[FailureEntry]:
        """Note one failure; the entries to append now (none while its window is open)."""
        now = now or datetime.now(timezone.utc)
        key = (username, client)
        out: list[FailureEntry] = []
        with self._lock:
            window = self._open.get(key)
            if window is not None and now - window.opened < self._window:
                window.counted += 1
                window.last = now
                return out
            if window is not None:
                out += self._summary(key, self._open.pop(key))
            self._open[key] = _Window(opened=now)
            while len(self._open) > self._max_pairs:
                out += self._summary(*self._open.popitem(last=False))
        out.append(FailureEntry(username, {"client": client}))
        return out

    def due(self, now: datetime | None = None, *, everything: bool = False) -> list[FailureEntry]:
        """The summaries of the windows that have closed (all of them with ``everything``)."""
        now = now or datetime.now(timezone.utc)
        out: list[FailureEntry] = []
        with self._lock:
            for key in [k for k, w in self._open.items() if everything or now - w.opened >= self._window]:
                out += self._summary(key, self._open.pop(key))
        return out

    @staticmethod
    def _summary(key: tuple[str, str], window: _Window) -> list[FailureEntry]:
        if not window.counted:
            return []
        username, client = key
        return [FailureEntry(username, {"client": client, "count": window.counted, "summary": True,
                                        "first_at": window.opened.isoformat(),
                                        "last_at": (window.last or window.opened).isoformat()})]
