"""UDP GSO runs (streaming/gso.py): the pure cut of a frame's datagrams into runs, and
what the kernel makes of one run on loopback."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.gso import MAX_SEGMENTS, MAX_TOTAL, gso_option, gso_runs, supports_gso


def obeys_the_rule(run: Sequence[bytes], *, max_segments: int, max_total: int) -> bool:
    """What one sendmsg with UDP_SEGMENT delivers as these datagrams, or a run of one."""
    if len(run) == 1:
        return True
    size = len(run[0])
    return (size > 0 and all(len(d) == size for d in run[:-1]) and 0 < len(run[-1]) <= size
            and len(run) <= max_segments and sum(map(len, run)) <= max_total)


# Sizes drawn from a few values, so that equal sizes (the runs) are common.
datagram = st.sampled_from([0, 1, 7, 700, 1200, 1330, 20_000, 65_507, 70_000]).map(bytes)


@settings(max_examples=400, deadline=None)
@given(st.lists(datagram, max_size=150), st.integers(2, 70), st.integers(1, 70_000))
def test_runs_keep_the_order_and_obey_the_kernel(datagrams: list[bytes], max_segments: int,
                                                 max_total: int) -> None:
    """The runs, joined, are the datagrams in order; each run is one the kernel cuts back
    into exactly those datagrams (equal sizes, a shorter non-empty last), within the
    segment count and byte limits."""
    runs = gso_runs(datagrams, max_segments=max_segments, max_total=max_total)
    assert [d for run in runs for d in run] == datagrams
    assert all(run for run in runs)
    assert all(obeys_the_rule(run, max_segments=max_segments, max_total=max_total) for run in runs)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 1400), st.integers(1, 200), st.integers(1, 1400))
def test_a_packetised_frame_is_as_few_runs_as_the_limits_allow(size: int, count: int, last: int) -> None:
    """A frame cut as VP8's packetiser cuts it (equal payloads, a shorter or equal last)
    is one run per 64 segments or per 65,507 bytes, whichever comes first: the equal
    payloads fill runs, and the last joins the final one where both limits still allow."""
    last = min(last, size)
    runs = gso_runs([bytes(size)] * count + [bytes(last)])
    per_run = min(MAX_SEGMENTS, MAX_TOTAL // size)
    filled, left = divmod(count, per_run)
    # A run with fewer than per_run equal payloads always has room for one more, and the
    # last is no larger than they are; a filled run takes it only under both limits.
    last_joins = bool(left) or (per_run < MAX_SEGMENTS and per_run * size + last <= MAX_TOTAL)
    assert len(runs) == filled + (1 if left else 0) + (0 if last_joins else 1)


def test_sizes_that_change_split_the_runs() -> None:
    """A larger datagram starts a new run, a shorter one ends its run, an empty one stands
    alone (as a segment it would vanish)."""
    sizes = [1330, 1330, 700, 1330, 1330, 1400, 1400, 0, 1400, 1400, 1200, 1200]
    runs = gso_runs([bytes(n) for n in sizes])
    assert [[len(d) for d in run] for run in runs] == [
        [1330, 1330, 700], [1330, 1330], [1400, 1400], [0], [1400, 1400, 1200], [1200]]


@contextmanager
def udp_pair(family: socket.AddressFamily, host: str) -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.socket(family, socket.SOCK_DGRAM) as sender, socket.socket(family, socket.SOCK_DGRAM) as receiver:
        receiver.bind((host, 0))
        receiver.settimeout(10)
        yield sender, receiver


@pytest.mark.skipif(sys.platform != "linux", reason="UDP_SEGMENT is Linux's")
@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_one_call_per_run_arrives_as_the_separate_datagrams(family: socket.AddressFamily, host: str) -> None:
    """On a real loopback socket: each run sent in one sendmsg reaches a plain UDP socket
    (no GRO) as its datagrams, byte for byte and in order."""
    sizes = [1330] * 5 + [700] + [1200] * 2 + [1250]
    datagrams = [bytes([i]) * n for i, n in enumerate(sizes)]
    with udp_pair(family, host) as (sender, receiver):
        assert supports_gso(sender)
        runs = gso_runs(datagrams)
        assert len(runs) == 3
        for run in runs:
            sender.sendmsg(run, gso_option(len(run[0])) if len(run) > 1 else [], 0, receiver.getsockname())
        assert [receiver.recv(65_536) for _ in datagrams] == datagrams


def test_only_udp_over_ip_is_segmented() -> None:
    """A TCP socket or a Unix datagram socket is never given the option."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix:
        assert not supports_gso(tcp) and not supports_gso(unix)
