"""The alert policy in the database (table ``alert_policy``, migration 11): read it whole,
set or remove one rule. Plain functions in the caller's transaction; they never commit."""

from __future__ import annotations

import psycopg

from telemetry.alert_policy import ANY_ROLE, AlertPolicy, Outcome, PolicyRule

__all__ = ["delete_rule", "load_policy", "set_rule"]


def load_policy(conn: psycopg.Connection) -> AlertPolicy:
    """The policy in force, with its version. Raises ``ValueError`` if a kind has no rule for
    any role (the API refuses to remove those, so only a hand edit of the table can)."""
    # The version first: a change committed between the two reads leaves the rules newer than
    # the version said, never older, and its announcement makes the reader read again.
    row = conn.execute("SELECT version FROM alert_policy_version").fetchone()
    rows = conn.execute("SELECT kind, role, outcome, assigned_outcome, after_s FROM alert_policy").fetchall()
    return AlertPolicy.of((PolicyRule(kind, role, Outcome(outcome), Outcome(assigned) if assigned else None, after_s)
                           for kind, role, outcome, assigned, after_s in rows), version=row[0] if row else 0)


def _bump(conn: psycopg.Connection) -> int:
    # Locks the one row: two admins' changes are applied one after the other.
    row = conn.execute("UPDATE alert_policy_version SET version = version + 1 RETURNING version").fetchone()
    assert row is not None  # seeded by migration 11
    return int(row[0])


def set_rule(conn: psycopg.Connection, rule: PolicyRule, *, by: str) -> tuple[PolicyRule | None, int]:
    """Write ``rule`` (checked by the caller); returns the rule it replaced, and the new version."""
    version = _bump(conn)
    before = conn.execute("SELECT outcome, assigned_outcome, after_s FROM alert_policy WHERE kind = %s AND role = %s",
                          (rule.kind, rule.role)).fetchone()
    conn.execute(
        "INSERT INTO alert_policy (kind, role, outcome, assigned_outcome, after_s, updated_at, updated_by)"
        " VALUES (%s, %s, %s, %s, %s, now(), %s) ON CONFLICT (kind, role) DO UPDATE SET outcome = EXCLUDED.outcome,"
        " assigned_outcome = EXCLUDED.assigned_outcome, after_s = EXCLUDED.after_s, updated_at = now(),"
        " updated_by = EXCLUDED.updated_by",
        (rule.kind, rule.role, rule.outcome.value,
         rule.assigned_outcome.value if rule.assigned_outcome else None, rule.after_s, by))
    replaced = None if before is None else PolicyRule(rule.kind, rule.role, Outcome(before[0]),
                                                      Outcome(before[1]) if before[1] else None, before[2])
    return replaced, version


def delete_rule(conn: psycopg.Connection, *, kind: str, role: str) -> tuple[PolicyRule | None, int]:
    """Remove a role's own rule (the rule for any role then applies to it); returns the rule
    removed (None if there was none) and the version. The rule for any role stays."""
    if role == ANY_ROLE:
        raise ValueError("the rule for any role cannot be removed")
    version = _bump(conn)
    row = conn.execute("DELETE FROM alert_policy WHERE kind = %s AND role = %s"
                       " RETURNING outcome, assigned_outcome, after_s", (kind, role)).fetchone()
    removed = None if row is None else PolicyRule(kind, role, Outcome(row[0]), Outcome(row[1]) if row[1] else None,
                                                  row[2])
    return removed, version
