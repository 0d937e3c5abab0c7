"""Replay in a real browser (Debian's Chromium, headless, driven by playwright) against real
parts: Mosquitto, ingest, PostgreSQL and the API. A firearms commander finds a closed
incident, replays it: moving the time slider moves the units on the map, clicking a timeline
entry jumps to its moment, and playing at 60x advances the clock; a box and window replays too."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from core.contract import Channel, topic_for
from services.registry import DeviceRecord, upsert_devices
from tests.helpers.api import add_test_users, client, running_api
from tests.helpers.db import Database
from tests.helpers.telemetry import event_payload, make_settings, publish_all, running_worker, telemetry_payload
from tests.helpers.waiting import wait_for
from tests.test_dashboard import ARTIFACTS, browser_page, sign_in
from watchfloor.mosquitto import MosquittoProcess

__all__ = ["browser_page"]  # the fixture, shared with test_dashboard.py

LAT, LON = 51.5, -0.13
# Recent enough to fall in an incident opened now (its replay starts 10 minutes before):
# six minutes before each test starts (_recent_t0), not before the module was imported, which
# in a whole suite is longer ago than that.
T0 = datetime.now(timezone.utc)


@pytest.fixture(autouse=True)
def _recent_t0() -> None:
    global T0
    T0 = (datetime.now(timezone.utc) - timedelta(minutes=6)).replace(microsecond=0)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass
class Stack:
    base: str
    incident_id: int


@pytest.fixture
def stack(pg: Database, mosquitto: MosquittoProcess) -> Iterator[Stack]:
    """rp-1 drives north for 4 minutes, fixes every 10 s, and starts recording at 60 s; rp-2
    stands still. A closed incident around them."""
    with pg.connect() as conn:
        add_test_users(conn)
        upsert_devices(conn, [DeviceRecord("rp-1", "WERP1", "PC Rae", "Westminster", "response"),
                              DeviceRecord("rp-2", "WERP2", "PC Roy", "Westminster", "response")])
    settings = make_settings()
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as worker, \
            running_api(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as api:
        messages = [(topic_for("rp-1", Channel.TELEMETRY),
                     telemetry_payload(1 + i, ts=_at(s), lat=LAT + s / 100_000, lon=LON,
                                       recording="recording" if s >= 60 else "buffering"))
                    for i, s in enumerate(range(0, 240, 10))]
        messages += [(topic_for("rp-2", Channel.TELEMETRY),
                      telemetry_payload(1 + i, ts=_at(s), lat=LAT, lon=LON + 0.002))
                     for i, s in enumerate(range(0, 240, 30))]
        messages.append((topic_for("rp-1", Channel.EVENTS), event_payload(100, "recording_started", ts=_at(60))))
        publish_all(mosquitto.url, messages, client_id="replay-test-publisher")
        wait_for(lambda: worker.stats.received >= len(messages), what="ingest")
        with client(api.base, "afo-cmd") as afo:
            made = afo.post("/api/v1/incidents", json={"title": "Replay me", "lat": LAT, "lon": LON, "radius_m": 400,
                                                       "borough": "Westminster", "reference": "CAD RP/1"})
            assert made.status_code == 201, made.text
            incident_id = int(made.json()["id"])
            closed = afo.post(f"/api/v1/incidents/{incident_id}/close", json={"outcome": "resolved"})
            assert closed.status_code == 200
        yield Stack(api.base, incident_id)


def _ms(page: Any, at: datetime) -> float:
    """``at`` as milliseconds into the replay's window."""
    start: float = page.evaluate("Date.parse(window.__watchfloor.replay.plan.start)")
    return at.timestamp() * 1000 - start


def _rp1(page: Any) -> dict[str, Any] | None:
    found: dict[str, Any] | None = page.evaluate(
        "(window.__watchfloor.map.replay || []).find((u) => u.device_id === 'rp-1') || null")
    return found


def _slide(page: Any, ms: float) -> None:
    page.evaluate("""(ms) => {
        const s = document.querySelector('#replay-panel input[name=replay-time]');
        s.value = String(ms);
        s.dispatchEvent(new Event('input'));
    }""", ms)


def test_replay_a_closed_incident_slider_moves_units_and_the_timeline_jumps(stack: Stack,
                                                                           browser_page: Any) -> None:
    """Find the closed incident, replay it: the slider at 30 s and at 200 s shows rp-1 further
    north the later it is (labelled with its callsign: nobody is on record as carrying it then); the timeline's
    "recording started" entry jumps to 60 s, where rp-1 is drawn recording; Play at 60x moves
    the clock on."""
    page = browser_page
    sign_in(page, stack.base, "afo-cmd")
    page.wait_for_selector("#incident-panel:not(.hidden)")
    page.click("#incident-panel details.closed-box summary")
    page.fill("#incident-panel form.closed-search input[name=reference]", "rp/1")
    page.click("#incident-panel form.closed-search button[type=submit]")
    page.click(f"#incident-panel .closed-list li[data-incident-id='{stack.incident_id}'] button", timeout=15_000)
    page.wait_for_selector("#incident-panel .incident-summary:has-text('closed')", timeout=15_000)
    page.click("#incident-panel button.replay")
    page.wait_for_selector("#replay-panel:not(.hidden) .replay-status:has-text('2 units')", timeout=20_000)
    # Every fix of the window is loaded once the last of rp-1's is in a slice.
    last_fix = _ms(page, _at(230))
    wait_for(lambda: page.evaluate(f"window.__watchfloor.replay.frames.some((f) => f.some((p) => p[1] >= {last_fix}))"),
             timeout=30, what="the frames of the window loaded")

    _slide(page, _ms(page, _at(30)))
    early = _rp1(page)
    _slide(page, _ms(page, _at(200)))
    late = _rp1(page)
    assert early is not None and late is not None
    assert late["lat"] > early["lat"] + 0.001, (early, late)
    assert late["label"] == "WERP1"  # PC Rae was named at registration, after these fixes

    entry = page.locator("#replay-panel .replay-timeline li.kind-event button:has-text('recording started')")
    entry.click()
    at = page.evaluate("window.__watchfloor.replay.at")
    assert abs(at - _ms(page, _at(60))) < 1  # the entry's own moment
    jumped = _rp1(page)
    assert jumped is not None and jumped["recording"] == "recording"
    assert abs(jumped["lat"] - (LAT + 60 / 100_000)) < 1e-6
    wait_for(lambda: "rp-1" in page.evaluate("window.__watchfloor.map.replayDrawn"), timeout=15,
             what="rp-1 drawn on the map, centred")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-replay.png"))

    page.click("#replay-panel button.speed[data-speed='60']")
    page.click("#replay-panel button.replay-play")
    wait_for(lambda: page.evaluate("window.__watchfloor.replay.at") > at + 5000, timeout=30, what="playing at 60x")
    page.click("#replay-panel button.replay-play")  # pause
    assert page.evaluate("window.__watchfloor.replay.timer") is None

    # Any box and window (its first page asked for beside the plan): the same units, drawn.
    page.evaluate("([bbox, start, end]) => window.__watchfloor.replay.openArea({ bbox, start, end })",
                  [[LAT - 0.01, LON - 0.01, LAT + 0.01, LON + 0.01], _at(-30).isoformat(), _at(270).isoformat()])
    page.wait_for_selector("#replay-panel .replay-status:has-text('2 units')", timeout=20_000)
    wait_for(lambda: page.evaluate("window.__watchfloor.replay.firstFrameAt") is not None, timeout=20,
             what="the area's first frame drawn")
    _slide(page, 60_000)  # 30 s into the data
    assert _rp1(page) is not None and page.locator("#replay-panel h2").inner_text() == "Replay: the box"
    with httpx.Client(base_url=stack.base) as anonymous:  # the plan is not public
        assert anonymous.get(f"/api/v1/incidents/{stack.incident_id}/replay").status_code == 401
