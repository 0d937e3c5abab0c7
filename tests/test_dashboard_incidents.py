"""Incident command in a real browser (Debian's Chromium, headless, driven by playwright)
against real parts: Mosquitto from the shipped configuration, ingest, PostgreSQL and the API.
A firearms commander draws an incident as a polygon on the map, assigns the armed units within
2 km, sees "NOT RECORDING" drawn on the markers of those not recording, closes the incident
with an outcome and finds it among the closed ones. A screenshot of the incident view at
1600 px is saved under test-artifacts/."""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import pytest

from core.contract import Channel, topic_for
from services.registry import DeviceRecord, upsert_devices
from telemetry.geometry import METRES_PER_DEGREE
from telemetry.ingest import IngestWorker
from tests.helpers.api import add_test_users, client, running_api
from tests.helpers.db import Database
from tests.helpers.telemetry import make_settings, publish_all, running_worker, telemetry_payload
from tests.helpers.waiting import wait_for
from tests.test_dashboard import ARTIFACTS, browser_page, sign_in
from watchfloor.mosquitto import MosquittoProcess

__all__ = ["browser_page"]  # the fixture, shared with test_dashboard.py

LAT, LON = 51.5, -0.13


def _at(north_m: float, east_m: float) -> tuple[float, float]:
    return (LAT + north_m / METRES_PER_DEGREE,
            LON + east_m / (METRES_PER_DEGREE * math.cos(math.radians(LAT))))


# device, callsign, role, metres (north, east) of (LAT, LON), recording
UNITS = [("bt-afo-1", "WETRJ1", "firearms", (150, 100), "buffering"),
         ("bt-afo-2", "WETRJ2", "firearms", (-800, 600), "recording"),
         ("bt-afo-3", "WETRJ3", "firearms", (1200, -900), "off"),
         ("bt-afo-far", "WETRJ9", "firearms", (3000, 3000), "buffering"),
         ("bt-resp-1", "WE101", "response", (50, -80), "buffering")]


@dataclass
class Stack:
    base: str
    db: Database
    worker: IngestWorker


@pytest.fixture
def stack(pg: Database, mosquitto: MosquittoProcess) -> Iterator[Stack]:
    with pg.connect() as conn:
        add_test_users(conn)
        upsert_devices(conn, [DeviceRecord(d, c, f"PC {c}", "Westminster", r) for d, c, r, _, _ in UNITS])
    settings = make_settings(live_rate_hz=4.0, alert_geofence_dwell_s=0)
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as worker, \
            running_api(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as api:
        messages = [(topic_for(d, Channel.TELEMETRY), telemetry_payload(1, lat=_at(*where)[0], lon=_at(*where)[1],
                                                                        recording=rec))
                    for d, _, _, where, rec in UNITS]
        publish_all(mosquitto.url, messages, client_id="incident-test-publisher")
        wait_for(lambda: worker.stats.received >= len(messages), what="ingest")
        yield Stack(api.base, pg, worker)


def _click_at(page: Any, lat: float, lon: float) -> None:
    """A click on the map at a latitude and longitude (the map's own projection says where)."""
    x, y = page.evaluate("""([lat, lon]) => {
        const map = window.__watchfloor.map;
        const s = Math.sin(lat * Math.PI / 180);
        const [x, y] = map.toScreen((lon + 180) / 360, 0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI));
        const r = map.canvas.getBoundingClientRect();
        return [r.left + x, r.top + y];
    }""", [lat, lon])
    page.mouse.click(x, y)


def test_incident_command_polygon_armed_within_not_recording_close_and_find(stack: Stack,
                                                                           browser_page: Any) -> None:
    """Draw a polygon incident (grade, CAD reference) by clicking its corners; assign a unit
    by callsign and unassign it, then by selecting it on the map; assign the armed
    units within 2 km (the three near firearms units: not the one 4 km off, not the response
    unit); "NOT RECORDING" is drawn on the two not recording; the table shows distance and
    bearing, not coordinates, and fits its panel without horizontal scroll at 1600 px; close
    it with an outcome; find it among the closed incidents by reference."""
    page = browser_page
    sign_in(page, stack.base, "afo-cmd")
    page.wait_for_selector("#incident-panel:not(.hidden)")
    wait_for(lambda: page.evaluate("window.__watchfloor.map.store.units.size") >= len(UNITS), what="units on the map")
    page.evaluate(f"window.__watchfloor.map.centreOn({LAT}, {LON}, 15)")

    page.click("#incident-panel details.new-incident-box summary")
    page.fill("#incident-panel form.new-incident input[name=title]", "Armed man, Parliament Sq")
    page.select_option("#incident-panel form.new-incident select[name=grade]", "immediate")
    page.fill("#incident-panel form.new-incident input[name=reference]", "CAD 77/BT")
    page.check("#incident-panel form.new-incident input[name=shape][value=polygon]")
    page.click("#incident-panel form.new-incident button.draw")
    corners = [_at(-300, -300), _at(-300, 300), _at(300, 300), _at(350, 0), _at(300, -300)]
    for lat, lon in corners:
        _click_at(page, lat, lon)
    page.click("#incident-panel form.new-incident button.finish")
    page.wait_for_selector("#incident-panel .where-info:has-text('Polygon of 5 corners')")
    page.click("#incident-panel form.new-incident button[type=submit]")
    page.wait_for_selector("#incident-panel .incident-summary:has-text('IMMEDIATE · CAD 77/BT')", timeout=15_000)
    stored = stack.db.scalar("SELECT jsonb_array_length(polygon) FROM incidents WHERE reference = 'CAD 77/BT'")
    assert stored == 6  # five corners and the first again

    # By callsign, then unassigned; then by selection on the map.
    page.fill("#incident-panel form.assign-callsign input[name=callsign]", "we101")
    page.click("#incident-panel form.assign-callsign button[type=submit]")
    page.wait_for_selector("#incident-panel tr[data-device-id='bt-resp-1']", timeout=15_000)
    page.click("#incident-panel tr[data-device-id='bt-resp-1'] button.unassign")
    page.wait_for_selector("#incident-panel tr[data-device-id='bt-resp-1']", state="detached", timeout=15_000)
    page.click("#incident-panel button.pick")
    _click_at(page, *_at(50, -80))
    page.click("#incident-panel button.assign-picked:has-text('Assign 1 selected')")
    page.wait_for_selector("#incident-panel tr[data-device-id='bt-resp-1']", timeout=15_000)

    page.fill("#incident-panel form.assign-armed input[name=within_km]", "2")
    page.click("#incident-panel form.assign-armed button[type=submit]")
    for device in ("bt-afo-1", "bt-afo-2", "bt-afo-3"):
        page.wait_for_selector(f"#incident-panel tr[data-device-id='{device}']", timeout=15_000)
    rows = page.locator("#incident-panel tbody tr")
    assert rows.count() == 4  # the response unit selected on the map, and three armed ones
    # NOT RECORDING on the map's markers of the two assigned firearms units not recording.
    wait_for(lambda: sorted(page.evaluate("window.__watchfloor.map.alarmsDrawn")) == ["bt-afo-1", "bt-afo-3"],
             timeout=20, what="NOT RECORDING drawn on the markers")
    row = page.locator("#incident-panel tr[data-device-id='bt-afo-3']").inner_text()
    assert re.search(r"\b1\.[45] km NW\b", row) and "51.5" not in row, row  # from the corners' mean
    assert "NOT RECORDING" in row
    panel = page.locator("#incident-panel .incident-units")
    assert panel.evaluate("e => e.scrollWidth <= e.clientWidth"), "the incident table scrolls sideways"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-incident-command.png"))

    page.click("#incident-panel details.close-incident summary")
    page.select_option("#incident-panel form.close-form select[name=outcome]", "arrest")
    page.click("#incident-panel form.close-form button[type=submit]")
    page.wait_for_selector("#incident-panel .incident-summary:has-text('closed: Arrest')", timeout=15_000)
    assert stack.db.scalar("SELECT outcome FROM incidents WHERE reference = 'CAD 77/BT'") == "arrest"

    page.click("#incident-panel details.closed-box summary")
    page.fill("#incident-panel form.closed-search input[name=reference]", "77/bt")
    page.click("#incident-panel form.closed-search button[type=submit]")
    found = page.locator("#incident-panel .closed-list li.closed-item")
    found.first.wait_for(timeout=15_000)
    assert found.count() == 1 and "Armed man, Parliament Sq" in found.first.inner_text()
    assert "Arrest" in found.first.inner_text()




def test_an_auditor_finds_incidents_open_and_closed_and_exports_one(stack: Stack, browser_page: Any) -> None:
    """An auditor (who has no map) opens the Incidents view: the open incident is listed, a
    closed one is found by its reference, and "Export" on each downloads its disclosure
    archive (a zip whose manifest names its files), each export on the audit log."""
    with client(stack.base, "afo-cmd") as afo:
        made = [afo.post("/api/v1/incidents", json={"title": title, "lat": LAT, "lon": LON, "radius_m": 500,
                                                    "borough": "Westminster", "reference": reference}).json()["id"]
                for title, reference in (("still going", "CAD 1/open"), ("over", "CAD 2/done"))]
        assert afo.post(f"/api/v1/incidents/{made[1]}/close", json={"outcome": "no_trace"}).status_code == 200
    page = browser_page
    sign_in(page, stack.base, "audit")
    page.click("#tabs button[data-view=incidents]")
    open_row = page.locator(f"#view-incidents tbody.open-incidents tr[data-incident-id='{made[0]}']")
    open_row.wait_for(timeout=15_000)
    page.fill("#view-incidents input[name=reference]", "2/DONE")
    page.click("#view-incidents form button[type=submit]")
    closed_rows = page.locator("#view-incidents tbody.closed-incidents tr")
    wait_for(lambda: closed_rows.count() == 1 and closed_rows.first.get_attribute("data-incident-id") == str(made[1]),
             what="the closed incident found by its reference")
    assert "No trace" in closed_rows.first.inner_text()
    page.screenshot(path=str(ARTIFACTS / "dashboard-incident-record.png"))
    for row, incident_id in ((closed_rows.first, made[1]), (open_row, made[0])):
        with page.expect_download() as download_info:
            row.locator("button.export").click()
        archive = zipfile.ZipFile(download_info.value.path())
        assert download_info.value.suggested_filename.startswith(f"incident-{incident_id}-")
        manifest = orjson.loads(archive.read("manifest.json"))
        assert set(manifest["files"]) == set(archive.namelist()) - {"manifest.json"}
        page.wait_for_selector(f".incident-export-status:has-text('Exported #{incident_id}')")
    exports = stack.db.scalar("SELECT count(*) FROM audit_log WHERE action = 'export' AND actor = 'audit'"
                              " AND details ? 'sha256'")
    assert exports == 2


def _outline_box(name: str) -> tuple[float, float, float, float]:
    """A borough's (south, west, north, east) from the outlines the dashboard is served."""
    geo = orjson.loads(resources.files("simulator").joinpath("london-boroughs.geojson").read_bytes())
    [feature] = [f for f in geo["features"] if f["properties"]["name"] == name]
    rings = feature["geometry"]["coordinates"]
    points = [p for polygon in (rings if feature["geometry"]["type"] == "MultiPolygon" else [rings])
              for ring in polygon for p in ring]
    return (min(p[1] for p in points), min(p[0] for p in points), max(p[1] for p in points),
            max(p[0] for p in points))


def test_a_new_incident_is_centred_on_a_place_searched_by_name(stack: Stack, browser_page: Any) -> None:
    """"at a callsign or borough" takes part of a borough's name, offline: a name that starts
    with the text wins over one that only contains it ("ham": Hammersmith and Fulham, not
    Newham); the incident is created at that borough's centre, in that borough."""
    page = browser_page
    sign_in(page, stack.base, "afo-cmd")
    page.wait_for_selector("#incident-panel:not(.hidden)")
    form = "#incident-panel form.new-incident"
    page.wait_for_selector(f"{form} select[name=borough] option[value='Westminster']", state="attached")
    page.click("#incident-panel details.new-incident-box summary")
    page.fill(f"{form} input[name=title]", "Found by name")
    page.fill(f"{form} input[name=reference]", "CAD 9/PLACE")
    for typed, where in (("ham", "Hammersmith and Fulham"), ("WESTMIN", "Westminster")):
        page.fill(f"{form} input[name=at_unit]", typed)
        page.dispatch_event(f"{form} input[name=at_unit]", "change")
        page.wait_for_selector(f"#incident-panel .where-info:has-text('Centre: {where} (the borough')")
        page.select_option(f"{form} select[name=borough]", "")  # as a user who gave none
    page.dispatch_event(f"{form} input[name=at_unit]", "change")  # Westminster again, borough filled
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector("#incident-panel .incident-summary:has-text('CAD 9/PLACE')", timeout=15_000)
    with stack.db.connect() as conn:
        row = conn.execute("SELECT lat, lon, borough FROM incidents WHERE reference = 'CAD 9/PLACE'").fetchone()
    assert row is not None
    south, west, north, east = _outline_box("Westminster")
    assert south < row[0] < north and west < row[1] < east and row[2] == "Westminster"
