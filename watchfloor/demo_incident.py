"""The demo's incident in progress: a firearms commander signing in to the demo sees the view
incidents exist for (a drawn area, armed units assigned, their recording state) at once."""

from __future__ import annotations

import math

from services import audit
from simulator.fleet import Unit
from simulator.run import Simulator
from telemetry import incidents
from telemetry.geometry import METRES_PER_DEGREE, parse_ring

__all__ = ["open_demo_incident"]

_TITLE = "Demo: armed suspect seen, firearms units deployed"
_HALF_SIDE_M = 700.0  # a square cordon about 1.4 km across
_UNITS = 4


def _metres(a: Unit, b: Unit) -> float:
    """Equirectangular, as the server's geofence measures."""
    return math.hypot((a.lat - b.lat) * METRES_PER_DEGREE,
                      (a.lon - b.lon) * METRES_PER_DEGREE * math.cos(math.radians(a.lat)))


def _team(armed: list[Unit], size: int) -> list[Unit]:
    """The incident's first unit and its ``size - 1`` nearest armed neighbours, by where the
    simulator starts them (most have no fix yet when the incident opens): the armed unit whose
    team is the tightest. A borough alone holds one or two firearms units of a small fleet, so
    the team is the nearest, whichever borough they patrol, as a real deployment would be."""
    def nearest(first: Unit) -> list[Unit]:
        return sorted(armed, key=lambda u: (u is not first, _metres(first, u)))[:size]

    return min((nearest(first) for first in armed), key=lambda team: _metres(team[0], team[-1]))


def open_demo_incident(database_url: str, sim: Simulator, *, audit_key: bytes | None) -> int | None:
    """Open the demo's incident, once per database: a square around a firearms unit's start,
    in its borough, with it and the nearest few firearms units assigned (:func:`_team`).
    Returns its id, or None when the fleet has no firearms unit."""
    armed = [u for u in sim.units if u.role == "firearms"]
    if not armed:
        return None
    first, *others = _team(armed, _UNITS)
    team = [first.device_id, *(u.device_id for u in others)]
    dlat = _HALF_SIDE_M / METRES_PER_DEGREE
    dlon = dlat / math.cos(math.radians(first.lat))
    corners = [[first.lon - dlon, first.lat - dlat], [first.lon + dlon, first.lat - dlat],
               [first.lon + dlon, first.lat + dlat], [first.lon - dlon, first.lat + dlat]]
    area = parse_ring([*corners, corners[0]])
    with audit.connect(database_url, key=audit_key) as conn:
        row = conn.execute("SELECT id FROM incidents WHERE title = %s AND status = 'open'", (_TITLE,)).fetchone()
        if row is not None:
            return int(row[0])
        new = incidents.NewIncident(title=_TITLE, lat=area.centre_lat, lon=area.centre_lon,
                                    radius_m=area.bounding_radius_m, borough=first.borough.name, grade="immediate",
                                    reference="CAD DEMO/0001", commander="firearms", polygon=area.ring())
        created = incidents.create(conn, new, by="demo")
        audit.record(conn, actor="demo", action="incident_created",
                     details={"incident_id": created["id"], "title": _TITLE, "borough": first.borough.name,
                              "polygon": area.ring(), "grade": "immediate", "reference": "CAD DEMO/0001"})
        for device_id in incidents.assign(conn, created["id"], team, by="demo"):
            audit.record(conn, actor="demo", action="incident_unit_assigned", device_id=device_id,
                         details={"incident_id": created["id"], "title": _TITLE})
        conn.commit()
        return int(created["id"])
