"""The audit log: an append-only record of every sensitive act, chained by hash.

Entry N stores ``prev_hash`` (entry N-1's hash) and ``hash = sha256(prev_hash || canonical
encoding of its own fields)``. Changing, removing or reordering an entry breaks the chain
from that entry on, and :func:`verify` says where. The table refuses UPDATE, DELETE and
TRUNCATE by trigger (migration 4); a superuser can disable that, but not re-forge the chain
without it showing, unless they rewrite every later entry too, which is why ``watchfloor
audit verify`` prints the head (seq and hash) for keeping outside the database.

Writers in any number of processes form one chain: :func:`record` takes a transaction-level
advisory lock in the caller's transaction, then reads the last hash. The lock is held until
the caller commits, so keep audited transactions short.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import psycopg

__all__ = [
    "ACTIONS",
    "GENESIS",
    "Problem",
    "VerifyReport",
    "entry_hash",
    "record",
    "verify",
]

#: Every action the log knows (docs/api.md says when each is written).
ACTIONS = frozenset({
    "sign_in", "sign_in_failed", "sign_out",
    "live_view_requested", "live_view_accepted", "live_view_declined",
    "live_view_ended",
    "viewing_started", "viewing_ended", "viewing_refused",
    "alert_acknowledged", "alert_resolved",
    "export",
    "device_provisioned", "device_registered", "device_retired", "device_reactivated",
    "user_changed",
})

#: The ``prev_hash`` of the first entry.
GENESIS = bytes(32)
_LOCK_KEY = 0x57464155  # "WFAU": one chain, one writer at a time, across processes
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MAX_PROBLEMS = 1000


def _micros(at: datetime) -> int:
    # Integer microseconds: exact, and independent of how a timezone is printed.
    return (at - _EPOCH) // timedelta(microseconds=1)


def entry_hash(*, prev_hash: bytes, seq: int, at: datetime, actor: str, action: str, device_id: str | None,
               details_text: str | None) -> bytes:
    """sha256 over the previous hash and a canonical encoding of this entry.

    ``details_text`` is PostgreSQL's own text of the jsonb value (``details::text``), which
    is deterministic for a value, so the hash does not depend on how a client serialises JSON.
    """
    body = orjson.dumps([seq, _micros(at), actor, action, device_id, details_text])
    return hashlib.sha256(prev_hash + body).digest()


def record(conn: psycopg.Connection, *, actor: str, action: str, device_id: str | None = None,
           details: Mapping[str, object] | None = None) -> None:
    """Append an entry in the caller's transaction (this never commits).

    On an autocommit connection the entry is written in a transaction of its own.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    if conn.autocommit:
        with conn.transaction():
            _append(conn, actor=actor, action=action, device_id=device_id, details=details)
    else:
        _append(conn, actor=actor, action=action, device_id=device_id, details=details)


def _append(conn: psycopg.Connection, *, actor: str, action: str, device_id: str | None,
            details: Mapping[str, object] | None) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    last = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev_hash = (1, GENESIS) if last is None else (int(last[0]) + 1, bytes(last[1]))
    raw = None if details is None else orjson.dumps(dict(details), default=str).decode()
    row = conn.execute("SELECT clock_timestamp(), %s::jsonb::text", (raw,)).fetchone()
    assert row is not None
    at, details_text = row[0], row[1]
    digest = entry_hash(prev_hash=prev_hash, seq=seq, at=at, actor=actor, action=action, device_id=device_id,
                        details_text=details_text)
    conn.execute(
        "INSERT INTO audit_log (seq, at, actor, action, device_id, details, prev_hash, hash)"
        " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s)",
        (seq, at, actor, action, device_id, details_text, prev_hash, digest))


@dataclass(frozen=True)
class Problem:
    """One break in the chain. ``kind``: changed, removed, reordered or relinked."""

    id: int | None
    seq: int
    kind: str
    message: str


@dataclass
class VerifyReport:
    entries: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS.hex()
    problems: list[Problem] = field(default_factory=list)
    truncated: bool = False  # more problems than were kept

    @property
    def ok(self) -> bool:
        return not self.problems


def _rows(conn: psycopg.Connection) -> Iterator[tuple[Any, ...]]:
    # A named (server-side) cursor streams a long log; it needs a transaction, so not on autocommit.
    with conn.cursor(name="audit_verify") if not conn.autocommit else conn.cursor() as cursor:
        cursor.execute("SELECT id, seq, at, actor, action, device_id, details::text, prev_hash, hash"
                       " FROM audit_log ORDER BY seq")
        yield from cursor


def verify(conn: psycopg.Connection) -> VerifyReport:
    """Walk the chain in order and report every entry changed, removed or reordered.

    changed: an entry's fields no longer give its hash. removed: a gap in ``seq``.
    relinked: an entry's ``prev_hash`` is not the hash of the entry before it (one was
    removed, inserted or replaced there). reordered: an entry written later (a higher id)
    sits earlier in the chain.
    """
    report = VerifyReport()
    expected_seq, prev, last_id = 1, GENESIS, 0

    def problem(entry_id: int | None, seq: int, kind: str, message: str) -> None:
        if len(report.problems) < _MAX_PROBLEMS:
            report.problems.append(Problem(entry_id, seq, kind, message))
        else:
            report.truncated = True

    for entry_id, seq, at, actor, action, device_id, details_text, prev_hash, stored in _rows(conn):
        prev_hash, stored = bytes(prev_hash), bytes(stored)
        report.entries += 1
        if seq != expected_seq:
            missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}..{seq - 1}"
            problem(None, expected_seq, "removed", f"entries {missing} are missing before entry {seq}")
        if entry_id < last_id:
            problem(entry_id, seq, "reordered", f"entry {seq} (id {entry_id}) was written after the entry before it")
        recomputed = entry_hash(prev_hash=prev_hash, seq=seq, at=at, actor=actor, action=action,
                                device_id=device_id, details_text=details_text)
        if recomputed != stored:
            problem(entry_id, seq, "changed", f"entry {seq} does not match its hash (changed after it was written)")
        elif prev_hash != prev and seq == expected_seq:  # after a gap, the gap is the finding
            problem(entry_id, seq, "relinked", f"entry {seq} does not follow the entry before it")
        expected_seq, prev, last_id = seq + 1, stored, max(last_id, entry_id)
        report.head_seq, report.head_hash = seq, stored.hex()
    return report
