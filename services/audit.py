"""The audit log: an append-only record of every sensitive act, chained by hash.

Entry N stores ``prev_hash`` (entry N-1's hash) and ``hash = HMAC-SHA256(key, prev_hash ||
canonical encoding of its own fields)``, with a key the database never holds (the API's
``WATCHFLOOR_AUDIT_KEY``). Changing, removing or reordering an entry breaks the chain from that
entry on, and :func:`verify` says where. The table refuses UPDATE, DELETE and TRUNCATE by
trigger, and the processes that write it hold only INSERT and SELECT (telemetry/roles.py); the
table's owner can disable the trigger, but without the key cannot re-forge a chain that
verifies. Entries written before the key was introduced (``keyed`` false) used plain sha256
and verify as before; once a keyed entry exists, every later one must be keyed.

Checkpoints (:func:`checkpoint`: seq, hash, time, and a MAC over them) are kept outside the
database; :func:`verify` checks each one given: the entry at its seq must still have its hash,
whatever the head is now. That protects what came before a checkpoint even against someone who
holds the key.

Writers in any number of processes form one chain: :func:`record` takes a transaction-level
advisory lock in the caller's transaction, then reads the last hash. The lock is held until
the caller commits, so keep audited transactions short.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import psycopg
from psycopg.rows import TupleRow

__all__ = [
    "ACTIONS",
    "GENESIS",
    "AuditConnection",
    "AuditKeyMissing",
    "Checkpoint",
    "Problem",
    "VerifyReport",
    "checkpoint",
    "connect",
    "entry_hash",
    "latest_checkpoint",
    "parse_checkpoint",
    "record",
    "store_checkpoint",
    "verify",
]

#: Every action the log knows (docs/api.md says when each is written).
ACTIONS = frozenset({
    "sign_in", "sign_in_failed", "sign_out",
    "live_view_requested", "live_view_accepted", "live_view_declined",
    "live_view_ended",
    "viewing_started", "viewing_ended", "viewing_refused",
    "oidc_sign_in",
    "alert_acknowledged", "alerts_acknowledged", "alert_resolved", "alert_policy_changed",
    "device_track_read", "device_events_read", "device_health_read",
    "device_assignments_read", "officer_track_read", "device_assigned", "device_unassigned",
    "incident_created", "incident_unit_assigned", "incident_unit_unassigned", "incident_closed",
    "replay_read",
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


class AuditKeyMissing(RuntimeError):
    """A process without the audit key tried to extend a keyed chain: its entry would read as
    a downgrade, so it is refused (set WATCHFLOOR_AUDIT_KEY)."""


class AuditConnection(psycopg.Connection[TupleRow]):
    """A connection that carries the audit key on the client side (it is never sent to the
    server): :func:`record` chains with it. The API's pool makes these."""

    audit_key: bytes | None = None


def connect(url: str, *, key: bytes | None, **options: Any) -> AuditConnection:
    """A connection that writes keyed entries with ``key`` (None: unkeyed, as before the key)."""
    conn = AuditConnection.connect(url, **options)
    conn.audit_key = key
    return conn


def entry_hash(*, prev_hash: bytes, seq: int, at: datetime, actor: str, action: str, device_id: str | None,
               details_text: str | None, key: bytes | None = None) -> bytes:
    """HMAC-SHA256 with ``key`` (plain sha256 without one, as entries before the key were)
    over the previous hash and a canonical encoding of this entry.

    ``details_text`` is PostgreSQL's own text of the jsonb value (``details::text``), which
    is deterministic for a value, so the hash does not depend on how a client serialises JSON.
    """
    body = orjson.dumps([seq, _micros(at), actor, action, device_id, details_text])
    if key is None:
        return hashlib.sha256(prev_hash + body).digest()
    return hmac.new(key, prev_hash + body, hashlib.sha256).digest()


def record(conn: psycopg.Connection, *, actor: str, action: str, device_id: str | None = None,
           details: Mapping[str, object] | None = None) -> None:
    """Append an entry in the caller's transaction (this never commits).

    On an autocommit connection the entry is written in a transaction of its own. The entry
    is keyed when ``conn`` is an :class:`AuditConnection` with a key; a process without the
    key may not extend a keyed chain (its entries would read as a downgrade).
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
    key = conn.audit_key if isinstance(conn, AuditConnection) else None
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    last = conn.execute("SELECT seq, hash, keyed FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    if last is not None and last[2] and key is None:
        raise AuditKeyMissing("the audit chain is keyed and this process has no audit key: set "
                              "WATCHFLOOR_AUDIT_KEY or WATCHFLOOR_AUDIT_KEY_FILE")
    seq, prev_hash = (1, GENESIS) if last is None else (int(last[0]) + 1, bytes(last[1]))
    raw = None if details is None else orjson.dumps(dict(details), default=str).decode()
    row = conn.execute("SELECT clock_timestamp(), %s::jsonb::text", (raw,)).fetchone()
    assert row is not None
    at, details_text = row[0], row[1]
    digest = entry_hash(prev_hash=prev_hash, seq=seq, at=at, actor=actor, action=action, device_id=device_id,
                        details_text=details_text, key=key)
    conn.execute(
        "INSERT INTO audit_log (seq, at, actor, action, device_id, details, prev_hash, hash, keyed)"
        " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s)",
        (seq, at, actor, action, device_id, details_text, prev_hash, digest, key is not None))


@dataclass(frozen=True)
class Problem:
    """One break in the chain. ``kind``: changed, removed, reordered, relinked, downgraded
    (an unkeyed entry after a keyed one) or checkpoint (an entry no longer has the hash a
    saved checkpoint recorded, or the log ends before it)."""

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
    unchecked: int = 0  # keyed entries whose hash could not be checked (verified without the key)
    checkpoints: int = 0  # saved checkpoints the log was checked against

    @property
    def ok(self) -> bool:
        return not self.problems


def _rows(conn: psycopg.Connection) -> Iterator[tuple[Any, ...]]:
    # A named (server-side) cursor streams a long log; it needs a transaction, so not on autocommit.
    with conn.cursor(name="audit_verify") if not conn.autocommit else conn.cursor() as cursor:
        cursor.execute("SELECT id, seq, at, actor, action, device_id, details::text, prev_hash, hash, keyed"
                       " FROM audit_log ORDER BY seq")
        yield from cursor


@dataclass(frozen=True)
class Checkpoint:
    """A point of the chain saved outside the database: the entry ``seq`` had ``hash`` (None:
    only that the log reached ``seq``, as an old ``--expect-head SEQ`` said)."""

    seq: int
    hash: str | None  # hex
    at: datetime | None = None
    mac: str | None = None  # hex HMAC over the rest, with the audit key

    def line(self) -> str:
        """``SEQ:HASH:TIME:MAC``, the form :func:`parse_checkpoint` reads back."""
        at = self.at.isoformat() if self.at else ""
        return f"{self.seq}:{self.hash or ''}:{at}:{self.mac or ''}"


def _checkpoint_mac(key: bytes, seq: int, digest: str | None, at: datetime | None) -> str:
    message = orjson.dumps(["watchfloor-audit-checkpoint", seq, digest, _micros(at) if at else None])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def checkpoint(conn: psycopg.Connection, *, key: bytes | None) -> Checkpoint:
    """The head as a checkpoint to keep elsewhere, MACed with ``key`` when there is one."""
    row = conn.execute("SELECT seq, hash, clock_timestamp() FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        seq, digest, at = 0, GENESIS.hex(), datetime.now(timezone.utc)
    else:
        seq, digest, at = int(row[0]), bytes(row[1]).hex(), row[2]
    return Checkpoint(seq, digest, at, _checkpoint_mac(key, seq, digest, at) if key else None)


def store_checkpoint(conn: psycopg.Connection, point: Checkpoint) -> None:
    """Keep ``point`` (which must carry a MAC) in the database, in the caller's transaction."""
    if point.mac is None or point.at is None or point.hash is None:
        raise ValueError("only a full keyed checkpoint is stored")
    conn.execute("INSERT INTO audit_checkpoints (seq, hash, at, mac) VALUES (%s, %s, %s, %s)",
                 (point.seq, bytes.fromhex(point.hash), point.at, bytes.fromhex(point.mac)))


def latest_checkpoint(conn: psycopg.Connection, *, key: bytes) -> Checkpoint | None:
    """The stored checkpoint with the highest seq whose MAC is valid for ``key``; one planted by
    the database's owner (who has no key) is passed over."""
    rows = conn.execute("SELECT seq, hash, at, mac FROM audit_checkpoints ORDER BY seq DESC, id DESC").fetchall()
    for seq, digest, at, mac in rows:
        point = Checkpoint(int(seq), bytes(digest).hex(), at, bytes(mac).hex())
        if hmac.compare_digest(bytes(mac).hex(), _checkpoint_mac(key, point.seq, point.hash, at)):
            return point
    return None


def parse_checkpoint(text: str, *, key: bytes | None = None) -> Checkpoint:
    """Read ``SEQ``, ``SEQ:HASH`` or a full ``SEQ:HASH:TIME:MAC`` line. With ``key``, a MAC
    present must match (a checkpoint stored in the database may have been planted by its owner)."""
    seq, _, rest = text.strip().partition(":")
    digest, _, rest = rest.partition(":")
    # The time holds colons of its own: the MAC is what follows the last one.
    at_text, _, mac = rest.rpartition(":")
    if not seq.isdigit() or digest and (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)):
        raise ValueError(f"not a checkpoint (SEQ[:HASH[:TIME:MAC]]): {text!r}")
    try:
        at = datetime.fromisoformat(at_text) if at_text else None
    except ValueError:
        raise ValueError(f"not a checkpoint (its time is not ISO 8601): {text!r}") from None
    found = Checkpoint(int(seq), digest or None, at, mac or None)
    if key is not None and found.mac is not None and not hmac.compare_digest(
            found.mac, _checkpoint_mac(key, found.seq, digest, at)):
        raise ValueError(f"checkpoint {seq} does not carry a valid MAC for this audit key")
    return found


def verify(conn: psycopg.Connection, *, key: bytes | None = None,
           checkpoints: Iterable[Checkpoint] = ()) -> VerifyReport:
    """Walk the chain in order and report every entry changed, removed or reordered, and every
    saved checkpoint the log no longer matches.

    changed: an entry's fields no longer give its hash (HMAC with ``key`` for keyed entries;
    without the key those are counted as unchecked). removed: a gap in ``seq``. relinked: an
    entry's ``prev_hash`` is not the hash of the entry before it (one was removed, inserted or
    replaced there). reordered: an entry written later (a higher id) sits earlier in the
    chain. downgraded: an unkeyed entry after a keyed one. checkpoint: the entry at a saved
    checkpoint's seq has another hash, or the log ends before it.
    """
    report = VerifyReport()
    expected_seq, prev, last_id, keyed_seen = 1, GENESIS, 0, False
    saved: dict[int, str | None] = {}
    for point in checkpoints:
        saved[point.seq] = point.hash
    report.checkpoints = len(saved)

    def problem(entry_id: int | None, seq: int, kind: str, message: str) -> None:
        if len(report.problems) < _MAX_PROBLEMS:
            report.problems.append(Problem(entry_id, seq, kind, message))
        else:
            report.truncated = True

    for entry_id, seq, at, actor, action, device_id, details_text, prev_hash, stored, keyed in _rows(conn):
        prev_hash, stored = bytes(prev_hash), bytes(stored)
        report.entries += 1
        if seq != expected_seq:
            missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}..{seq - 1}"
            problem(None, expected_seq, "removed", f"entries {missing} are missing before entry {seq}")
        if entry_id < last_id:
            problem(entry_id, seq, "reordered", f"entry {seq} (id {entry_id}) was written after the entry before it")
        if keyed_seen and not keyed:
            problem(entry_id, seq, "downgraded", f"entry {seq} is not keyed, but an entry before it was")
        keyed_seen = keyed_seen or keyed
        if keyed and key is None:
            report.unchecked += 1
            matches = True
        else:
            matches = stored == entry_hash(prev_hash=prev_hash, seq=seq, at=at, actor=actor, action=action,
                                           device_id=device_id, details_text=details_text,
                                           key=key if keyed else None)
        if not matches:
            problem(entry_id, seq, "changed", f"entry {seq} does not match its hash (changed after it was written)")
        elif prev_hash != prev and seq == expected_seq:  # after a gap, the gap is the finding
            problem(entry_id, seq, "relinked", f"entry {seq} does not follow the entry before it")
        if seq in saved and saved.pop(seq) not in (None, stored.hex()):
            problem(entry_id, seq, "checkpoint", f"entry {seq} no longer has the hash a saved checkpoint recorded")
        expected_seq, prev, last_id = seq + 1, stored, max(last_id, entry_id)
        report.head_seq, report.head_hash = seq, stored.hex()
    for seq in sorted(s for s in saved if s > 0):  # seq 0 is the empty log's checkpoint
        problem(None, seq, "checkpoint", f"the log ends at entry {report.head_seq}, before checkpoint {seq}"
                if seq > report.head_seq else f"entry {seq}, a saved checkpoint, is missing")
    return report
