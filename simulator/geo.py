"""London borough outlines for the simulator: where units start and where they may go.

The outlines are simplified (a point near a border may fall a few hundred metres on the
wrong side), which is fine for a simulator. The City of London is left out: it has its own
force, so no Met unit belongs there.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from importlib import resources

__all__ = ["Borough", "load_boroughs", "metres_to_degrees"]

_NOT_MET = {"City of London"}
Ring = list[tuple[float, float]]  # (lon, lat)


@dataclass(frozen=True)
class Borough:
    name: str
    code: str
    polygons: tuple[tuple[Ring, ...], ...]  # each: outer ring, then holes
    bbox: tuple[float, float, float, float]  # min lon, min lat, max lon, max lat

    def contains(self, lon: float, lat: float) -> bool:
        return any(_in_polygon(lon, lat, rings) for rings in self.polygons)

    def random_point(self, rng: random.Random) -> tuple[float, float]:
        """A uniformly random (lat, lon) inside the borough."""
        x0, y0, x1, y1 = self.bbox
        for _ in range(10_000):
            lon, lat = rng.uniform(x0, x1), rng.uniform(y0, y1)
            if self.contains(lon, lat):
                return lat, lon
        raise RuntimeError(f"could not place a point in {self.name}")


def _in_ring(lon: float, lat: float, ring: Ring) -> bool:
    inside = False
    j = len(ring) - 1
    for i in range(len(ring)):
        xi, yi = ring[i]
        xj, yj = ring[j]
        if (yi > lat) != (yj > lat) and lon < (xj - xi) * (lat - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def _in_polygon(lon: float, lat: float, rings: tuple[Ring, ...]) -> bool:
    return _in_ring(lon, lat, rings[0]) and not any(_in_ring(lon, lat, h) for h in rings[1:])


def _code(name: str, taken: set[str]) -> str:
    words = [w for w in name.replace("-", " ").split() if w[0].isupper()]
    candidates = [(words[0][0] + words[1][0]) if len(words) > 1 else name[:2]]
    candidates += [name[0] + c for c in name[1:] if c.isalpha()]
    for candidate in candidates:
        if candidate.upper() not in taken:
            taken.add(candidate.upper())
            return candidate.upper()
    raise RuntimeError(f"no code for {name}")


def load_boroughs() -> list[Borough]:
    """The 32 boroughs the Metropolitan Police covers, sorted by name."""
    text = resources.files(__package__).joinpath("london-boroughs.geojson").read_text()
    features = json.loads(text)["features"]
    boroughs: list[Borough] = []
    taken: set[str] = set()
    for feature in sorted(features, key=lambda f: f["properties"]["name"]):
        name = feature["properties"]["name"]
        if name in _NOT_MET:
            continue
        geometry = feature["geometry"]
        raw = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        polygons = tuple(tuple([(float(x), float(y)) for x, y in ring] for ring in poly) for poly in raw)
        xs = [x for poly in polygons for x, _ in poly[0]]
        ys = [y for poly in polygons for _, y in poly[0]]
        boroughs.append(Borough(name, _code(name, taken), polygons, (min(xs), min(ys), max(xs), max(ys))))
    return boroughs


def metres_to_degrees(dn: float, de: float, lat: float) -> tuple[float, float]:
    """A displacement north/east in metres as (dlat, dlon) at latitude ``lat``."""
    return dn / 111_320.0, de / (111_320.0 * math.cos(math.radians(lat)))
