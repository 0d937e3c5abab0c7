"""The force's areas: the one list of names a borough or a user's area may take.

A borough is what decides who sees a unit, so a typo ("Westminstr") would hide it from
everyone limited to Westminster; every write of a borough or an area is checked against this
list. The default is the Metropolitan Police's: the 32 London boroughs and the City of London
(the names of simulator/london-boroughs.geojson, which tests/test_areas.py keeps equal).
A force elsewhere points ``WATCHFLOOR_AREAS_FILE`` at its own list.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["LONDON_AREAS", "load_areas", "unknown_areas"]

LONDON_AREAS = frozenset({
    "Barking and Dagenham", "Barnet", "Bexley", "Brent", "Bromley", "Camden", "City of London", "Croydon",
    "Ealing", "Enfield", "Greenwich", "Hackney", "Hammersmith and Fulham", "Haringey", "Harrow", "Havering",
    "Hillingdon", "Hounslow", "Islington", "Kensington and Chelsea", "Kingston upon Thames", "Lambeth",
    "Lewisham", "Merton", "Newham", "Redbridge", "Richmond upon Thames", "Southwark", "Sutton", "Tower Hamlets",
    "Waltham Forest", "Wandsworth", "Westminster",
})


def load_areas(path: Path | None) -> frozenset[str]:
    """The areas in ``path`` (one name a line; blank lines and lines starting with # skipped),
    or London's when None. An empty file is refused: no borough could ever be written."""
    if path is None:
        return LONDON_AREAS
    names = frozenset(line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                      if line.strip() and not line.lstrip().startswith("#"))
    if not names:
        raise ValueError(f"{path} lists no areas")
    return names


def unknown_areas(names: Iterable[str | None], known: frozenset[str]) -> list[str]:
    """The names that are not areas of the force, sorted (None, no borough, is not checked)."""
    return sorted({n for n in names if n is not None and n not in known})
