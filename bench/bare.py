"""The bare subscriber as processes: the benches' yardstick for what receiving a message costs.

Each subscriber is main's paho client that does no work (the project's read buffer, MQTT
3.1.1, QoS 1 acknowledged by paho, a callback that only counts), in a process of its own.
Several share the stream in a ``$share`` group of their own, as ingest's workers do, so that
N workers are compared with N subscribers each taking the same share of the same stream:
a subscriber taking half the stream pays its per-read and per-wake-up costs over half as
many messages, and costs more per message than one taking all of it (bench/ingest.py
prints both yardsticks).
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import psutil
from common import CountingSubscriber

__all__ = ["BareSubscribers"]

_SAMPLE_EVERY = 50  # parsing every message for its latency would be work


class BareSubscribers:
    """``count`` bare subscribers, connected and subscribed (SUBACK) when made; a ``$share``
    group of their own when more than one. Use as a context manager: they end on leaving."""

    def __init__(self, url: str, count: int = 1, timeout_s: float = 30.0) -> None:
        spawn = multiprocessing.get_context("spawn")
        group = f"bare-{uuid.uuid4().hex[:6]}" if count > 1 else ""
        self._stop = spawn.Event()
        self._samples: Any = spawn.Queue()
        self._counts = [spawn.Value("q", 0, lock=False) for _ in range(count)]
        readies = [spawn.Event() for _ in range(count)]
        self._procs = [spawn.Process(target=_subscribe, args=(url, group, counter, ready, self._stop, self._samples),
                                     daemon=True) for counter, ready in zip(self._counts, readies)]
        for proc in self._procs:
            proc.start()
        deadline = time.monotonic() + timeout_s
        for ready in readies:
            if not ready.wait(max(0.0, deadline - time.monotonic())):
                self.close()
                raise SystemExit(f"a bare subscriber was not subscribed within {timeout_s:.0f} s")
        self.processes = [psutil.Process(p.pid) for p in self._procs]

    @property
    def received(self) -> int:
        """Messages received so far, all subscribers together (each reports every 20 ms)."""
        return sum(int(c.value) for c in self._counts)

    def reach(self, target: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.received < target and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> list[float]:
        """End the subscribers; the publish-to-delivery latencies (s) they sampled."""
        if self._stop.is_set():
            return []
        self._stop.set()
        latencies: list[float] = []
        for proc in self._procs:
            if proc.is_alive() or proc.exitcode == 0:
                try:
                    latencies += self._samples.get(timeout=20)
                except Exception:  # queue.Empty: a subscriber that died says nothing
                    pass
        for proc in self._procs:
            proc.join(20)
            if proc.is_alive():
                proc.kill()
        return latencies

    def __enter__(self) -> BareSubscribers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _subscribe(url: str, group: str, counter: Synchronized[int], ready: Any, stop: Any, samples: Any) -> None:
    """One subscriber's process: report its count every 20 ms (a shared value written per
    message would add to what is measured), then the latencies it sampled."""
    subscriber = CountingSubscriber(url, share_group=group, sample_every=_SAMPLE_EVERY)
    ready.set()
    while not stop.wait(0.02):
        counter.value = subscriber.count
    counter.value = subscriber.count
    subscriber.stop()
    samples.put(subscriber.latencies)
