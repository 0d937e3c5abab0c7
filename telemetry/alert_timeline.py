"""An alert's history as one timeline: the pure merge of what the alert's row says (raised,
acknowledged, resolved) with its ``alert_history`` rows (escalated; acknowledged in bulk).

The row is the record of its own acts: an acknowledgement one by one writes no history row,
one in bulk writes both; the timeline shows it once, with the history row's detail.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["TimelineEntry", "timeline"]

_ORDER = {"raised": 0, "escalated": 1, "acknowledged": 2, "resolved": 3}


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    at: datetime
    action: str  # raised | escalated | acknowledged | resolved
    actor: str
    detail: str | None


def timeline(alert: Mapping[str, Any], history: Iterable[Mapping[str, Any]]) -> list[TimelineEntry]:
    """``alert``: the alerts row; ``history``: its alert_history rows (at, action, actor, detail).
    Oldest first; acts at the same moment in the order they can happen."""
    entries = [TimelineEntry(alert["raised_at"], "raised", "system", f"{alert['severity']}: {alert['detail']}")]
    entries += [TimelineEntry(h["at"], h["action"], h["actor"], h["detail"]) for h in history]
    if alert.get("acknowledged_at") is not None and not any(e.action == "acknowledged" for e in entries):
        entries.append(TimelineEntry(alert["acknowledged_at"], "acknowledged", alert["acknowledged_by"] or "?", None))
    if alert.get("resolved_at") is not None:
        detail = alert.get("outcome")
        if alert.get("note"):
            detail = f"{detail}: {alert['note']}"
        entries.append(TimelineEntry(alert["resolved_at"], "resolved", alert["resolved_by"] or "?", detail))
    return sorted(entries, key=lambda e: (e.at, _ORDER[e.action]))
