"""The ingest worker's inbox: what paho's thread read, waiting for the decoder.

It holds :class:`core.mqtt.Inbound` reads (the messages of one read of the socket, together)
and counts messages, so that crossing from paho's thread to the decoder costs one lock per
read instead of one ``queue.Queue`` put and get per message, and the decoder is woken once
per batch (when it is full, or when the first message comes) instead of polling.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque

from core.mqtt import Inbound

__all__ = ["Inbox"]

_NOBODY_WAITS = sys.maxsize


class Inbox:
    """Reads from paho's thread to the decoder, bounded in messages.

    When full, :meth:`put` waits (push back on the producer): paho's thread stops reading
    the socket and the broker holds the backlog. A read that would take the inbox past
    ``maxsize`` messages waits too, unless the inbox is empty, so it holds at most
    ``maxsize`` messages, or one read when a single read is larger. A put still waiting when
    the worker stops gives up: its messages were not acknowledged, so the broker delivers
    them again.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._reads: deque[Inbound] = deque()
        self._count = 0
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._filled = threading.Condition(self._lock)
        self._wanted = _NOBODY_WAITS  # the decoder, waiting, is woken when this many messages are held

    def __len__(self) -> int:
        return self._count

    def put(self, inbound: Inbound, stopping: threading.Event) -> bool:
        """Paho's thread: add one read; False if the worker stopped while it waited."""
        n = len(inbound)
        with self._lock:
            while self._count and self._count + n > self.maxsize:
                if stopping.is_set():
                    return False
                self._not_full.wait(0.5)
            self._reads.append(inbound)
            self._count += n
            if self._count >= self._wanted:
                self._filled.notify()
        return True

    def take(self, limit: int, *, first_within: float, fill_within: float) -> list[Inbound]:
        """The decoder: up to ``limit`` messages, in order. Waits up to ``first_within``
        seconds for the first (none: an empty list), then up to ``fill_within`` seconds
        more for ``limit``; a read is split where the limit falls."""
        with self._lock:
            deadline = time.monotonic() + first_within
            self._wanted = 1
            while not self._count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._wanted = _NOBODY_WAITS
                    return []
                self._filled.wait(remaining)
            deadline = time.monotonic() + fill_within
            self._wanted = limit
            while self._count < limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._filled.wait(remaining)
            self._wanted = _NOBODY_WAITS  # no notify per read while the decoder is busy
            taken: list[Inbound] = []
            n = 0
            while self._reads and n < limit:
                inbound = self._reads.popleft()
                if n + len(inbound) > limit:
                    inbound, rest = inbound.split(limit - n)
                    self._reads.appendleft(rest)
                taken.append(inbound)
                n += len(inbound)
            self._count -= n
            self._not_full.notify_all()
        return taken
