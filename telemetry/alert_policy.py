"""The force's alert policy, as data, and the pure decision of what a kind of alert does for
one unit: raise it with a severity, record it as activity only, or nothing at all.

Every alert kind that ingest raises is listed here, once (:data:`KINDS`); the rules are
keyed by kind and device role (the registry's ``role``), with ``*`` for any role. A rule
may give an assigned unit (one on an open incident) another outcome: a firearms unit that
starts recording is information, unless it is assigned, when it is high. The rules live in
the database (table ``alert_policy``, seeded by migration 11); this module neither reads
nor writes it (:mod:`telemetry.alert_policy_store` does).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "ANY_ROLE",
    "AFTER_S_RANGE",
    "DEVICE_ROLES",
    "EVENT_KINDS",
    "KINDS",
    "STATE_KINDS",
    "AlertPolicy",
    "Outcome",
    "PolicyRule",
    "SEVERITIES",
    "TIMED_KINDS",
    "check_rule",
]


class Outcome(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    WARNING = "warning"
    INFO = "info"
    #: Recorded (an alert row resolved at once with outcome ``activity``, beside the event in
    #: the unit's history), never raised: no open alert, nothing on the live feed.
    ACTIVITY = "activity"
    OFF = "off"


#: The outcomes that raise an alert, i.e. its severity (the alerts table's own set).
SEVERITIES = frozenset({Outcome.CRITICAL, Outcome.HIGH, Outcome.WARNING, Outcome.INFO})

#: Kinds raised by a moment (an event, or a unit entering an incident's area): each is one
#: thing that happened, so "activity only" records it once.
EVENT_KINDS = ("emergency", "recording", "watch_me", "geofence")
#: Kinds raised while a state holds (re-checked on every report): they have no moment to
#: record, and the unit's telemetry already is their history, so "activity only" is refused.
STATE_KINDS = ("battery_critical", "battery_low", "storage_full", "gps_lost", "offline", "assigned_not_recording")
KINDS = EVENT_KINDS + STATE_KINDS
#: Kinds whose rule may also say how long the state must last before it is raised
#: (``after_s``): a unit's profile decides how long its silence is tolerated.
TIMED_KINDS = ("offline",)
#: The bounds of ``after_s``: under 5 s a camera between two reports would be offline; a day
#: is the fleet managers' "not seen", not an alert.
AFTER_S_RANGE = (5.0, 86_400.0)

#: The registry's device roles (api.models.RoleName says the same; tests/test_alert_policy.py checks).
DEVICE_ROLES = ("response", "firearms", "neighbourhood", "traffic", "custody", "other")
ANY_ROLE = "*"

_KIND_RE = re.compile(r"[a-z_]{1,40}")


@dataclass(frozen=True, slots=True)
class PolicyRule:
    kind: str
    role: str  # a device role, or ANY_ROLE
    outcome: Outcome
    # For a unit assigned to an open incident; None: the same as ``outcome``.
    assigned_outcome: Outcome | None = None
    # Only for a kind in TIMED_KINDS: seconds the state must last before it is raised; None:
    # the service's default (WATCHFLOOR_ALERT_OFFLINE_AFTER_S).
    after_s: float | None = None


def check_rule(rule: PolicyRule) -> str | None:
    """Why ``rule`` cannot be part of a policy (a sentence for a 422), or None if it can."""
    if rule.kind not in KINDS:
        shown = rule.kind if _KIND_RE.fullmatch(rule.kind) else "that kind"
        return f"unknown alert kind {shown}; the kinds are {', '.join(KINDS)}"
    if rule.role != ANY_ROLE and rule.role not in DEVICE_ROLES:
        return f"unknown device role; the roles are {', '.join(DEVICE_ROLES)}, or {ANY_ROLE} for any"
    for outcome in (rule.outcome, rule.assigned_outcome):
        if outcome is Outcome.ACTIVITY and rule.kind in STATE_KINDS:
            return (f"{rule.kind} is a state, not a moment: it can be a severity or off, not activity only"
                    " (the unit's telemetry history already shows it)")
    if rule.after_s is not None:
        if rule.kind not in TIMED_KINDS:
            return f"after_s applies only to {', '.join(TIMED_KINDS)}"
        low, high = AFTER_S_RANGE
        if not low <= rule.after_s <= high:
            return f"after_s must be between {low:g} and {high:g} seconds"
    return None


@dataclass(frozen=True)
class AlertPolicy:
    """The rules in force, and the one decision made from them. ``version`` is the policy's
    change counter in the database (0 for one built in memory), so that a reader can tell
    which policy a worker applies."""

    rules: Mapping[tuple[str, str], PolicyRule]
    version: int = 0

    @classmethod
    def of(cls, rules: Iterable[PolicyRule], *, version: int = 0) -> AlertPolicy:
        table: dict[tuple[str, str], PolicyRule] = {}
        for rule in rules:
            # The table may have been edited by hand: a rule the API would refuse (activity
            # for a state kind would record the state on every report) is refused here too.
            reason = check_rule(rule)
            if reason is not None:
                raise ValueError(f"rule for {rule.kind!r}, role {rule.role!r}: {reason}")
            table[(rule.kind, rule.role)] = rule
        missing = [k for k in KINDS if (k, ANY_ROLE) not in table]
        if missing:
            raise ValueError(f"the policy has no rule for any role of {', '.join(missing)}")
        return cls(rules=table, version=version)

    def _rule(self, kind: str, role: str | None) -> PolicyRule:
        """The role's own rule if the force made one, else the rule for any role."""
        return self.rules.get((kind, role or ANY_ROLE)) or self.rules[(kind, ANY_ROLE)]

    def decide(self, kind: str, *, role: str | None, assigned: bool) -> Outcome:
        """What ``kind`` does for a unit in ``role``, assigned to an open incident or not."""
        rule = self._rule(kind, role)
        if assigned and rule.assigned_outcome is not None:
            return rule.assigned_outcome
        return rule.outcome

    def after_s(self, kind: str, *, role: str | None, default: float) -> float:
        """How long ``kind``'s state must last for a unit in ``role`` before it is raised: the
        applying rule's ``after_s``, else ``default``."""
        after = self._rule(kind, role).after_s
        return default if after is None else after

    def shortest_after_s(self, kind: str, *, default: float) -> float:
        """The shortest wait of any rule of ``kind`` (or ``default``): a sweep need not look at
        units quiet for less."""
        return min([default, *(r.after_s for r in self.rules.values() if r.kind == kind and r.after_s is not None)])

    def sorted_rules(self) -> list[PolicyRule]:
        """Kind by kind in :data:`KINDS` order, the rule for any role first."""
        return sorted(self.rules.values(),
                      key=lambda r: (KINDS.index(r.kind), r.role != ANY_ROLE, r.role))
