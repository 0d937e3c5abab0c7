"""An incident's area as pure geometry (telemetry/geometry.py): a drawn ring is accepted only
when it is usable, and a point's signed depth says inside or outside the way the geofence
needs it, checked against examples and as properties over generated points and shapes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.geometry import (
    MAX_VERTICES,
    METRES_PER_DEGREE,
    PolygonError,
    bearing_deg,
    circle_depth_m,
    compass_point,
    distance_m,
    parse_ring,
)

LAT0, LON0 = 51.5, -0.13
# About 222 m north-south and 139 m east-west at London's latitude.
SQUARE = [[-0.131, 51.499], [-0.129, 51.499], [-0.129, 51.501], [-0.131, 51.501], [-0.131, 51.499]]


def test_a_square_has_its_centre_and_bounding_radius() -> None:
    """The centre is the corners' mean; the bounding radius reaches every corner."""
    square = parse_ring(SQUARE)
    assert square.centre_lat == pytest.approx(51.5) and square.centre_lon == pytest.approx(-0.13)
    assert square.bounding_radius_m == pytest.approx(math.hypot(69.3, 111.3), rel=0.01)
    assert square.ring() == SQUARE


def test_depth_inside_and_outside_a_square() -> None:
    """The centre is about 69 m (half the east-west side) inside; a point 100 m east of the
    east edge is about 100 m outside."""
    square = parse_ring(SQUARE)
    assert square.depth_m(51.5, -0.13) == pytest.approx(69.3, rel=0.01)
    east = -0.129 + 100 / (METRES_PER_DEGREE * math.cos(math.radians(51.5)))
    assert square.depth_m(51.5, east) == pytest.approx(-100, rel=0.01)


def test_a_concave_polygon_excludes_its_notch() -> None:
    """A U shape: the notch between its arms is outside, each arm is inside."""
    u = parse_ring([[0, 0], [0.003, 0], [0.003, 0.003], [0.002, 0.003], [0.002, 0.001], [0.001, 0.001],
                    [0.001, 0.003], [0, 0.003], [0, 0]])
    assert u.depth_m(0.002, 0.0015) < 0  # in the notch
    assert u.depth_m(0.002, 0.0005) > 0  # the left arm
    assert u.depth_m(0.002, 0.0025) > 0  # the right arm


@pytest.mark.parametrize(("ring", "says"), [
    pytest.param([[0, 0], [0.001, 0], [0.001, 0.001], [0, 0]][:3], "at least 3 corners", id="too-few"),
    pytest.param([[0, 0], [0.001, 0], [0.001, 0.001], [0, 0.001]], "not closed", id="open"),
    pytest.param([[0, 0], [0.002, 0.002], [0.002, 0], [0, 0.002], [0, 0]], "intersects itself", id="bow-tie"),
    pytest.param([[0, 0], [0.001, 0], [0.002, 0], [0, 0]], "no area", id="collinear"),
    pytest.param([[0, 0], [0.001, 0], [0.001, 0], [0, 0.001], [0, 0]], "repeated", id="repeated-corner"),
    pytest.param([[0, 0], [200, 0], [0, 1], [0, 0]], "not a longitude", id="out-of-range"),
    pytest.param([[0, 0], [0.001], [0, 0.001], [0, 0]], "[lon, lat] pair", id="not-a-pair"),
    pytest.param([[math.cos(2 * math.pi * k / 70) * 0.01, math.sin(2 * math.pi * k / 70) * 0.01]
                  for k in [*range(70), 0]], f"limit of {MAX_VERTICES}", id="too-many"),
])
def test_an_unusable_ring_is_refused_saying_why(ring: list[list[float]], says: str) -> None:
    with pytest.raises(PolygonError, match=says.replace("[", r"\[")):
        parse_ring(ring)


def test_distance_bearing_and_compass_point() -> None:
    """One kilometre north-east is about 1 km away on a bearing of 45°, "NE"."""
    d = 1000 / math.sqrt(2)
    lat = LAT0 + d / METRES_PER_DEGREE
    lon = LON0 + d / (METRES_PER_DEGREE * math.cos(math.radians(LAT0)))
    assert distance_m(LAT0, LON0, lat, lon) == pytest.approx(1000, rel=0.01)
    assert bearing_deg(LAT0, LON0, lat, lon) == pytest.approx(45, abs=0.5)
    assert [compass_point(b) for b in (0, 44, 90, 180, 225, 300, 359)] == ["N", "NE", "E", "S", "SW", "NW", "N"]


def _regular(n: int, radius_deg: float, rotation: float) -> list[list[float]]:
    corners = [[LON0 + radius_deg * math.cos(rotation + 2 * math.pi * k / n),
                LAT0 + radius_deg * math.sin(rotation + 2 * math.pi * k / n)] for k in range(n)]
    return [*corners, corners[0]]


offsets = st.floats(min_value=-0.03, max_value=0.03, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(3, MAX_VERTICES), radius=st.floats(0.001, 0.01), rotation=st.floats(0, 2 * math.pi),
       dlat=offsets, dlon=offsets)
def test_a_convex_polygon_agrees_with_its_half_planes(n: int, radius: float, rotation: float, dlat: float,
                                                      dlon: float) -> None:
    """Any regular polygon is valid; a point is inside (positive depth) exactly when it is on
    the inner side of every edge, and its depth is never more than its distance to the
    nearest corner."""
    polygon = parse_ring(_regular(n, radius, rotation))
    lat, lon = LAT0 + dlat, LON0 + dlon
    depth = polygon.depth_m(lat, lon)
    corners = polygon.vertices
    k = METRES_PER_DEGREE * math.cos(math.radians(polygon.centre_lat))
    sides = [((b[0] - a[0]) * k * (lat - a[1]) * METRES_PER_DEGREE - (b[1] - a[1]) * METRES_PER_DEGREE
              * (lon - a[0]) * k) for a, b in zip(corners, corners[1:] + corners[:1], strict=True)]
    if all(s > 1e-3 for s in sides):  # counter-clockwise ring: inside is to the left of every edge
        assert depth > 0
    elif any(s < -1e-3 for s in sides):
        assert depth <= 0
    nearest = min(distance_m(lat, lon, c[1], c[0]) for c in corners)
    assert abs(depth) <= nearest * 1.001 + 0.01  # the two project about different latitudes


@settings(max_examples=200, deadline=None)
@given(radius_m=st.floats(10, 2000), dlat=offsets, dlon=offsets)
def test_circle_depth_is_radius_minus_distance(radius_m: float, dlat: float, dlon: float) -> None:
    """A circle's depth is positive exactly within its radius."""
    depth = circle_depth_m(LAT0, LON0, radius_m, LAT0 + dlat, LON0 + dlon)
    assert (depth > 0) == (distance_m(LAT0, LON0, LAT0 + dlat, LON0 + dlon) < radius_m)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(3, 12), radius=st.floats(0.001, 0.01), rotation=st.floats(0, 2 * math.pi),
       shift=st.integers(1, 11))
def test_a_ring_is_the_same_area_from_any_corner(n: int, radius: float, rotation: float, shift: int) -> None:
    """Starting the ring at another corner changes neither validity nor any point's depth."""
    ring = _regular(n, radius, rotation)[:-1]
    s = shift % n
    turned = ring[s:] + ring[:s]
    a, b = parse_ring([*ring, ring[0]]), parse_ring([*turned, turned[0]])
    for dlat, dlon in ((0, 0), (radius / 2, 0), (0, radius * 1.5)):
        assert a.depth_m(LAT0 + dlat, LON0 + dlon) == pytest.approx(b.depth_m(LAT0 + dlat, LON0 + dlon), abs=1e-6)
