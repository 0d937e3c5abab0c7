"""What each client receives each tick, and how a lagging client's deltas conflate: pure.

A *view* is what a role may see (positions or not) in which area (a set of boroughs, or
None for all): every client of one view receives the same delta, built and encoded once.
A delta carries, per unit in the view's area, its ``device_id`` and the fields that changed
(a unit that moved into the area arrives whole, since :class:`~api.live.state.FleetState`
notes every field of a moved unit), and ``removed``: the units that left the area or were
retired. The wire format is docs/api.md's "Live feed".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from api.live.state import POSITION_FIELDS, Changes

__all__ = ["Delta", "Pending", "View", "encode_delta", "for_view", "unit_view"]

#: (sees positions, areas): what a client may see; clients of one view share their frames.
View = tuple[bool, frozenset[str] | None]


def unit_view(unit: dict[str, Any], sees_positions: bool) -> dict[str, Any]:
    """What a client may see of a unit: no positions or names for a health-only role."""
    if sees_positions:
        return unit
    return {k: v for k, v in unit.items() if k not in POSITION_FIELDS}


@dataclass(frozen=True)
class Delta:
    units: list[dict[str, Any]]  # shared by every client of the view: never mutated
    removed: list[str]

    def __bool__(self) -> bool:
        return bool(self.units or self.removed)


def for_view(changes: Changes, view: View) -> Delta:
    """The part of this tick's ``changes`` that a client of ``view`` receives."""
    sees, areas = view
    units = [unit_view(u, sees) for borough, u in changes.changed if areas is None or borough in areas]
    removed = [gone.device_id for gone in changes.left if gone.hidden_from(areas)]
    return Delta(units, removed)


def encode_delta(delta: Delta) -> str:
    """The ``delta`` frame (``removed`` only when there is something to remove)."""
    frame: dict[str, Any] = {"type": "delta", "units": delta.units}
    if delta.removed:
        frame["removed"] = delta.removed
    return orjson.dumps(frame).decode()


@dataclass
class Pending:
    """The deltas a lagging client has not been sent, merged per unit and field: bounded by
    the number of units in its view, it loses intermediate values, never the latest."""

    units: dict[str, dict[str, Any]] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.units or self.removed)

    def add(self, delta: Delta) -> int:
        """Merge ``delta`` in; return how many units' earlier values it replaced."""
        conflated = 0
        for device_id in delta.removed:
            self.units.pop(device_id, None)
            self.removed.add(device_id)
        for unit in delta.units:
            self.removed.discard(unit["device_id"])  # back in view: it comes whole
            earlier = self.units.get(unit["device_id"])
            if earlier is None:
                self.units[unit["device_id"]] = unit
            else:  # a new dict: ``unit`` is shared with every client of the view
                self.units[unit["device_id"]] = {**earlier, **unit}
                conflated += 1
        return conflated

    def take(self) -> Delta:
        """Everything pending as one delta, and start empty."""
        delta = Delta(list(self.units.values()), sorted(self.removed))
        self.units, self.removed = {}, set()
        return delta
