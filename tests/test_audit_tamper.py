"""Tampering with the audit log by those who hold the database (issue #13): the runtime role
the API and ingest use cannot switch the append-only trigger off or change an entry; the
tables' owner, who can, is caught by a saved checkpoint (whatever the head is now) and by the
keyed chain (they cannot make an HMAC without the key)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from core.settings import Settings
from services import audit
from services.registry import DeviceRecord, upsert_devices
from telemetry.schema import ensure_partitions, features, pending, run_maintenance
from tests.helpers.api import add_test_users, client, running_api
from tests.helpers.db import Database, runtime_role
from tests.helpers.telemetry import make_settings
from watchfloor.mosquitto import MosquittoProcess

KEY = b"audit-key-for-the-tests-" + b"k" * 24


def _write(url: str, n: int, *, key: bytes | None = None) -> None:
    with audit.connect(url, key=key) as conn:
        for i in range(n):
            audit.record(conn, actor="op-1", action="export", details={"i": i})
        conn.commit()


def _rewrite_and_rechain(db: Database, seq: int) -> None:
    """What the tables' owner can do without the key: switch the trigger off, change entry
    ``seq``, recompute every later hash with plain sha256 (unkeyed), switch it back on."""
    with psycopg.connect(db.url) as conn:
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER ALL")
        conn.execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = %s", (seq,))
        prev = bytes(conn.execute("SELECT prev_hash FROM audit_log WHERE seq = %s", (seq,)).fetchone()[0])  # type: ignore[index]
        rows = conn.execute("SELECT seq, at, actor, action, device_id, details::text FROM audit_log"
                            " WHERE seq >= %s ORDER BY seq", (seq,)).fetchall()
        for n, at, actor, action, device_id, details_text in rows:
            digest = audit.entry_hash(prev_hash=prev, seq=n, at=at, actor=actor, action=action,
                                      device_id=device_id, details_text=details_text)
            conn.execute("UPDATE audit_log SET prev_hash = %s, hash = %s, keyed = false WHERE seq = %s",
                         (prev, digest, n))
            prev = digest
        conn.execute("ALTER TABLE audit_log ENABLE TRIGGER ALL")
        conn.commit()


def _verify(db: Database, **options: object) -> audit.VerifyReport:
    with psycopg.connect(db.url) as conn:
        return audit.verify(conn, **options)  # type: ignore[arg-type]


def _cli_verify(db: Database, *extra: str, key: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WATCHFLOOR_")},
           "WATCHFLOOR_DATABASE_URL": db.url, **({"WATCHFLOOR_AUDIT_KEY": key.decode()} if key else {})}
    return subprocess.run([sys.executable, "-m", "watchfloor", "audit", "verify", *extra], env=env,
                          capture_output=True, text=True, timeout=60)


def test_runtime_role_cannot_switch_the_trigger_off_or_change_entries(pg: Database) -> None:
    """As the runtime role: appending and reading work, and so do ingest's and the API's other
    writes (the registry, partitions ahead, retention); ALTER TABLE ... DISABLE TRIGGER, UPDATE,
    DELETE and TRUNCATE on the audit log and its checkpoints are refused, and the role owns
    nothing."""
    with runtime_role(pg) as url:
        _write(url, 2)
        with psycopg.connect(url) as conn:
            assert pending(conn) == [] and "native_partitioning" in features(conn)
            upsert_devices(conn, [DeviceRecord("rt-1", "R1", None, "Camden", "response")])
            conn.commit()
            today = datetime.now(timezone.utc)
            ensure_partitions(conn, [(today + timedelta(days=5)).date()])
            run_maintenance(conn, feats=features(conn), keep=timedelta(days=30), now=today)
            for table in ("audit_log", "audit_checkpoints"):
                for attack in (f"ALTER TABLE {table} DISABLE TRIGGER ALL", f"ALTER TABLE {table} DISABLE TRIGGER USER",
                               f"UPDATE {table} SET seq = seq", f"DELETE FROM {table}", f"TRUNCATE {table}",
                               f"DROP TABLE {table}"):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        conn.execute(attack)
                    conn.rollback()
            role = conn.info.user
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE tableowner = %s", (role,)).fetchone() == (0,)
    assert _verify(pg).ok and _verify(pg).entries == 2


def test_a_saved_checkpoint_catches_a_rechained_rewrite_before_it(pg: Database) -> None:
    """The owner rewrites an entry before a checkpoint saved when the head was there, and
    re-chains everything after it: the chain alone verifies, but the checkpoint (checked whatever
    the head is now, from the command line as --expect-head or --checkpoint) does not match."""
    _write(pg.url, 5)
    with psycopg.connect(pg.url) as conn:
        saved = audit.checkpoint(conn, key=None)
    assert saved.seq == 5
    _write(pg.url, 3)  # the head moves on
    _rewrite_and_rechain(pg, 2)
    assert _verify(pg).ok  # re-chained: consistent without a checkpoint
    report = _verify(pg, checkpoints=[saved])
    assert [(p.seq, p.kind) for p in report.problems] == [(5, "checkpoint")]
    for option in ("--expect-head", "--checkpoint"):
        result = _cli_verify(pg, option, f"{saved.seq}:{saved.hash}")
        assert result.returncode == 1 and "TAMPERED checkpoint entry 5" in result.stdout, result.stdout + result.stderr


def test_the_keyed_chain_catches_a_rechained_rewrite_after_an_old_checkpoint(pg: Database) -> None:
    """Entries from before the key stay sha256 and verify; later ones are HMACs. The owner
    rewrites an entry after an old checkpoint and re-chains with sha256 (they have no key):
    verify with the key finds it, whether the forged entries say they are keyed or not."""
    _write(pg.url, 3)  # before the switch to a key
    _write(pg.url, 5, key=KEY)
    with psycopg.connect(pg.url) as conn:
        old = audit.checkpoint(conn, key=KEY)
        assert old.seq == 8
    _write(pg.url, 4, key=KEY)
    clean = _verify(pg, key=KEY, checkpoints=[old])
    assert clean.ok and clean.entries == 12 and clean.unchecked == 0, clean.problems
    assert _verify(pg).unchecked == 9  # without the key, keyed entries are counted, not passed as checked
    with pytest.raises(audit.AuditKeyMissing), audit.connect(pg.url, key=None) as conn:
        audit.record(conn, actor="x", action="export")  # no key: may not extend a keyed chain

    _rewrite_and_rechain(pg, 10)
    report = _verify(pg, key=KEY, checkpoints=[old])
    assert (10, "downgraded") in [(p.seq, p.kind) for p in report.problems]
    with psycopg.connect(pg.url) as conn:  # the forger marks the entries keyed again: the HMAC fails
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER ALL")
        conn.execute("UPDATE audit_log SET keyed = true WHERE seq >= 10")
        conn.execute("ALTER TABLE audit_log ENABLE TRIGGER ALL")
        conn.commit()
    report = _verify(pg, key=KEY, checkpoints=[old])
    assert (10, "changed") in [(p.seq, p.kind) for p in report.problems]
    result = _cli_verify(pg, "--checkpoint", old.line(), key=KEY)
    assert result.returncode == 1 and "TAMPERED changed   entry 10" in result.stdout, result.stdout + result.stderr


def test_checkpoints_carry_a_mac_and_a_planted_one_is_passed_over(pg: Database) -> None:
    """A checkpoint line read back keeps its MAC; one changed (or made without the key) is
    refused. Stored checkpoints: the runtime role may add them, and the latest valid one wins
    over a later one planted without the key."""
    _write(pg.url, 3, key=KEY)
    with runtime_role(pg) as url, psycopg.connect(url) as conn:
        point = audit.checkpoint(conn, key=KEY)
        assert audit.parse_checkpoint(point.line(), key=KEY) == point
        forged = audit.Checkpoint(point.seq, "0" * 64, point.at, point.mac)
        with pytest.raises(ValueError, match="MAC"):
            audit.parse_checkpoint(forged.line(), key=KEY)
        with pytest.raises(ValueError, match="not a checkpoint"):
            audit.parse_checkpoint("3:nothex", key=KEY)
        audit.store_checkpoint(conn, point)
        audit.store_checkpoint(conn, audit.Checkpoint(99, "0" * 64, point.at, "ab" * 32))  # no valid MAC
        conn.commit()
        assert audit.latest_checkpoint(conn, key=KEY) == point


def test_api_verify_reports_against_the_latest_stored_checkpoint(pg: Database, mosquitto: MosquittoProcess) -> None:
    """The auditors' /audit/verify checks the chain with the API's key and against the latest
    stored checkpoint: intact, it names the checkpoint; after the owner rewrites an entry before
    it and re-chains, it reports the checkpoint's entry."""
    with pg.connect() as conn:
        add_test_users(conn)
    settings: Settings = make_settings()
    with running_api(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings, audit_key=KEY) as server, \
            client(server.base, "audit") as auditor:  # signing in writes keyed entries
        with audit.connect(pg.url, key=KEY) as conn:
            point = audit.checkpoint(conn, key=KEY)
            audit.store_checkpoint(conn, point)
            conn.commit()
        intact = auditor.get("/api/v1/audit/verify").json()
        assert intact["ok"] and intact["checkpoint"] == point.line() and intact["unchecked"] == 0, intact
        _rewrite_and_rechain(pg, 1)
        tampered = auditor.get("/api/v1/audit/verify").json()
        assert not tampered["ok"]
        assert {"seq": point.seq, "kind": "checkpoint"} in [{"seq": p["seq"], "kind": p["kind"]}
                                                           for p in tampered["problems"]], tampered
