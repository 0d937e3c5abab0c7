"""Escalation of a high or critical alert nobody acknowledges, in two levels: the pure
decision that ingest's sweep (:func:`telemetry.alerts.sweep_escalations`) makes per alert.

Level 1, ``first_after_s[kind]`` after the alert was raised: the area's supervisors, the
firearms commanders of the unit's borough. Level 2, a further ``again_after_s[kind]`` after
level 1: the force's duty inspectors, modelled as firearms commanders of every area (an
account whose areas are all of them; no new role: the area model already says "force-wide").
Both reach them on the area-filtered live feed; the level tells them apart. A kind absent
from ``first_after_s`` never escalates; one absent from ``again_after_s`` stops at level 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["ESCALATED_TO", "ESCALATING_SEVERITIES", "EscalationRules", "escalation_due"]

#: Who each level goes to (sent as ``escalated_to`` on the live feed; docs/security.md, "Supervisors").
ESCALATED_TO: Mapping[int, str] = {1: "firearms_commander", 2: "firearms_commander:all_areas"}
ESCALATING_SEVERITIES = frozenset({"high", "critical"})


@dataclass(frozen=True)
class EscalationRules:
    # kind: seconds from raised to level 1
    first_after_s: Mapping[str, float] = field(default_factory=dict)
    # kind: seconds from level 1 to level 2
    again_after_s: Mapping[str, float] = field(default_factory=dict)

    @property
    def kinds(self) -> list[str]:
        return sorted(self.first_after_s)


def escalation_due(*, kind: str, severity: str, status: str, level: int, raised_at: datetime,
                   escalated_at: datetime | None, now: datetime, rules: EscalationRules) -> int | None:
    """The level an alert escalates to at ``now``, or None if it does not (yet)."""
    if status != "open" or severity not in ESCALATING_SEVERITIES or kind not in rules.first_after_s:
        return None
    if level == 0:
        return 1 if (now - raised_at).total_seconds() >= rules.first_after_s[kind] else None
    if level == 1 and kind in rules.again_after_s and escalated_at is not None:
        return 2 if (now - escalated_at).total_seconds() >= rules.again_after_s[kind] else None
    return None
