"""Every unit's latest state, and what changed since the last tick: pure, no I/O, no lock.

:class:`FleetState` is fed from two sides: ingest's live-units frames (a unit's stored
telemetry and online status, :meth:`FleetState.apply`) and the database: every unit's
registry fields and stored state at start-up and after a broker reconnect
(:meth:`FleetState.load`), and the registry alone (callsign, officer, borough, role, and
which devices exist at all) on every refresh (:meth:`FleetState.load_registry`), which
touches only the units whose registry fields differ. It notes, per unit, the names of the
fields whose value changed, and which units left a borough (moved, or retired), until
:meth:`FleetState.take_changes` hands them to the tick. Many updates of one unit between two
ticks are one entry with the latest values: this is where the feed conflates.

It is not thread-safe: its owner (``api.live.handover.Handover``) holds a lock around it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["POSITION_FIELDS", "REGISTRY_FIELDS", "UNIT_FIELDS", "Changes", "FleetState", "Left", "RegistryRow"]

REGISTRY_FIELDS = ("callsign", "officer", "borough", "role")
#: A device of the registry: its ``device_id``, then its ``REGISTRY_FIELDS`` in that order
#: (as ``telemetry.queries.registry_snapshot`` reads them).
RegistryRow = tuple[Any, ...]
#: What a health-only role (a fleet manager) never sees: where a unit is, and who carries it.
POSITION_FIELDS = ("lat", "lon", "accuracy_m", "speed_mps", "heading_deg", "officer", "last_fix_at")
UNIT_FIELDS = ("device_id", "callsign", "officer", "borough", "role", "ts", "received_at", "battery_pct",
               "charging", "gps_fix", "lat", "lon", "accuracy_m", "speed_mps", "heading_deg", "last_fix_at",
               "recording", "storage_pct", "docked", "live", "viewers", "online")


def _merge(unit: dict[str, Any], fields: dict[str, Any]) -> list[str]:
    """Apply ``fields`` to ``unit``; return the names of those whose value changed."""
    changed = [name for name, value in fields.items() if unit[name] != value]
    for name in changed:
        unit[name] = fields[name]
    return changed


@dataclass(frozen=True)
class Left:
    """A unit that left a borough since the last tick: moved to ``now``, or retired.

    ``was`` holds every borough it was in since the last tick, not only the one it was in
    then: a client whose snapshot was taken between two moves (or a move and a retirement)
    of one tick holds it in the middle one.
    """

    device_id: str
    was: frozenset[str | None]
    now: str | None
    retired: bool

    def hidden_from(self, areas: frozenset[str] | None) -> bool:
        """Whether a client of ``areas`` may have it and may see it no longer (a removal of a
        unit a client does not hold is a no-op to it)."""
        if areas is None:
            return self.retired
        return not self.was.isdisjoint(areas) and (self.retired or self.now not in areas)


@dataclass(frozen=True)
class Changes:
    """What changed since the last tick: per unit its borough now and ``device_id`` with
    the changed fields (their latest values), and the units that left a borough."""

    changed: list[tuple[str | None, dict[str, Any]]]
    left: list[Left]

    def __bool__(self) -> bool:
        return bool(self.changed or self.left)


class FleetState:
    """The latest state of every unit, with the changes since the last :meth:`take_changes`."""

    def __init__(self) -> None:
        self._units: dict[str, dict[str, Any]] = {}
        self._changed: dict[str, set[str]] = {}  # unit -> fields changed since the last tick
        # Units that left a borough since the last tick (moved, or retired): every borough
        # they were in since, so that the clients of those areas are told to drop them.
        self._left: dict[str, set[str | None]] = {}
        self._registered: set[str] = set()  # in the registry at the last load
        self._retired: set[str] = set()  # left the registry: what they still send is not shown

    def apply(self, device_id: str, fields: dict[str, Any]) -> None:
        """Merge what ingest stored of a unit (telemetry.live_frame.decode_frame's fields).
        A retired unit is ignored; one the registry has not named yet starts empty. A report
        older than the unit's state is ignored: reports may arrive out of order (a camera's
        backlog after a reconnect), and the latest state follows ``ts``, as in the database."""
        if device_id in self._retired:
            return
        unit = self._units.get(device_id)
        if unit is None:
            unit = self._units[device_id] = {k: None for k in UNIT_FIELDS}
            unit["device_id"] = device_id
        elif "ts" in fields and unit["ts"] is not None and fields["ts"] < unit["ts"]:
            return
        self._note(device_id, _merge(unit, fields))

    def load(self, rows: Iterable[dict[str, Any]]) -> None:
        """Merge the registry's devices with their stored state from the database (all of
        them: a device that was in the previous load and is not in this one has been
        retired, and is dropped): registry fields always, state only where it is newer than
        what the broker already told us (the subscription starts before the load)."""
        registered = set()
        for row in rows:
            registered.add(row["device_id"])
            self._load_unit(row)
        self._retire_all_but(registered)

    def unregistered(self, registry: Iterable[RegistryRow]) -> list[str]:
        """The devices of ``registry`` that the last load did not have (new, or registered
        again after retirement): :meth:`load_registry` needs their stored state."""
        known = self._registered
        return [row[0] for row in registry if row[0] not in known]

    def load_registry(self, registry: Iterable[RegistryRow], whole: Iterable[dict[str, Any]]) -> None:
        """Merge the registry alone (all of it, as :meth:`load`: a device missing from it is
        retired), without the units' stored state: the frames keep that up to date. A unit
        whose registry fields are as the registry holds them is left as it is, unnoted.
        ``whole``: rows as :meth:`load` takes them of the :meth:`unregistered` devices, which
        come whole; one without its row is left out, to be taken in at the next load."""
        rows = {row["device_id"]: row for row in whole}
        units, known = self._units, self._registered
        registered = set()
        # Every device every 30 s: each field by name, no dict or list built for a unit as it was.
        for device_id, callsign, officer, borough, role in registry:
            unit = units.get(device_id) if device_id in known else None
            if unit is None:
                row = rows.get(device_id)
                if row is not None:
                    registered.add(device_id)
                    self._load_unit(row)
                continue
            registered.add(device_id)
            # Compared with the unit, not with the last registry read: a frame's officer
            # (custody) may have overtaken another, and the database has the last word.
            if (unit["callsign"] != callsign or unit["officer"] != officer or unit["borough"] != borough
                    or unit["role"] != role):
                self._merge_registry(unit, {"callsign": callsign, "officer": officer, "borough": borough,
                                            "role": role})
        self._retire_all_but(registered)

    def _load_unit(self, row: dict[str, Any]) -> None:
        device_id = row["device_id"]
        self._retired.discard(device_id)
        unit = self._units.get(device_id)
        if unit is None:  # new to clients connected before it was registered: all of it
            self._units[device_id] = {k: row.get(k) for k in UNIT_FIELDS}
            self._note(device_id, list(UNIT_FIELDS))
            return
        newer = unit["ts"] is None or (row["ts"] is not None and row["ts"] > unit["ts"])
        self._merge_registry(unit, {k: row.get(k) for k in (UNIT_FIELDS if newer else REGISTRY_FIELDS)})

    def _merge_registry(self, unit: dict[str, Any], fields: dict[str, Any]) -> None:
        """Merge ``fields`` (the registry's, perhaps with stored state) into a known unit."""
        borough = unit["borough"]
        device_id = unit["device_id"]
        changed = _merge(unit, fields)
        if "borough" in changed:  # clients of its new area have never seen it: all of it
            self._left.setdefault(device_id, set()).update((borough, unit["borough"]))
            changed = list(UNIT_FIELDS)
        self._note(device_id, changed)

    def _retire_all_but(self, registered: set[str]) -> None:
        """The devices of the last load missing from ``registered`` are retired."""
        for device_id in self._registered - registered:
            gone = self._units.pop(device_id, None)
            self._changed.pop(device_id, None)
            self._retired.add(device_id)
            if gone is not None:
                self._left.setdefault(device_id, set()).add(gone["borough"])
        self._registered = registered

    def take_changes(self) -> Changes:
        """The changes since the last call (copies), and forget them."""
        dirty, self._changed = self._changed, {}
        units = self._units
        changed = []
        # One dict filled in a loop per unit: a fifth less CPU than a comprehension unpacked
        # into a dict literal (it runs for every unit changed, every tick).
        for d, fields in dirty.items():
            unit = units[d]
            entry = {"device_id": d}
            for k in fields:
                entry[k] = unit[k]
            changed.append((unit["borough"], entry))
        left = []
        for d, was in self._left.items():
            kept = units.get(d)
            left.append(Left(d, frozenset(was), None if kept is None else kept["borough"], retired=kept is None))
        self._left = {}
        return Changes(changed, left)

    def visible(self, areas: frozenset[str] | None) -> list[dict[str, Any]]:
        """The units in ``areas`` (every unit for None), as the state's own dicts: the
        caller copies them before it lets go of the lock."""
        return [u for u in self._units.values() if areas is None or u["borough"] in areas]

    def borough_of(self, device_id: str) -> str | None:
        unit = self._units.get(device_id)
        return unit["borough"] if unit else None

    def _note(self, device_id: str, fields: list[str]) -> None:
        if fields:
            self._changed.setdefault(device_id, set()).update(fields)

