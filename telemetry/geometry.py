"""An incident's area on the ground: a circle or a polygon, in pure functions.

Distances use a local equirectangular projection (metres east and north of a reference
point), the same approximation as the geofence's SQL for circles (telemetry/alerts.py): at a
city's scale (an area at most a few kilometres across) its error is well under a metre per
kilometre, far below a camera's GPS accuracy. A polygon is a GeoJSON linear ring:
``[lon, lat]`` pairs, closed (the last pair repeats the first).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MAX_VERTICES", "METRES_PER_DEGREE", "Polygon", "PolygonError", "bearing_deg", "circle_depth_m",
           "compass_point", "distance_m", "parse_ring"]

METRES_PER_DEGREE = 111_320.0
#: A drawn cordon needs a handful of corners; the bound keeps validation (quadratic in the
#: edges) and every fix's point-in-polygon test cheap.
MAX_VERTICES = 64
_POINTS = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")


class PolygonError(ValueError):
    """A ring that is not a usable incident area; the message says why."""


@dataclass(frozen=True)
class Polygon:
    """A valid ring's distinct vertices (``[lon, lat]``, not repeated at the end) and where it
    sits: its vertices' mean (the incident's centre) and the largest distance from there to a
    vertex (the circle that bounds it)."""

    vertices: tuple[tuple[float, float], ...]
    centre_lat: float
    centre_lon: float
    bounding_radius_m: float

    def depth_m(self, lat: float, lon: float) -> float:
        """Signed metres from the point to the ring's edge: positive inside, negative outside.
        The geofence enters on a depth above its margin and leaves below minus the margin."""
        pts = _project(self.vertices, self.centre_lat, self.centre_lon)
        x, y = _xy(lon, lat, self.centre_lat, self.centre_lon)
        edge = min(_segment_distance(x, y, pts[i], pts[(i + 1) % len(pts)]) for i in range(len(pts)))
        return edge if _inside(x, y, pts) else -edge

    def ring(self) -> list[list[float]]:
        """The closed GeoJSON ring, as stored."""
        return [list(v) for v in (*self.vertices, self.vertices[0])]


def parse_ring(ring: Sequence[Sequence[float]]) -> Polygon:
    """Check a drawn ring and return it as a :class:`Polygon`; :class:`PolygonError` names the
    first rule broken: closed, 3 to MAX_VERTICES distinct corners, coordinates in range, no
    repeated corner, no edge crossing or touching another, a non-zero area."""
    if any(len(p) != 2 for p in ring):
        raise PolygonError("every vertex is a [lon, lat] pair")
    if len(ring) < 4:
        raise PolygonError("a polygon needs at least 3 corners and the first repeated at the end")
    if list(ring[0]) != list(ring[-1]):
        raise PolygonError("the ring is not closed: the last vertex must repeat the first")
    vertices = tuple((float(p[0]), float(p[1])) for p in ring[:-1])
    if len(vertices) > MAX_VERTICES:
        raise PolygonError(f"{len(vertices)} corners is over the limit of {MAX_VERTICES}")
    for lon, lat in vertices:
        if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90):
            raise PolygonError(f"[{lon}, {lat}] is not a longitude and latitude")
    if len(set(vertices)) != len(vertices):
        raise PolygonError("a corner is repeated")
    lat0 = sum(v[1] for v in vertices) / len(vertices)
    lon0 = sum(v[0] for v in vertices) / len(vertices)
    pts = _project(vertices, lat0, lon0)
    n = len(pts)
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbours share a corner
            if _segments_cross(pts[i], pts[(i + 1) % n], pts[j], pts[(j + 1) % n]):
                raise PolygonError(f"edge {i + 1} crosses edge {j + 1}: the polygon intersects itself")
    if abs(_area(pts)) < 1.0:
        raise PolygonError("the polygon has no area")
    radius = max(math.hypot(x, y) for x, y in pts)
    return Polygon(vertices=vertices, centre_lat=lat0, centre_lon=lon0, bounding_radius_m=radius)


def circle_depth_m(centre_lat: float, centre_lon: float, radius_m: float, lat: float, lon: float) -> float:
    """Signed metres from the point to a circle's edge, positive inside."""
    return radius_m - distance_m(centre_lat, centre_lon, lat, lon)


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    x, y = _xy(lon2, lat2, lat1, lon1)
    return math.hypot(x, y)


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Degrees clockwise from north, from the first point towards the second, in [0, 360)."""
    x, y = _xy(lon2, lat2, lat1, lon1)
    return math.degrees(math.atan2(x, y)) % 360.0


def compass_point(bearing: float) -> str:
    """One of the eight compass points, as a control room says it ("1.2 km NE")."""
    return _POINTS[round((bearing % 360.0) / 45.0) % 8]


def _xy(lon: float, lat: float, lat0: float, lon0: float) -> tuple[float, float]:
    return ((lon - lon0) * METRES_PER_DEGREE * math.cos(math.radians(lat0)), (lat - lat0) * METRES_PER_DEGREE)


def _project(vertices: Sequence[tuple[float, float]], lat0: float, lon0: float) -> list[tuple[float, float]]:
    return [_xy(lon, lat, lat0, lon0) for lon, lat in vertices]


def _area(pts: Sequence[tuple[float, float]]) -> float:
    return sum(pts[i][0] * pts[(i + 1) % len(pts)][1] - pts[(i + 1) % len(pts)][0] * pts[i][1]
               for i in range(len(pts))) / 2.0


def _inside(x: float, y: float, pts: Sequence[tuple[float, float]]) -> bool:
    # Even-odd ray casting; a point exactly on an edge may fall either way, which the
    # geofence's margin makes irrelevant (it asks for a depth beyond the margin).
    inside = False
    n = len(pts)
    for i in range(n):
        (x1, y1), (x2, y2) = pts[i], pts[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def _segment_distance(x: float, y: float, a: tuple[float, float], b: tuple[float, float]) -> float:
    dx, dy = b[0] - a[0], b[1] - a[1]
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, ((x - a[0]) * dx + (y - a[1]) * dy) / length2))
    return math.hypot(x - (a[0] + t * dx), y - (a[1] + t * dy))


def _orient(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def _segments_cross(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float],
                    d: tuple[float, float]) -> bool:
    """Whether two segments touch or cross (touching counts: a ring through one of its own
    corners is as unusable as one that crosses)."""
    o1, o2, o3, o4 = _orient(a, b, c), _orient(a, b, d), _orient(c, d, a), _orient(c, d, b)
    if ((o1 > 0) != (o2 > 0)) and ((o3 > 0) != (o4 > 0)) and 0 not in (o1, o2, o3, o4):
        return True

    def on(p: tuple[float, float], q: tuple[float, float], r: tuple[float, float], o: float) -> bool:
        return o == 0 and min(p[0], q[0]) <= r[0] <= max(p[0], q[0]) and min(p[1], q[1]) <= r[1] <= max(p[1], q[1])

    return on(a, b, c, o1) or on(a, b, d, o2) or on(c, d, a, o3) or on(c, d, b, o4)
