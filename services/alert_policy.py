"""The force's alert policy, changed by admins: each change checked, written, audited and
announced. The rules and the decision are :mod:`telemetry.alert_policy` (pure); the table is
:mod:`telemetry.alert_policy_store`. The caller commits, then publishes the announcement on
``ALERT_POLICY_TOPIC``, on which every ingest worker reads the policy again.
"""

from __future__ import annotations

import orjson
import psycopg

from services import audit
from services.accounts import Principal
from services.errors import Forbidden, InvalidRequest, NotFound
from telemetry.alert_policy import ANY_ROLE, Outcome, PolicyRule, check_rule
from telemetry.alert_policy_store import delete_rule, set_rule

__all__ = ["policy_announcement", "remove_rule", "set_policy_rule"]


def _may_change(who: Principal) -> None:
    # One policy for the whole force: an admin of some boroughs would change it for every one.
    if who.areas is not None:
        raise Forbidden("the alert policy is the whole force's: only an admin of every area may change it")


def _shown(rule: PolicyRule | None) -> dict[str, str | float | None] | None:
    if rule is None:
        return None
    shown: dict[str, str | float | None] = {
        "outcome": rule.outcome.value,
        "assigned_outcome": rule.assigned_outcome.value if rule.assigned_outcome else None}
    if rule.after_s is not None:  # only a timed kind's rule has one
        shown["after_s"] = rule.after_s
    return shown


def set_policy_rule(conn: psycopg.Connection, *, rule: PolicyRule, who: Principal) -> int:
    """Set one rule, in the caller's transaction, with its audit entry; returns the policy's
    new version. Raises :class:`InvalidRequest` (a sentence saying why) for a rule that cannot be."""
    _may_change(who)
    reason = check_rule(rule)
    if reason is not None:
        raise InvalidRequest(reason)
    before, version = set_rule(conn, rule, by=who.username)
    audit.record(conn, actor=who.username, action="alert_policy_changed",
                 details={"kind": rule.kind, "role": rule.role, "before": _shown(before), "after": _shown(rule),
                          "version": version})
    return version


def remove_rule(conn: psycopg.Connection, *, kind: str, role: str, who: Principal) -> int:
    """Remove a role's own rule (the rule for any role then applies), audited; returns the
    policy's new version."""
    _may_change(who)
    if role == ANY_ROLE:
        raise InvalidRequest("the rule for any role cannot be removed: set it to another outcome, or off")
    # Checked as a rule would be, so that an unknown kind or role is named as such.
    reason = check_rule(PolicyRule(kind, role, Outcome.OFF))
    if reason is not None:
        raise InvalidRequest(reason)
    removed, version = delete_rule(conn, kind=kind, role=role)
    if removed is None:
        raise NotFound(f"no rule of its own for role {role} on {kind}: the rule for any role applies")
    audit.record(conn, actor=who.username, action="alert_policy_changed",
                 details={"kind": kind, "role": role, "before": _shown(removed), "after": None, "version": version})
    return version


def policy_announcement(version: int) -> bytes:
    """The payload announcing a policy change on ``ALERT_POLICY_TOPIC`` (after its commit)."""
    return orjson.dumps({"version": version})
