"""telemetry.inbox: reads from paho's thread to the decoder, in order, split at the batch
limit, bounded in messages, pushing back on the producer and giving up once the worker stops."""

from __future__ import annotations

import threading

from core.mqtt import Inbound
from telemetry.inbox import Inbox


def _read(*names: str, generation: int = 1) -> Inbound:
    return Inbound(generation, 0.0, list(range(1, len(names) + 1)), list(names), [n.encode() for n in names])


def _topics(reads: list[Inbound]) -> list[str]:
    return [t for r in reads for t in r.topics]


def test_messages_come_out_in_order_split_at_the_limit() -> None:
    """A batch takes whole reads up to the limit and the head of the next one; the rest of
    that read comes first in the next batch, with its packet ids."""
    inbox = Inbox(100)
    stopping = threading.Event()
    assert inbox.put(_read("a", "b"), stopping) and inbox.put(_read("c", "d", "e"), stopping)
    first = inbox.take(3, first_within=0, fill_within=0)
    assert _topics(first) == ["a", "b", "c"] and len(inbox) == 2
    rest = inbox.take(10, first_within=0, fill_within=0)
    assert _topics(rest) == ["d", "e"] and rest[0].mids == [2, 3]
    assert inbox.take(10, first_within=0, fill_within=0) == [] and len(inbox) == 0


def test_a_full_inbox_holds_the_producer_until_the_decoder_takes() -> None:
    """A read that would pass the bound waits; once the decoder takes, it goes in."""
    inbox = Inbox(3)
    stopping = threading.Event()
    assert inbox.put(_read("a", "b"), stopping)
    done = threading.Event()

    def produce() -> None:
        inbox.put(_read("c", "d"), stopping)
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    assert _topics(inbox.take(2, first_within=0, fill_within=0)) == ["a", "b"]
    producer.join(30)
    assert done.is_set() and _topics(inbox.take(10, first_within=5, fill_within=0)) == ["c", "d"]


def test_a_put_into_a_full_inbox_gives_up_once_the_worker_stops() -> None:
    """Unacknowledged, the read is the broker's to deliver again; the inbox keeps its bound."""
    inbox = Inbox(2)
    stopping = threading.Event()
    assert inbox.put(_read("a", "b"), stopping)
    stopping.set()
    assert not inbox.put(_read("c"), stopping)
    assert len(inbox) == 2


def test_a_read_larger_than_the_bound_goes_into_an_empty_inbox() -> None:
    """Else it could never go in: the bound is maxsize messages, or one read."""
    inbox = Inbox(2)
    assert inbox.put(_read("a", "b", "c"), threading.Event())
    assert _topics(inbox.take(10, first_within=0, fill_within=0)) == ["a", "b", "c"]
