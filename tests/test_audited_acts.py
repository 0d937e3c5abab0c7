"""Acts police logging rules expect on the record, through the real API: reading a unit's
history (track, events, health) and creating, assigning, unassigning and closing incidents.
Each act leaves exactly one audit entry with its actor, device and details; a refused one
(outside the caller's area, a bad window) leaves none."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from services.registry import DeviceRecord, upsert_devices
from tests.helpers.api import ApiServer, add_test_users, client, running_api
from tests.helpers.db import Database
from tests.helpers.telemetry import make_settings
from watchfloor.mosquitto import MosquittoProcess

DEVICES = [DeviceRecord("we-1", "WE01", "PC Jones", "Westminster", "response"),
           DeviceRecord("we-afo", "WEF1", "PC Smith", "Westminster", "firearms"),
           DeviceRecord("ca-1", "CA01", "PC Brown", "Camden", "response")]


@pytest.fixture
def api(pg: Database, mosquitto: MosquittoProcess) -> Iterator[ApiServer]:
    with pg.connect() as conn:
        add_test_users(conn)
        upsert_devices(conn, DEVICES)
    with running_api(database_url=pg.url, mqtt_url=mosquitto.url, settings=make_settings()) as server:
        yield server


def _entries(pg: Database, action: str) -> list[tuple[Any, ...]]:
    with pg.connect() as conn:
        return conn.execute("SELECT actor, device_id, details FROM audit_log WHERE action = %s ORDER BY seq",
                            (action,)).fetchall()


@pytest.mark.parametrize(("path", "action", "reader"), [("track", "device_track_read", "op-all"),
                                                        ("events", "device_events_read", "afo-cmd"),
                                                        ("health", "device_health_read", "fleet")])
def test_reading_a_units_history_is_audited_with_the_window(pg: Database, api: ApiServer, path: str, action: str,
                                                            reader: str) -> None:
    """One entry per read: who, which unit, the window asked for and how many rows went out."""
    window = {"start": "2026-01-01T10:00:00+01:00", "end": "2026-01-01T12:00:00Z"}
    with client(api.base, reader) as who:
        response = who.get(f"/api/v1/devices/we-1/{path}", params=window)
        assert response.status_code == 200, response.text
        assert who.get(f"/api/v1/devices/we-1/{path}", params={"start": window["end"],
                                                                "end": window["start"]}).status_code == 422
    assert _entries(pg, action) == [(reader, "we-1", {"start": "2026-01-01T09:00:00Z", "end": "2026-01-01T12:00:00Z",
                                                      "rows": len(response.json())})]
    with client(api.base, "op-west") as west:  # Camden is not theirs: 404, and nothing was read
        assert west.get(f"/api/v1/devices/ca-1/{path}").status_code in (403, 404)
    assert len(_entries(pg, action)) == 1


def test_incident_acts_are_audited(pg: Database, api: ApiServer) -> None:
    """Creating, assigning (one entry per unit newly assigned), unassigning and closing an
    incident each leave their entry, with the incident's id and title; repeating an act that
    changes nothing (assigning an assigned unit, closing a closed incident) leaves none."""
    body = {"title": "Armed suspect, Strand", "lat": 51.51, "lon": -0.12, "radius_m": 500, "borough": "Westminster"}
    with client(api.base, "afo-cmd") as commander:
        created = commander.post("/api/v1/incidents", json=body)
        assert created.status_code == 201, created.text
        incident = created.json()["id"]
        facts = {"incident_id": incident, "title": body["title"]}
        assert _entries(pg, "incident_created") == [("afo-cmd", None, {**facts, "borough": "Westminster",
                                                                        "lat": 51.51, "lon": -0.12,
                                                                        "radius_m": 500, "polygon": None,
                                                                        "grade": "standard", "reference": None,
                                                                        "commander": "afo-cmd"})]
        assert commander.post(f"/api/v1/incidents/{incident}/units",
                              json={"device_ids": ["we-afo", "we-1"]}).status_code == 200
        assert commander.post(f"/api/v1/incidents/{incident}/units", json={"device_ids": ["we-1"]}).status_code == 200
        assert _entries(pg, "incident_unit_assigned") == [("afo-cmd", "we-1", facts), ("afo-cmd", "we-afo", facts)]
        assert commander.delete(f"/api/v1/incidents/{incident}/units/we-1").status_code == 200
        assert commander.delete(f"/api/v1/incidents/{incident}/units/we-1").status_code == 404
        assert _entries(pg, "incident_unit_unassigned") == [("afo-cmd", "we-1", facts)]
        closing = {"outcome": "arrest"}
        assert commander.post(f"/api/v1/incidents/{incident}/close", json=closing).status_code == 200
        assert commander.post(f"/api/v1/incidents/{incident}/close", json=closing).status_code in (200, 404)
    assert _entries(pg, "incident_closed") == [("afo-cmd", None, {**facts, "outcome": "arrest", "units": 1})]
