"""The audit log against the real database: the chain, the append-only trigger, tampering
found by verify (changed, removed, reordered), one chain from several processes, and device
credentials."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import psycopg
import pytest

from services import audit
from services.registry import DeviceRecord, provision_device, revoke_device_secret, verify_device_secret
from tests.helpers.db import Database


def _write(db: Database, n: int, *, actor: str = "op-1") -> None:
    with psycopg.connect(db.url) as conn:
        for i in range(n):
            audit.record(conn, actor=actor, action="alert_acknowledged", device_id=f"dev-{i}",
                         details={"alert_id": i, "note": "ünïcode and \"quotes\"", "nested": {"b": 1.5, "a": None}})
        conn.commit()


def _tamper(db: Database, sql: str) -> None:
    """What a superuser can do: switch the trigger off, change the table, switch it on."""
    with psycopg.connect(db.url) as conn:
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        conn.execute(sql)
        conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
        conn.commit()


def _verify(db: Database) -> audit.VerifyReport:
    with psycopg.connect(db.url) as conn:
        return audit.verify(conn)


def test_entries_chain_and_verify(pg: Database) -> None:
    """Entries written in the caller's transaction chain by hash and verify clean; nothing is
    written when the caller rolls back; an empty log verifies too."""
    assert _verify(pg).ok and _verify(pg).entries == 0
    _write(pg, 5)
    with psycopg.connect(pg.url) as conn:
        audit.record(conn, actor="x", action="export")
        conn.rollback()
    report = _verify(pg)
    assert report.ok and report.entries == 5 and report.head_seq == 5, report.problems
    with pg.connect() as conn:  # autocommit: a transaction of its own
        audit.record(conn, actor="admin", action="user_changed", details={"username": "u"})
        rows = conn.execute("SELECT seq, prev_hash, hash FROM audit_log ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0][1] == audit.GENESIS
    assert all(rows[i][1] == rows[i - 1][2] for i in range(1, 6))
    assert _verify(pg).ok


def test_unknown_actions_are_refused(pg: Database) -> None:
    """A typo in an action name is an error, not a new kind of entry."""
    with psycopg.connect(pg.url) as conn, pytest.raises(ValueError):
        audit.record(conn, actor="x", action="signed_in")


def test_update_delete_and_truncate_are_refused(pg: Database) -> None:
    """The trigger refuses changes even to the table's owner (a superuser here)."""
    _write(pg, 2)
    for sql in ("UPDATE audit_log SET actor = 'someone else' WHERE seq = 1", "DELETE FROM audit_log WHERE seq = 2",
                "TRUNCATE audit_log"):
        with pg.connect() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql)
    assert _verify(pg).ok and _verify(pg).entries == 2


@pytest.mark.parametrize("sql, kind, seq", [
    ("UPDATE audit_log SET actor = 'someone else' WHERE seq = 3", "changed", 3),
    ("UPDATE audit_log SET details = '{\"alert_id\": 99}' WHERE seq = 2", "changed", 2),
    ("UPDATE audit_log SET at = at - interval '1 hour' WHERE seq = 4", "changed", 4),
    ("DELETE FROM audit_log WHERE seq = 3", "removed", 3),
    ("DELETE FROM audit_log WHERE seq IN (1, 2)", "removed", 1),
], ids=["actor", "details", "time", "one removed", "first two removed"])
def test_tampering_is_found(pg: Database, sql: str, kind: str, seq: int) -> None:
    """Changing or removing an entry behind the trigger's back is reported, with the entry."""
    _write(pg, 5)
    _tamper(pg, sql)
    report = _verify(pg)
    assert not report.ok
    assert (kind, seq) in [(p.kind, p.seq) for p in report.problems], report.problems


def test_reordering_is_found(pg: Database) -> None:
    """Swapping two entries' places in the chain (their seq, or their row ids) is reported."""
    _write(pg, 5)
    _tamper(pg, "UPDATE audit_log SET seq = CASE seq WHEN 2 THEN 3 ELSE 2 END + 1000 WHERE seq IN (2, 3)")
    _tamper(pg, "UPDATE audit_log SET seq = seq - 1000 WHERE seq > 1000")
    found = {(p.kind, p.seq) for p in _verify(pg).problems}
    assert {("changed", 2), ("changed", 3), ("reordered", 3)} <= found, found
    _tamper(pg, "ALTER TABLE audit_log ALTER COLUMN id DROP IDENTITY")
    _tamper(pg, "UPDATE audit_log SET id = CASE seq WHEN 4 THEN -4 ELSE -5 END WHERE seq IN (4, 5)")
    _tamper(pg, "UPDATE audit_log SET id = CASE id WHEN -4 THEN 5000 ELSE 4000 END WHERE id < 0")
    reordered = [p for p in _verify(pg).problems if p.kind == "reordered"]
    assert [p.seq for p in reordered] == [3, 5], reordered


def test_an_entry_rewritten_with_a_fresh_hash_breaks_the_link_after_it(pg: Database) -> None:
    """Someone who recomputes the changed entry's own hash still breaks the next entry's link."""
    _write(pg, 3)
    with pg.connect() as conn:
        row = conn.execute("SELECT seq, at, action, device_id, details::text, prev_hash FROM audit_log"
                           " WHERE seq = 2").fetchone()
    assert row is not None
    forged = audit.entry_hash(prev_hash=bytes(row[5]), seq=2, at=row[1], actor="forger", action=row[2],
                              device_id=row[3], details_text=row[4])
    _tamper(pg, f"UPDATE audit_log SET actor = 'forger', hash = '\\x{forged.hex()}' WHERE seq = 2")
    assert [(p.kind, p.seq) for p in _verify(pg).problems] == [("relinked", 3)]


_WRITER = textwrap.dedent("""
    import sys, psycopg
    from services import audit
    url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with psycopg.connect(url) as conn:
        for i in range(n):
            audit.record(conn, actor=name, action="export", details={"i": i})
            conn.commit()
""")


def test_writers_in_several_processes_form_one_chain(pg: Database) -> None:
    """Three processes writing at once leave one unbroken chain with every entry."""
    n = 60
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, pg.url, f"writer-{k}", str(n)])
               for k in range(3)]
    for writer in writers:
        assert writer.wait(120) == 0
    report = _verify(pg)
    assert report.ok, report.problems
    assert report.entries == 3 * n
    assert pg.scalar("SELECT count(DISTINCT actor) FROM audit_log") == 3


def test_device_secrets(pg: Database) -> None:
    """A provisioned device's secret verifies; a wrong one, another device's, an unknown
    device, a re-provisioned (old) secret, and a revoked or retired device do not. Only a hash is stored."""
    record = DeviceRecord("cam-1", "WE01", "PC A", "Westminster", "response")
    with psycopg.connect(pg.url) as conn:
        secret = provision_device(conn, record=record)
        other = provision_device(conn, record=DeviceRecord("cam-2", None, None, "Camden", "response"))
        conn.commit()
        assert verify_device_secret(conn, device_id="cam-1", secret=secret)
        assert not verify_device_secret(conn, device_id="cam-1", secret=secret + "x")
        assert not verify_device_secret(conn, device_id="cam-1", secret=other)
        assert not verify_device_secret(conn, device_id="nobody", secret=secret)
        stored = conn.execute("SELECT secret_hash FROM device_credentials WHERE device_id = 'cam-1'").fetchone()
        assert stored is not None and secret not in stored[0] and stored[0].startswith("$argon2")
        renewed = provision_device(conn, record=record)
        assert verify_device_secret(conn, device_id="cam-1", secret=renewed)
        assert not verify_device_secret(conn, device_id="cam-1", secret=secret)
        assert revoke_device_secret(conn, device_id="cam-1")
        assert not verify_device_secret(conn, device_id="cam-1", secret=renewed)
        conn.execute("UPDATE devices SET retired_at = now() WHERE device_id = 'cam-2'")
        assert not verify_device_secret(conn, device_id="cam-2", secret=other)
