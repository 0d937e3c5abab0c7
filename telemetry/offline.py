"""When a quiet unit is offline, per its profile: the pure decision the offline sweep makes
for each unit it finds quiet (:func:`telemetry.alerts.sweep_offline`).

A unit is offline once no report has been received from it for its profile's timeout (the
alert policy's ``after_s`` for ``offline`` and the unit's role). A Last Will alone does not
make it offline sooner: a camera that loses coverage for a few seconds in a tunnel and comes
back is not an alert. A unit whose last report said it was docked, or that its officer is
off duty (``on_duty: false``, contract 1.2), is never offline: a camera in its dock or in a
locker is expected to be quiet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from telemetry.alert_policy import AlertPolicy

__all__ = ["QuietUnit", "offline_due"]


@dataclass(frozen=True, slots=True)
class QuietUnit:
    """What the sweep knows of a unit: its role, and its last report's time and states."""

    device_id: str
    role: str | None
    last_report_at: datetime
    docked: bool | None  # None: never said
    on_duty: bool | None  # None: never said (a camera older than contract 1.2): on duty


def offline_due(unit: QuietUnit, *, now: datetime, policy: AlertPolicy, default_after_s: float) -> bool:
    """True if ``unit`` is to be raised offline at ``now``."""
    if unit.docked or unit.on_duty is False:
        return False
    after = policy.after_s("offline", role=unit.role, default=default_after_s)
    return (now - unit.last_report_at).total_seconds() >= after
