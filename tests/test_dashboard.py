"""The control-room page in a real browser (Debian's Chromium, headless, driven by Python
playwright; never a downloaded browser) against real parts: Mosquitto from the shipped
configuration, ingest, PostgreSQL, the API, and the fleet simulator publishing into them.
Screenshots of each view are saved under test-artifacts/ (gitignored).

Also, over plain HTTP: the page's assets, its configuration, and the CSV export."""

from __future__ import annotations

import csv
import http.server
import io
import re
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from api.app import WS_DEFLATE, WS_IMPL, create_app
from core.contract import ALERTS_TOPIC, Channel, topic_for
from core.settings import Settings
from services.accounts import Principal, Role, TokenIssuer, add_user
from services.registry import DeviceRecord, upsert_devices
from simulator.run import Simulator
from telemetry.embedded import free_port
from telemetry.ingest import IngestWorker
from tests.helpers.api import PASSWORD, SECRET, add_test_users, client, running_api
from tests.helpers.db import Database
from tests.helpers.environment import require_executable, require_module
from tests.helpers.telemetry import event_payload, make_settings, publish_all, running_worker, telemetry_payload
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FLEET = 40
SOS = DeviceRecord("sos-1", "WESOS1", "PC Sos", "Westminster", "response")


@dataclass
class Stack:
    base: str
    port: int
    db: Database
    mqtt_url: str
    settings: Settings
    sim: Simulator
    worker: IngestWorker
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None

    def start_api(self) -> None:
        app = create_app(settings=self.settings, database_url=self.db.url, mqtt_url=self.mqtt_url,
                         signing_secret=SECRET, audit_key=None)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on", ws=WS_IMPL, ws_per_message_deflate=WS_DEFLATE))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server is not None and self.server.started, what="API start")

    def stop_api(self) -> None:
        assert self.server is not None and self.thread is not None
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive(), "API did not stop"

    def publish(self, messages: list[tuple[str, bytes]]) -> None:
        before = self.worker.stats.received
        publish_all(self.mqtt_url, messages, client_id="dashboard-test-publisher")
        wait_for(lambda: self.worker.stats.received >= before + len(messages), what="ingest")


@pytest.fixture
def stack(pg: Database, mosquitto: MosquittoProcess) -> Iterator[Stack]:
    """Mosquitto, ingest, the API on a fixed port (so it can be restarted there), and a
    simulated fleet of FLEET cameras registered in the database, publishing every second."""
    sim = Simulator(mqtt_url=mosquitto.url, devices=FLEET, interval_s=1.0, seed=11,
                    client_prefix=f"dash-sim-{free_port()}")
    with pg.connect() as conn:
        add_test_users(conn)
        add_user(conn, username="fleet-west", password=PASSWORD, role=Role.FLEET_MANAGER, areas=["Westminster"])
        upsert_devices(conn, [DeviceRecord(u.device_id, u.callsign, u.officer, u.borough.name, u.role)
                              for u in sim.units] + [SOS])
    settings = make_settings(live_rate_hz=4.0, alert_geofence_dwell_s=0)  # geofence dwell: test_alerts.py
    sim_thread = threading.Thread(target=sim.run, kwargs={"duration_s": 600}, daemon=True)
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as worker:
        port = free_port()
        stack = Stack(f"http://127.0.0.1:{port}", port, pg, mosquitto.url, settings, sim, worker)
        stack.start_api()
        sim_thread.start()
        stack.publish([(topic_for(SOS.device_id, Channel.TELEMETRY), telemetry_payload(1, lat=51.4995, lon=-0.1248))])
        try:
            yield stack
        finally:
            sim.stop()
            sim_thread.join(30)
            if stack.server is not None and not stack.server.should_exit:
                stack.stop_api()


@pytest.fixture
def browser_page(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A page in a fresh headless Chromium profile; the test fails if the page logs an error
    (an exception, or a violation of the page's Content-Security-Policy)."""
    require_executable(str(CHROMIUM), what="Chromium")
    sync_playwright = require_module("playwright.sync_api").sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="wf-chromium-") as profile:
        context = p.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                                       viewport={"width": 1600, "height": 900}, accept_downloads=True)
        page = context.new_page()

        page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" and not _expected(m.text) else None)
        try:
            yield page
        finally:
            # The page as the test left it: the first thing to look at when one fails.
            page.screenshot(path=str(ARTIFACTS / f"last-{request.node.name}.png"))
            context.close()
    assert not errors, errors


def _expected(text: str) -> bool:
    # A failed sign-in (401), a dropped websocket while the API restarts, and GET /api/v1/audit
    # on a server without it (404, shown as a message on the page) are part of the tests.
    return any(s in text for s in ("status of 401", "status of 404", "WebSocket connection", "ERR_CONNECTION_REFUSED"))


def sign_in(page: Any, base: str, username: str, password: str = PASSWORD) -> None:
    page.goto(base + "/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#app:not(.hidden)", timeout=15_000)


def visible_units(page: Any) -> int:
    value = page.get_attribute("#unit-count", "data-visible")
    return int(value) if value else -1


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"))


def wait_visible(page: Any, condition: Any, what: str) -> int:
    return int(wait_for(lambda: (n := visible_units(page)) >= 0 and condition(n) and n, timeout=20, what=what) or 0)


# ---- the browser


def test_sign_in_markers_filter_and_unit_panel(stack: Stack, browser_page: Any) -> None:
    """A wrong password is refused on the page; after signing in, every unit of the simulated
    fleet is drawn; the role and search filters narrow them to the right units; clicking a
    unit's marker opens its panel with its battery and track; the token never shows in a URL."""
    page = browser_page
    page.goto(stack.base + "/")
    page.fill("input[name=username]", "op-all")
    page.fill("input[name=password]", "not the password")
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#signin-error:has-text('Wrong user name or password')")
    shot(page, "sign-in")

    sign_in(page, stack.base, "op-all")
    page.wait_for_selector("#conn-state[data-state=live]", timeout=15_000)
    everyone = FLEET + 1
    wait_visible(page, lambda n: n == everyone, "every unit drawn")
    wait_for(lambda: int(page.get_attribute("#unit-count", "data-drawn") or 0) == everyone, what="markers on the map")
    assert "token" not in page.url and "eyJ" not in page.url
    shot(page, "map")

    firearms = sum(1 for u in stack.sim.units if u.role == "firearms")
    assert 0 < firearms < FLEET
    page.select_option("#filter-role", "firearms")
    wait_visible(page, lambda n: n == firearms, "firearms units only")
    shot(page, "map-firearms")
    page.click("#filter-clear")
    wait_visible(page, lambda n: n == everyone, "filters cleared")

    target = stack.sim.units[3]
    page.fill("#filter-search", target.callsign.lower())
    wait_visible(page, lambda n: n == 1, "one unit found by callsign")
    page.wait_for_selector(f"#search-results button:has-text('{target.callsign}')")

    # Click the unit's marker where the map drew it (zoomed in, so it is drawn on its own).
    page.evaluate("(id) => { const m = window.__watchfloor.map; const u = m.store.units.get(id);"
                  " m.centreOn(u.lat, u.lon, 15); }", target.device_id)
    box = page.locator("#map canvas").bounding_box()
    panel = page.locator("#unit-panel")

    def click_the_marker() -> bool:
        # Until the unit layer is redrawn for the new view, a click there finds no marker.
        point = page.evaluate("(id) => { const m = window.__watchfloor.map; const u = m.store.units.get(id);"
                              " return m.toScreen(u.mx, u.my); }", target.device_id)
        assert isinstance(point, list)
        page.mouse.click(box["x"] + point[0], box["y"] + point[1])
        return bool(panel.is_visible())

    wait_for(click_the_marker, timeout=15, interval=0.3, what="the unit's marker to open its panel")
    assert panel.get_attribute("data-device-id") == target.device_id
    page.wait_for_selector(f"#unit-panel .unit-title:has-text('{target.callsign}')")
    page.wait_for_selector("#unit-panel dd:has-text('%')")  # battery
    page.wait_for_selector("#unit-panel .track-info:has-text(' fix')", timeout=15_000)
    shot(page, "unit-panel")
    page.fill("#filter-search", "")
    font_px = "() => parseFloat(getComputedStyle(document.querySelector('#unit-panel .unit-title')).fontSize)"
    before = page.evaluate(font_px)
    page.click("#large-type")
    assert page.get_attribute("#large-type", "aria-pressed") == "true"
    after = page.evaluate(font_px)
    assert after > before, f"Large type left the text at {before}px (now {after}px)"
    shot(page, "map-large-type")


def test_live_alert_is_highlighted_then_acknowledged_and_resolved(stack: Stack, browser_page: Any) -> None:
    """An emergency raised by a hand-made MQTT event appears on the open page within seconds,
    highlighted (the alert, the top-bar count, the emergency banner); Acknowledge and Resolve
    (outcome and note) on the page change it in the database."""
    page = browser_page
    sign_in(page, stack.base, "op-all")
    page.wait_for_selector("#conn-state[data-state=live]", timeout=15_000)
    stack.publish([(topic_for(SOS.device_id, Channel.EVENTS), event_payload(2, "emergency", trigger="button"))])
    item = page.locator(".alert[data-kind=emergency]")
    item.wait_for(timeout=15_000)
    assert "new" in (item.get_attribute("class") or "")
    page.wait_for_selector("#emergency-banner:not(.hidden):has-text('WESOS1')")
    page.wait_for_selector("#alert-count.flash")
    assert item.locator(".officer").inner_text() == "PC Sos"  # who carried the camera as it was raised
    shot(page, "alert-new")

    item.locator("button.ack").click()
    page.wait_for_selector(".alert[data-kind=emergency].st-acknowledged")
    alert_id = int(item.get_attribute("data-alert-id") or 0)
    assert stack.db.scalar("SELECT acknowledged_by FROM alerts WHERE id = %s", (alert_id,)) == "op-all"
    assert "new" not in (item.get_attribute("class") or "")
    shot(page, "alert-acknowledged")

    item.locator("button.resolve").click()
    page.select_option("#resolve-dialog select", "false_alarm")
    page.fill("#resolve-dialog textarea", "pressed by mistake, checked by radio")
    page.click("#resolve-dialog button[value=ok]")
    page.wait_for_selector(".alert[data-kind=emergency]", state="detached")
    row = stack.db.scalar("SELECT status || '|' || outcome || '|' || note FROM alerts WHERE id = %s", (alert_id,))
    assert row == "resolved|false_alarm|pressed by mistake, checked by radio"
    page.wait_for_selector("#emergency-banner.hidden", state="attached")


def test_acknowledge_selected_and_the_escalated_look(stack: Stack, browser_page: Any) -> None:
    """Two open alerts ticked and "Acknowledge selected" clicked are acknowledged in one act
    (one audit entry, count 2), a third left unticked stays open; an escalated alert is
    drawn apart ("Escalated to supervisor")."""
    def alert(kind: str, severity: str, escalated: bool = False) -> int:
        return int(stack.db.scalar(
            "INSERT INTO alerts (device_id, kind, severity, detail, escalated_at, escalation_level)"
            " VALUES (%s, %s, %s, 'dashboard bulk', CASE WHEN %s THEN now() END, CASE WHEN %s THEN 1 ELSE 0 END)"
            " RETURNING id", (SOS.device_id, kind, severity, escalated, escalated)))

    ticked = [alert("watch_me", "high"), alert("battery_low", "warning")]
    escalated = alert("assigned_not_recording", "high", escalated=True)
    page = browser_page
    sign_in(page, stack.base, "op-all")
    for alert_id in ticked + [escalated]:
        page.wait_for_selector(f".alert[data-alert-id='{alert_id}']", timeout=15_000)
    page.wait_for_selector(f".alert.escalated[data-alert-id='{escalated}'] .escalation:has-text('Escalated')")
    assert page.locator("button.ack-selected").is_disabled()
    for alert_id in ticked:
        page.locator(f".alert[data-alert-id='{alert_id}'] input.select").check()
    page.wait_for_selector("button.ack-selected:has-text('(2)')")
    shot(page, "alert-escalated-and-selected")
    page.click("button.ack-selected")
    for alert_id in ticked:
        page.wait_for_selector(f".alert[data-alert-id='{alert_id}'].st-acknowledged")
    statuses = [stack.db.scalar("SELECT status FROM alerts WHERE id = %s", (i,)) for i in ticked + [escalated]]
    assert statuses == ["acknowledged", "acknowledged", "open"]
    entry = stack.db.scalar("SELECT details FROM audit_log WHERE action = 'alerts_acknowledged'")
    assert (entry["count"], sorted(entry["alert_ids"])) == (2, sorted(ticked))


def test_new_high_alerts_sound_unless_the_user_muted_which_stays_on_screen(stack: Stack, browser_page: Any) -> None:
    """A live emergency sounds a tone (counted on the sound button); muted, a later high alert
    arrives (the sentinel) without one, the panel says "Sound MUTED" all the while, and the
    mute is this user's: it survives a reload."""
    page = browser_page
    sign_in(page, stack.base, "op-all")
    page.wait_for_selector("#conn-state[data-state=live]", timeout=15_000)
    button = page.locator("#alerts-panel button.sound")
    assert button.inner_text() == "Sound on"
    stack.publish([(topic_for(SOS.device_id, Channel.EVENTS), event_payload(2, "emergency"))])
    page.wait_for_selector("#alerts-panel button.sound[data-sounds='1']", timeout=15_000)
    button.click()
    page.wait_for_selector("#alerts-panel.sound-muted button.sound.muted:has-text('Sound MUTED')")
    stack.publish([(topic_for(SOS.device_id, Channel.EVENTS), event_payload(3, "watch_me"))])
    page.wait_for_selector(".alert[data-kind=watch_me]", timeout=15_000)
    assert button.get_attribute("data-sounds") == "1"
    shot(page, "alert-sound-muted")
    page.reload()
    page.wait_for_selector("#alerts-panel button.sound.muted:has-text('Sound MUTED')", timeout=15_000)


def test_api_restart_shows_disconnected_then_reconnects(stack: Stack, browser_page: Any) -> None:
    """When the API stops, the page says it is disconnected and reconnecting; when the API is
    back on the same address, it reconnects by itself and takes a fresh snapshot."""
    page = browser_page
    sign_in(page, stack.base, "op-all")
    page.wait_for_selector("#conn-state[data-state=live]", timeout=15_000)
    wait_visible(page, lambda n: n == FLEET + 1, "every unit drawn")
    stack.stop_api()
    page.wait_for_selector("#conn-banner:not(.hidden):has-text('Disconnected — reconnecting')", timeout=15_000)
    shot(page, "disconnected")
    stack.start_api()
    page.wait_for_selector("#conn-state[data-state=live]", timeout=30_000)
    assert page.is_hidden("#conn-banner")
    assert page.evaluate("window.__watchfloor.perf.snapshots") >= 2
    wait_visible(page, lambda n: n == FLEET + 1, "every unit drawn again")
    shot(page, "reconnected")


def test_fleet_manager_sees_health_and_exports_csv(stack: Stack, browser_page: Any) -> None:
    """A fleet manager gets the fleet-health view (no map): counts, the battery chart, the
    per-borough table; Download CSV gives a server-made file of every device in their area,
    recorded in the audit log."""
    page = browser_page
    sign_in(page, stack.base, "fleet")
    page.wait_for_selector("#view-fleet:not(.hidden)")
    assert page.is_hidden("#view-map")
    page.wait_for_selector("#view-fleet .card:has-text('Devices') .value:text-is('41')", timeout=15_000)
    wait_for(lambda: page.locator("table.boroughs tbody tr").count() >= 10, what="borough rows")
    assert "Battery level" in (page.get_attribute("canvas.battery-chart", "aria-label") or "")
    # Drawn, not only placed: the chart's canvas has painted pixels.
    wait_for(lambda: page.evaluate("""() => { const c = document.querySelector('canvas.battery-chart');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let painted = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) painted += 1;
        return painted; }""") > 100, what="the battery chart drawn")
    shot(page, "fleet-health")
    with page.expect_download() as download_info:
        page.click("button.export")
    path = download_info.value.path()
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text())))
    assert len(rows) == FLEET + 1 and "lat" not in rows[0] and "officer" not in rows[0]
    page.wait_for_selector(".export-status:has-text('Exported 41 devices')")
    assert stack.db.scalar("SELECT count(*) FROM audit_log WHERE action = 'export' AND actor = 'fleet'") == 1


def _system_alert(stack: Stack, job_id: int) -> dict[str, Any]:
    """A storage job's system alert as the maintenance check raises it (telemetry/system_alerts.py)."""
    with stack.db.connect() as conn:
        row = conn.execute(
            "INSERT INTO alerts (subject, kind, severity, detail) VALUES (%s, 'storage_job_failing', 'warning', %s)"
            " RETURNING id, device_id, subject, kind, severity, status, detail, raised_at",
            (f"storage_job:{job_id}", f"storage job {job_id} (policy_retention on telemetry) is not looked after"),
        ).fetchone()
    assert row is not None
    return dict(zip(("id", "device_id", "subject", "kind", "severity", "status", "detail", "raised_at"), row))


def test_fleet_managers_and_admins_see_system_alerts_in_fleet_health(stack: Stack, browser_page: Any) -> None:
    """A failing storage job's alert (no unit) shows at the top of fleet health for a fleet
    manager of one borough, a new one as it arrives on the live feed, and for an admin."""
    page = browser_page
    _system_alert(stack, 1001)
    sign_in(page, stack.base, "fleet-west")
    page.wait_for_selector("#view-fleet .system-alert:has-text('storage job 1001')")
    second = _system_alert(stack, 1002)
    publish_all(stack.mqtt_url, [(ALERTS_TOPIC, orjson.dumps(second))], client_id="dashboard-test-publisher")
    page.wait_for_selector("#view-fleet .system-alert:has-text('storage job 1002')")
    assert "Storage job failing" in page.inner_text("#view-fleet .system-alerts-panel")
    shot(page, "system-alerts")
    page.click("#sign-out")
    page.wait_for_selector("#signin:not(.hidden)")
    sign_in(page, stack.base, "admin")
    page.click("#tabs button[data-view=fleet]")
    page.wait_for_selector("#view-fleet .system-alert:has-text('storage job 1002')")
    assert page.locator("#view-fleet .system-alert").count() == 2


def test_firearms_commander_sees_an_assigned_unit_not_recording(stack: Stack, browser_page: Any) -> None:
    """A firearms commander's incident panel lists the assigned units with position, battery
    and recording state, and marks an assigned firearms unit that is not recording; one that
    has never reported is "no report since assignment", not marked as not recording."""
    afo = next(u for u in stack.sim.units if u.role == "firearms")
    stack.sim.stop()  # the unit's recording state must hold still for the check
    with stack.db.connect() as conn:
        upsert_devices(conn, [DeviceRecord("nr-afo", "WENR1", None, "Westminster", "firearms")])
    with client(stack.base, "afo-cmd") as cmd:
        incident = cmd.post("/api/v1/incidents", json={"title": "Armed suspect", "lat": 51.5, "lon": -0.12,
                                                       "radius_m": 500, "borough": "Westminster"}).json()
        assigned = cmd.post(f"/api/v1/incidents/{incident['id']}/units", json={"device_ids": [afo.device_id, "nr-afo"]})
        assert assigned.is_success, assigned.text
    stack.publish([(topic_for(afo.device_id, Channel.TELEMETRY),
                    telemetry_payload(10_000, lat=51.5003, lon=-0.1199, recording="buffering"))])
    page = browser_page
    sign_in(page, stack.base, "afo-cmd")
    row = page.locator(f"#incident-panel tr[data-device-id='{afo.device_id}']")
    row.wait_for(timeout=15_000)
    page.wait_for_selector(f"#incident-panel tr.not-recording[data-device-id='{afo.device_id}'] .mark")
    page.wait_for_selector("#incident-panel .incident-summary.danger:has-text('NOT recording')")
    text = row.inner_text()
    assert "inside" in text
    assert afo.callsign in text and "%" in text, text  # the unit, its battery
    silent = page.locator("#incident-panel tr[data-device-id='nr-afo']")
    assert "no report since assignment" in silent.inner_text()
    assert "not-recording" not in (silent.get_attribute("class") or "")
    shot(page, "firearms-incident")


def test_a_retired_unit_leaves_the_live_map(stack: Stack, browser_page: Any) -> None:
    """An admin retires a unit; the API announces it and re-reads the registry, the live feed
    tells the open page to drop it, and the map shows one unit fewer without a reload."""
    page = browser_page
    sign_in(page, stack.base, "op-all")
    page.wait_for_selector("#conn-state[data-state=live]", timeout=15_000)
    wait_visible(page, lambda n: n == FLEET + 1, "every unit drawn")
    with client(stack.base, "admin") as admin:
        assert admin.post(f"/api/v1/devices/{SOS.device_id}/retire").status_code == 200
    wait_visible(page, lambda n: n == FLEET, "the retired unit gone from the map")
    assert page.evaluate("(id) => window.__watchfloor.map.store.units.has(id)", SOS.device_id) is False


def test_auditor_and_admin_get_their_views(stack: Stack, browser_page: Any) -> None:
    """An auditor gets the audit view (entries, or a plain message if the server has no audit
    endpoint); an admin gets the map from REST (admins are not on the live feed) and the registry,
    where an edited device is changed in place and a new id is registered."""
    page = browser_page
    sign_in(page, stack.base, "audit")
    page.wait_for_selector("#view-audit:not(.hidden)")
    page.wait_for_selector(".audit-status:not(:empty)")
    status = page.inner_text(".audit-status")
    assert re.search(r"\d+ entr|not available", status), status
    if "entr" in status:  # the audit API is there: the auditor's own sign-in is listed, and the chain holds
        page.wait_for_selector("table.audit td:text-is('sign_in')")
        page.click("button.verify")
        page.wait_for_selector(".audit-verify.ok:has-text('Chain intact')")
    shot(page, "audit")
    page.click("#sign-out")
    page.wait_for_selector("#signin:not(.hidden)")  # the API has revoked the token, the page reloaded
    sign_in(page, stack.base, "admin")
    page.wait_for_selector("#conn-state[data-state=polling]")
    wait_visible(page, lambda n: n == FLEET + 1, "the admin's map")
    page.click("#tabs button[data-view=registry]")
    page.wait_for_selector("table.registry tbody tr")
    assert page.locator("table.registry tbody tr").count() == FLEET + 1
    shot(page, "registry")
    # "Edit" then Save changes that device (PUT); a new id is registered (POST).
    edited = page.locator("table.registry tbody tr").first
    device_id = edited.locator("td").first.inner_text()
    edited.locator("button:text-is('Edit')").click()
    page.fill("form.device-form input[name=officer]", "PC Edited")
    page.click("form.device-form button[type=submit]")
    page.wait_for_selector(f".registry-status:has-text('Saved {device_id}.')")
    page.fill("form.device-form input[name=device_id]", "dash-new-1")
    page.fill("form.device-form input[name=borough]", "Camden")
    page.click("form.device-form button[type=submit]")
    page.wait_for_selector(".registry-status:has-text('Saved dash-new-1.')")
    with client(stack.base, "admin") as admin:
        assert admin.get(f"/api/v1/devices/{device_id}").json()["officer"] == "PC Edited"
        assert admin.get("/api/v1/devices/dash-new-1").json()["borough"] == "Camden"


def test_admin_sets_the_alert_policy(stack: Stack, browser_page: Any) -> None:
    """The admin's Alert policy view lists the rules in force; choosing another outcome saves
    it at once (the status line says so, the database and the audit log have it); a rule of a
    role's own is added from the form and removed with its button; "activity only" is not
    offered for a state (offline), which the API would refuse."""
    page = browser_page
    sign_in(page, stack.base, "admin")
    page.click("#tabs button[data-view=policy]")
    row = page.locator("table.policy tbody tr[data-kind=watch_me][data-role='*']")
    row.wait_for()
    row.locator("select[name=outcome]").select_option("warning")
    page.wait_for_selector(".policy-status:has-text('Saved: Watch me for any role is warning')")
    assert stack.db.scalar("SELECT outcome FROM alert_policy WHERE kind = 'watch_me' AND role = '*'") == "warning"
    shot(page, "alert-policy")

    assert page.input_value("form.policy-form select[name=outcome]") == "critical"  # the first, until chosen
    assert page.input_value("form.policy-form select[name=assigned_outcome]") == ""  # "the same"
    page.select_option("form.policy-form select[name=kind]", "geofence")
    page.select_option("form.policy-form select[name=role]", "traffic")
    page.select_option("form.policy-form select[name=outcome]", "off")
    page.click("form.policy-form button[type=submit]")
    page.wait_for_selector("table.policy tbody tr[data-kind=geofence][data-role=traffic]")
    # A state (offline) has no "activity only", in its rows or in the form.
    assert page.locator("tr[data-kind=offline][data-role='*'] select[name=outcome] option[value=activity]").count() == 0
    assert page.locator("form.policy-form select[name=outcome] option[value=activity]").count() == 1
    page.select_option("form.policy-form select[name=kind]", "offline")
    assert page.locator("form.policy-form select[name=outcome] option[value=activity]").count() == 0
    page.locator("table.policy tbody tr[data-kind=geofence][data-role=traffic] button:text-is('Remove')").click()
    page.wait_for_selector("table.policy tbody tr[data-kind=geofence][data-role=traffic]", state="detached")
    # An offline rule's timeout is set in its row, and kept when only its outcome changes.
    firearms = page.locator("table.policy tbody tr[data-kind=offline][data-role=firearms]")
    assert firearms.locator("input[name=after_s]").input_value() == "60"
    firearms.locator("input[name=after_s]").fill("90")
    firearms.locator("input[name=after_s]").dispatch_event("change")
    page.wait_for_selector(".policy-status:has-text('Saved: Offline for firearms is high, after 90 s')")
    firearms.locator("select[name=outcome]").select_option("critical")
    page.wait_for_selector(".policy-status:has-text('Saved: Offline for firearms is critical, after 90 s')")
    assert stack.db.scalar("SELECT after_s FROM alert_policy WHERE kind = 'offline' AND role = 'firearms'") == 90
    assert page.locator("tr[data-kind=battery_low][data-role='*'] input[name=after_s]").count() == 0
    changes = stack.db.scalar("SELECT count(*) FROM audit_log WHERE action = 'alert_policy_changed'"
                              " AND actor = 'admin' AND details->>'kind' <> 'offline'")
    assert changes == 3  # watch_me set, geofence for traffic set and removed
    last = stack.db.scalar("SELECT details->'after' FROM audit_log WHERE action = 'alert_policy_changed'"
                           " AND details->>'kind' = 'offline' ORDER BY seq DESC LIMIT 1")
    assert last == {"outcome": "critical", "assigned_outcome": None, "after_s": 90}


def test_sign_out_revocation_and_a_stale_token_return_to_sign_in(stack: Stack, browser_page: Any) -> None:
    """Sign-out ends the token at the API, not only in the browser; a feed whose token is
    revoked elsewhere, or signed with a secret the API no longer has, returns the page to
    the sign-in screen (it used to stay on "invalid token"); an admin disables a user from
    the Users view."""
    page = browser_page
    page.on("dialog", lambda dialog: dialog.accept())
    names = _operators(stack)
    sign_in(page, stack.base, names["out"])
    page.wait_for_selector("#conn-state[data-state=live]")
    bearer = page.evaluate("JSON.parse(sessionStorage.getItem('watchfloor.session')).access_token")
    page.click("#sign-out")
    page.wait_for_selector("#signin:not(.hidden)")
    assert _devices_status(stack.base, bearer) == 401

    sign_in(page, stack.base, names["revoked"])
    page.wait_for_selector("#conn-state[data-state=live]")
    bearer = page.evaluate("JSON.parse(sessionStorage.getItem('watchfloor.session')).access_token")
    assert httpx.post(f"{stack.base}/api/v1/auth/sign-out",
                      headers={"Authorization": f"Bearer {bearer}"}).status_code == 204
    page.wait_for_selector("#signin-error:has-text('token revoked')", timeout=15_000)

    sign_in(page, stack.base, names["rotated"])
    page.wait_for_selector("#conn-state[data-state=live]")
    forged = TokenIssuer("a-rotated-away-secret-" + "z" * 40, 3600).issue(
        Principal(names["rotated"], Role.OPERATOR, None, token_version=0))
    page.evaluate("""(token) => {
        const s = JSON.parse(sessionStorage.getItem('watchfloor.session'));
        sessionStorage.setItem('watchfloor.session', JSON.stringify({...s, access_token: token}));
    }""", forged)
    page.reload()
    page.wait_for_selector("#signin:not(.hidden)", timeout=15_000)

    sign_in(page, stack.base, "admin")
    page.click("#tabs button[data-view=users]")
    row = page.locator("table.users tbody tr", has_text=names["disabled"])
    row.locator("button:text-is('Disable')").click()
    page.wait_for_selector(f".users-status:has-text('Disabled {names['disabled']}.')")
    shot(page, "users")
    assert stack.db.scalar("SELECT disabled_at IS NOT NULL FROM users WHERE username = %s", (names["disabled"],))


def _operators(stack: Stack) -> dict[str, str]:
    """Operators of this test's own, one per step."""
    names = {step: f"dash-{step}" for step in ("out", "revoked", "rotated", "disabled")}
    with stack.db.connect() as conn:
        for name in names.values():
            add_user(conn, username=name, password=PASSWORD, role=Role.OPERATOR, areas=["*"])
    return names


def _devices_status(base: str, bearer: str) -> int:
    return httpx.get(f"{base}/api/v1/devices", headers={"Authorization": f"Bearer {bearer}"}).status_code


def test_api_reference_page_renders_offline(stack: Stack, browser_page: Any) -> None:
    """/docs in Chromium with no internet: Swagger UI comes from the API itself, lists the
    endpoints, and breaks no rule of its page's CSP (the fixture fails on any violation)."""
    page = browser_page
    page.goto(stack.base + "/docs")
    page.wait_for_selector(".opblock", timeout=20_000)
    assert page.locator(".opblock").count() >= 20
    assert page.locator('[data-path="/api/v1/devices/{device_id}/track"]').count() >= 1
    shot(page, "api-docs")


# ---- plain HTTP: assets, configuration, export


def test_page_assets_config_and_no_inline_code(stack: Stack) -> None:
    """/ serves the page and its assets (never the package's Python files); the page has no
    inline script or style and no eval, so a strict CSP holds; the configuration names the
    offline base layer and its licence."""
    index = httpx.get(stack.base + "/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    html = index.text
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html)
    assert policy and "script-src 'self';" in policy.group(1) and "style-src 'self';" in policy.group(1)
    assert "unsafe" not in policy.group(1)
    for path in re.findall(r'(?:src|href)="(/[^"]+)"', html):
        assert httpx.get(stack.base + path).status_code == 200, path
    static = Path(__file__).resolve().parent.parent / "dashboard"
    for script in (static / "js").glob("*.js"):
        text = script.read_text()
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
        unsafe = r"\beval\(|new Function\(|\.innerHTML\s*=|\.outerHTML\s*=|insertAdjacentHTML"
        assert not re.search(unsafe, code), script.name
        assert not re.search(r"setAttribute\(\s*.style", code) and "cssText" not in code, script.name
        assert httpx.get(f"{stack.base}/js/{script.name}").status_code == 200
    assert httpx.get(stack.base + "/js/../__init__.py").status_code == 404
    assert httpx.get(stack.base + "/dashboard/__init__.py").status_code == 404
    config = httpx.get(stack.base + "/dashboard/config.json").json()
    assert config["tiles"] is None and "Open Government Licence" in config["boroughs_attribution"]
    outlines = httpx.get(stack.base + config["boroughs_url"]).json()
    assert len(outlines["features"]) == 33
    tube = httpx.get(stack.base + config["tube_url"]).json()
    assert tube["features"] and "OpenStreetMap" in config["tube_attribution"]


def test_map_tiles_setting_reaches_the_page(pg: Database, mosquitto: MosquittoProcess) -> None:
    """WATCHFLOOR_MAP_TILES_URL (a force's own tile server) is handed to the page, and the
    page's Content-Security-Policy lets its images in."""
    settings = make_settings(map_tiles_url="https://tiles.force.example/{z}/{x}/{y}.png",
                             map_tiles_attribution="© Example Force")
    with running_api(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as server:
        config = httpx.get(server.base + "/dashboard/config.json").json()
        policy = httpx.get(server.base + "/").headers.get("content-security-policy", "")
    assert config["tiles"] == {"url": "https://tiles.force.example/{z}/{x}/{y}.png", "attribution": "© Example Force"}
    assert "https://tiles.force.example" in policy


def test_fleet_export_is_for_fleet_managers_and_admins_area_filtered_bounded_and_audited(stack: Stack) -> None:
    """The CSV export: refused to operators and auditors; a fleet manager gets their area only,
    without positions or names; the row count is bounded; every export is in the audit log."""
    with client(stack.base, "op-all") as op, client(stack.base, "audit") as audit:
        assert op.get("/api/v1/fleet/export.csv").status_code == 403
        assert audit.get("/api/v1/fleet/export.csv").status_code == 403
    assert httpx.get(stack.base + "/api/v1/fleet/export.csv").status_code == 401
    with client(stack.base, "fleet") as fleet, client(stack.base, "fleet-west") as west, \
            client(stack.base, "admin") as admin:
        everything = fleet.get("/api/v1/fleet/export.csv")
        assert everything.status_code == 200 and everything.headers["content-type"].startswith("text/csv")
        assert "attachment" in everything.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(everything.text)))
        assert len(rows) == FLEET + 1 == int(everything.headers["x-total-count"])
        assert set(rows[0]) == {"device_id", "callsign", "borough", "role", "state", "online", "battery_pct",
                                "charging", "storage_pct", "docked", "firmware", "last_seen", "gps_fix"}
        west_csv = west.get("/api/v1/fleet/export.csv")
        assert west_csv.status_code == 200, west_csv.text
        westminster = list(csv.DictReader(io.StringIO(west_csv.text)))
        assert westminster and {r["borough"] for r in westminster} == {"Westminster"}
        assert len(westminster) == sum(1 for u in stack.sim.units if u.borough.name == "Westminster") + 1
        one = admin.get("/api/v1/fleet/export.csv", params={"limit": 1})
        assert one.status_code == 200, one.text
        assert len(list(csv.DictReader(io.StringIO(one.text)))) == 1 and one.headers["x-total-count"] == str(FLEET + 1)
        assert admin.get("/api/v1/fleet/export.csv", params={"limit": 50_001}).status_code == 422
        camden = admin.get("/api/v1/fleet/export.csv", params={"borough": "Camden"})
        assert camden.status_code == 200, camden.text
        assert all(r["borough"] == "Camden" for r in csv.DictReader(io.StringIO(camden.text)))
    entries = stack.db.scalar("SELECT string_agg(actor, ',' ORDER BY seq) FROM audit_log WHERE action = 'export'")
    assert entries == "fleet,fleet-west,admin,admin"
    details = stack.db.scalar("SELECT details::text FROM audit_log WHERE action = 'export' AND actor = 'fleet-west'")
    assert '"Westminster"' in str(details)


def test_export_cells_cannot_become_spreadsheet_formulas(stack: Stack) -> None:
    """What a camera reports (its firmware string) and what the registry holds (callsign,
    officer) is exported as text, never as a formula: a cell starting with = + - @, with TAB
    or CR (which spreadsheets strip before looking), or with such a character after leading
    whitespace is quoted with '. The attack comes in through MQTT and the real export."""
    with stack.db.connect() as conn:
        upsert_devices(conn, [DeviceRecord("evil-1", "=HYPERLINK(\"x\")", None, "Camden", "response"),
                              DeviceRecord("evil-2", "\t=1+1", "\r=cmd|' /C calc'!A0", "Camden", "response"),
                              DeviceRecord("evil-3", " \t@SUM(A1)", "\t-2+3", "Camden", "response")])
    firmware = {"evil-1": "\t=HYPERLINK(\"http://x\")", "evil-2": "\r=cmd|' /C calc'!A0", "evil-3": "  +1+1"}
    stack.publish([(topic_for(device, Channel.TELEMETRY), telemetry_payload(1, firmware=text))
                   for device, text in firmware.items()])
    wait_for(lambda: stack.db.scalar("SELECT count(*) FROM device_latest WHERE firmware IS NOT NULL"
                                     " AND device_id LIKE 'evil-%%'") == len(firmware), what="firmware stored")
    with client(stack.base, "fleet") as fleet:
        table = list(csv.reader(io.StringIO(fleet.get("/api/v1/fleet/export.csv").text)))
    header, body = table[0], table[1:]
    rows = {r[0]: dict(zip(header, r, strict=True)) for r in body}
    assert rows["evil-1"]["callsign"] == "'=HYPERLINK(\"x\")"
    assert {d: rows[d]["firmware"] for d in firmware} == {d: "'" + text for d, text in firmware.items()}
    assert rows["evil-2"]["callsign"] == "'\t=1+1" and rows["evil-3"]["callsign"] == "' \t@SUM(A1)"
    for cell in (c for row in body for c in row):
        numeric = cell.lstrip("-").replace(".", "", 1).isdigit()
        assert numeric or cell.startswith("'") or cell.lstrip(" \t\r\n")[:1] not in set("=+-@\t\r"), cell


def test_live_view_tile_asks_a_reason_waits_for_the_camera_and_plays(pg: Database, mosquitto: MosquittoProcess,
                                                                     browser_page: Any) -> None:
    """From a unit's panel, Live view asks for a reason, shows the request as pending until the
    simulated camera accepts (over MQTT), then plays the camera's stream (WHIP in, WHEP out)
    in a tile whose video clock advances; the tile says who else watches; closing it ends the
    viewing, recorded with the reason given, and closing it is recorded as viewer_stopped."""
    from tests.helpers.live_view import SIM_UNIT, WE1, simulated_camera
    from tests.helpers.live_view import stack as live_view_stack

    page = browser_page
    with live_view_stack(pg, mosquitto, live_view_idle_stop_s=60) as s, simulated_camera(s, decline_share=0.0):
        sign_in(page, s.base, "op-all")
        page.wait_for_selector("#conn-state[data-state=live]", timeout=15_000)
        page.fill("#filter-search", SIM_UNIT.callsign)
        page.click(f"#search-results button:has-text('{SIM_UNIT.callsign}')")
        page.wait_for_selector(f"#unit-panel[data-device-id='{WE1}']")
        page.click("#unit-panel .unit-actions button:has-text('Live view')")
        page.wait_for_selector("#reason-dialog[open]")
        shot(page, "live-view-reason")
        page.fill("#reason-dialog textarea", "officer called for support")
        page.click("#reason-dialog button[value=ok]")
        tile = page.locator(f"#video-tiles .tile[data-device-id='{WE1}']")
        tile.wait_for()
        wait_for(lambda: tile.get_attribute("data-status") in ("pending", "connecting", "playing"), what="request")
        page.wait_for_selector(f"#video-tiles .tile[data-device-id='{WE1}'][data-status=playing]", timeout=40_000)
        wait_for(lambda: page.evaluate("() => { const v = document.querySelector('#video-tiles video');"
                                       " return v.currentTime > 1 && v.videoWidth > 0; }"), timeout=20,
                 what="the video clock advancing")
        page.wait_for_selector("#video-tiles .tile-watchers:has-text('Nobody else is watching')")
        shot(page, "live-view-playing")
        sessions = s.rows("SELECT viewer, reason FROM viewing_sessions WHERE refused IS NULL")
        assert sessions == [("op-all", "officer called for support")]
        tile.locator("button.close").click()
        # Closing the tile is the viewer's stop: recorded as such, not as a lost connection (the
        # page sends its DELETE before it closes the peer connection).
        wait_for(lambda: s.rows("SELECT 1 FROM viewing_sessions WHERE refused IS NULL AND ended_at IS NOT NULL"),
                 what="the viewing to end")
        assert s.rows("SELECT end_reason FROM viewing_sessions WHERE refused IS NULL") == [("viewer_stopped",)]
        assert [(a[0], a[2]["reason"]) for a in s.audit("viewing_ended")] == [("op-all", "viewer_stopped")]


def _open_live_view(page: Any, callsign: str, device_id: str, reason: str) -> None:
    """From the unit's panel: Live view, with ``reason``; returns once the tile plays video."""
    page.wait_for_selector("#conn-state[data-state=live]", timeout=15_000)
    page.fill("#filter-search", callsign)
    page.click(f"#search-results button:has-text('{callsign}')")
    page.wait_for_selector(f"#unit-panel[data-device-id='{device_id}']")
    page.click("#unit-panel .unit-actions button:has-text('Live view')")
    page.wait_for_selector("#reason-dialog[open]")
    page.fill("#reason-dialog textarea", reason)
    page.click("#reason-dialog button[value=ok]")
    page.wait_for_selector(f"#video-tiles .tile[data-device-id='{device_id}'][data-status=playing]", timeout=40_000)
    wait_for(lambda: page.evaluate("() => { const v = document.querySelector('#video-tiles video');"
                                   " return v.currentTime > 1 && v.videoWidth > 0; }"), timeout=20,
             what="the video clock advancing")


def test_two_operators_watch_one_unit_and_its_camera_names_both(pg: Database, mosquitto: MosquittoProcess,
                                                                 browser_page: Any) -> None:
    """Two operators, each in a browser tab of their own, watch the same unit: op-all's request
    is accepted by the camera, op-west's (not covered by op-all's consent) is put to it and
    accepted too. The viewer list the simulated camera receives (live_view_status) names both,
    in the order they joined, and each tile says who else watches; when one closes their tile,
    the camera's list names the other only."""
    from tests.helpers.live_view import SIM_UNIT, WE1, simulated_camera
    from tests.helpers.live_view import stack as live_view_stack

    first = browser_page
    errors: list[str] = []
    with live_view_stack(pg, mosquitto, live_view_idle_stop_s=60) as s, \
            simulated_camera(s, decline_share=0.0) as camera:
        sign_in(first, s.base, "op-all")
        _open_live_view(first, SIM_UNIT.callsign, WE1, "officer called for support")
        wait_for(lambda: camera.units[0].watching == ("op-all",), timeout=30, what="the camera naming op-all")
        # A tab of its own (the token is kept per tab, in sessionStorage), opened only now: the
        # tab in front is the one a person (and playwright's clicks) works in.
        second = first.context.new_page()
        second.on("pageerror", lambda error: errors.append(f"page error: {error}"))
        sign_in(second, s.base, "op-west")
        _open_live_view(second, SIM_UNIT.callsign, WE1, "second pair of eyes")
        wait_for(lambda: camera.units[0].watching == ("op-all", "op-west"), timeout=30,
                 what="the camera naming both viewers")
        second.wait_for_selector("#video-tiles .tile-watchers:has-text('Also watching: op-all')", timeout=20_000)
        first.bring_to_front()
        first.wait_for_selector("#video-tiles .tile-watchers:has-text('Also watching: op-west')", timeout=20_000)
        shot(first, "live-view-two-viewers")
        asked = [a[2]["requested_by"] for a in s.audit("live_view_accepted")]
        assert asked == ["op-all", "op-west"]  # each put to the camera and accepted by its officer
        second.bring_to_front()
        second.locator(f"#video-tiles .tile[data-device-id='{WE1}'] button.close").click()
        wait_for(lambda: camera.units[0].watching == ("op-all",), timeout=30, what="the camera naming op-all only")
        second.close()
    assert not errors, errors


def test_live_view_from_an_incidents_unit_table_names_the_incident(pg: Database, mosquitto: MosquittoProcess,
                                                                  browser_page: Any) -> None:
    """Live view from an incident's unit table asks for a reason prefilled with the incident and
    sends the request naming it (incident_id), so a later request for the same incident may be
    covered by the consent it gets (rule same_incident)."""
    from tests.helpers.live_view import WE1
    from tests.helpers.live_view import stack as live_view_stack

    page = browser_page
    with live_view_stack(pg, mosquitto) as s:
        with s.http("op-all") as http:
            made = http.post("/api/v1/incidents", json={"title": "Armed suspect", "lat": 51.5, "lon": -0.13,
                                                        "radius_m": 500, "borough": "Westminster"})
            assert made.status_code == 201, made.text
            incident_id = made.json()["id"]
            assert http.post(f"/api/v1/incidents/{incident_id}/units", json={"device_ids": [WE1]}).status_code == 200
        sign_in(page, s.base, "op-all")
        row = page.locator(f"#incident-panel tbody tr[data-device-id='{WE1}']")
        row.wait_for(timeout=15_000)
        row.locator("button.live-view").click()
        page.wait_for_selector("#reason-dialog[open]")
        assert page.input_value("#reason-dialog textarea") == f"Incident #{incident_id}: Armed suspect"
        page.click("#reason-dialog button[value=ok]")
        page.locator(f"#video-tiles .tile[data-device-id='{WE1}']").wait_for()
        wait_for(lambda: s.rows("SELECT incident_id, requested_by FROM live_view_requests")
                 == [(incident_id, "op-all")], timeout=20, what="the request naming the incident")


def test_auditor_answers_who_watched_a_unit_in_a_window_and_exports_it(pg: Database, mosquitto: MosquittoProcess,
                                                                       browser_page: Any) -> None:
    """"Who watched unit X between 14:00 and 16:00, and why", on one screen: the auditor's
    Viewing record filtered by unit and window lists exactly those sessions (and the refused
    attempt) with viewer and reason; Export CSV downloads the same sessions, and the export
    is in the audit log. Times are the force's (here Tokyo's, not the browser's): shown with
    seconds and a YYYY-MM-DD date, and typed into the filter in that zone. A viewing links to
    its audit entries, whose details read as fields."""
    from services.audit import record
    from tests.helpers.live_view import RECORD_DAY, WE1, seed_viewing_record
    from tests.helpers.live_view import stack as live_view_stack

    expected = {"s-before-overlaps", "s-inside", "s-after-overlaps", "s-still-watching", ""}
    page = browser_page
    with live_view_stack(pg, mosquitto, force_time_zone="Asia/Tokyo") as s:
        with pg.connect() as conn:
            seed_viewing_record(conn)
            for session_id in ("s-inside", "s-after-overlaps"):
                record(conn, actor="op-west", action="viewing_started", device_id=WE1,
                       details={"session_id": session_id, "reason": f"reason of {session_id}"})
        sign_in(page, s.base, "audit")
        page.click("#tabs button[data-view=viewings]")
        page.wait_for_selector("#view-viewings:not(.hidden)")
        page.fill("#view-viewings input[name=device_id]", WE1)
        # 14:00-16:00 UTC is 23:00-01:00 in Tokyo (UTC+9, no summer time).
        page.fill("#view-viewings input[name=since]", f"{RECORD_DAY}T23:00:00")
        page.fill("#view-viewings input[name=until]", f"{RECORD_DAY[:-2]}{int(RECORD_DAY[-2:]) + 1:02d}T01:00:00")
        page.click("#view-viewings button[type=submit]")
        page.wait_for_selector(".viewings-status:has-text('5 sessions')")
        rows = page.locator("table.viewings tbody tr")
        shown = {rows.nth(i).get_attribute("data-session-id") for i in range(rows.count())}
        assert shown == expected
        inside = page.locator("table.viewings tbody tr[data-session-id=s-inside]")
        assert inside.locator("td.viewer").inner_text() == "op-west"
        assert inside.locator("td.reason").inner_text().startswith("=HYPERLINK")  # shown as it was typed
        assert "accepted a request" in inside.inner_text() and "30 min 0 s" in inside.inner_text()
        assert inside.locator("td").nth(0).inner_text().startswith(f"{RECORD_DAY} 23:30:00")
        shot(page, "viewing-record")
        with page.expect_download() as download_info:
            page.click("#view-viewings button.export")
        exported = list(csv.DictReader(io.StringIO(Path(download_info.value.path()).read_text())))
        assert {r["session_id"] for r in exported} == expected and {r["device_id"] for r in exported} == {WE1}
        page.wait_for_selector(".viewings-export-status:has-text('Exported 5 sessions')")
        (entry,) = s.rows("SELECT actor, details FROM audit_log WHERE action = 'export'")
        assert entry[0] == "audit" and entry[1]["report"] == "viewings.csv" and entry[1]["device_id"] == WE1
        inside.locator("button.audit-link").click()
        page.wait_for_selector("#view-audit:not(.hidden) .audit-status:has-text('1 entry')")
        (shown_entry,) = page.locator("#view-audit tbody tr").all()
        fields = shown_entry.locator("dl.audit-details")
        assert dict(zip(fields.locator("dt").all_inner_texts(), fields.locator("dd").all_inner_texts(), strict=True)) \
            == {"session id": "s-inside", "reason": "reason of s-inside"}
        assert page.input_value("#view-audit input[name=session_id]") == "s-inside"
        shot(page, "viewing-audit-entries")


def _png(rgb: tuple[int, int, int]) -> bytes:
    """A 1×1 PNG of one colour (the canvas scales it to a tile)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" + bytes(rgb))) + chunk(b"IEND", b""))


def _share_of_colour(png: bytes, rgb: tuple[int, int, int], tolerance: int = 6) -> float:
    """The share of a screenshot's pixels within ``tolerance`` of ``rgb``: a PNG decoder just
    big enough for Chromium's screenshots (8-bit RGB or RGBA, not interlaced)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(png):
        (length,), kind = struct.unpack(">I", png[pos:pos + 4]), png[pos + 4:pos + 8]
        data = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", data[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * channels
    previous, matches = bytearray(stride), 0
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        matches += sum(1 for x in range(0, stride, channels)
                       if all(abs(line[x + k] - rgb[k]) <= tolerance for k in range(3)))
        previous = line
    return matches / (width * height)


def test_the_map_draws_the_units_of_a_snapshot(pg: Database, mosquitto: MosquittoProcess, browser_page: Any) -> None:
    """Units that ingest stored before the API started reach the page in its snapshot alone
    (one deflated message of columns, docs/api.md "Live feed"): every one is drawn, each with
    its stored position, battery, recording state and registry fields, and no delta
    carried any of them."""
    boroughs = ["Westminster", "Camden", "Hackney", "Lambeth", "Southwark"]
    devices = [DeviceRecord(f"snap-{n}", f"SN{n:03}", f"PC Snap {n}", boroughs[n % len(boroughs)],
                            "firearms" if n % 4 == 0 else "response") for n in range(24)]
    stored = {d.device_id: {"lat": 51.42 + (n % 6) * 0.03, "lon": -0.3 + (n // 6) * 0.08, "battery_pct": 50.0 + n,
                            "recording": "recording" if n % 3 == 0 else "buffering", "callsign": d.callsign,
                            "borough": d.borough, "role": d.role} for n, d in enumerate(devices)}
    with pg.connect() as conn:
        add_test_users(conn)
        upsert_devices(conn, devices)
    settings = make_settings(live_rate_hz=4.0)
    with running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings):
        publish_all(mosquitto.url, [(topic_for(d, Channel.TELEMETRY),
                                     telemetry_payload(1, lat=u["lat"], lon=u["lon"], battery=u["battery_pct"],
                                                       recording=u["recording"])) for d, u in stored.items()])

        def latest() -> int:
            with pg.connect() as conn:
                return int(conn.execute("SELECT count(*) FROM device_latest WHERE device_id LIKE 'snap-%'"
                                        " AND lat IS NOT NULL").fetchone()[0])

        wait_for(lambda: latest() == len(devices), what="every unit's report stored")
    with running_api(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as server:
        page = browser_page
        sign_in(page, server.base, "op-all")
        page.wait_for_selector("#conn-state[data-state=live]", timeout=15_000)
        wait_visible(page, lambda n: n == len(devices), "every unit of the snapshot")
        wait_for(lambda: int(page.get_attribute("#unit-count", "data-drawn") or 0) == len(devices),
                 what="a marker for each")
        held = page.evaluate("(fields) => Object.fromEntries([...window.__watchfloor.map.store.units.values()]"
                             ".map((u) => [u.device_id, Object.fromEntries(fields.map((f) => [f, u[f]]))]))",
                             list(stored["snap-0"]))
        assert held == stored
        assert page.evaluate("window.__watchfloor.perf.deltaUnits") == 0
        shot(page, "snapshot")


def test_map_draws_a_configured_tile_server(pg: Database, mosquitto: MosquittoProcess, browser_page: Any) -> None:
    """With WATCHFLOOR_MAP_TILES_URL set, the map fetches {z}/{x}/{y} tiles from that server
    and draws them under the outlines, within the page's and the server's CSP."""
    requested: list[str] = []
    tile = _png((40, 90, 60))

    class Tiles(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            requested.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(tile)))
            self.end_headers()
            self.wfile.write(tile)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    tiles = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Tiles)
    threading.Thread(target=tiles.serve_forever, daemon=True).start()
    try:
        with pg.connect() as conn:
            add_test_users(conn)
        settings = make_settings(map_tiles_url=f"http://127.0.0.1:{tiles.server_address[1]}/{{z}}/{{x}}/{{y}}.png",
                                 map_tiles_attribution="© Test Tiles")
        with running_api(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as server:
            page = browser_page
            sign_in(page, server.base, "op-all")
            wait_for(lambda: len(requested) >= 4, what="tile requests")
            assert all(re.fullmatch(r"/\d+/\d+/\d+\.png", path) for path in requested), requested
            page.wait_for_selector("#attribution:has-text('© Test Tiles')")
            # Drawn, not only requested: the map's pixels show the tile's colour.
            box = page.locator("#map canvas").first.bounding_box()
            clip = {"x": box["x"] + box["width"] / 2 - 40, "y": box["y"] + box["height"] / 2 - 40,
                    "width": 80, "height": 80}
            wait_for(lambda: _share_of_colour(page.screenshot(clip=clip), (40, 90, 60)) > 0.2,
                     what="the tiles' colour on the map")
            shot(page, "map-tiles")
    finally:
        tiles.shutdown()


def test_watch_now_from_a_watch_me_alert_plays_and_the_tile_enlarges(pg: Database, mosquitto: MosquittoProcess,
                                                                      browser_page: Any) -> None:
    """The officer's watch_me raises an alert; its "Watch now" asks for a reason prefilled with
    the alert, and the tile plays the camera's stream (frames decoded) without a second
    question to the officer: the request is covered by the officer's own ask. Enlarged, the
    tile covers the map area exactly, and goes back when clicked again. When the stream ends,
    the tile says so, then clears itself."""
    from tests.helpers.live_view import WE1, simulated_camera
    from tests.helpers.live_view import stack as live_view_stack

    page = browser_page
    settings = make_settings()
    with live_view_stack(pg, mosquitto, live_view_idle_stop_s=60) as s, \
            running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings), \
            simulated_camera(s, decline_share=1.0):  # the officer would decline any question put
        sign_in(page, s.base, "op-all")
        page.wait_for_selector("#conn-state[data-state=live]", timeout=15_000)
        # Far past the simulator's own sequence numbers, so the event is not taken for a duplicate.
        s_publish = [(topic_for(WE1, Channel.EVENTS), event_payload(1_000_000, "watch_me"))]
        publish_all(s.mqtt_url, s_publish)
        watch = page.locator(f"#alerts-panel li.alert[data-kind=watch_me][data-device-id='{WE1}'] button.watch-now")
        watch.wait_for(timeout=20_000)
        watch.click()
        page.wait_for_selector("#reason-dialog[open]")
        assert page.input_value("#reason-dialog textarea") == "Watch me alert: officer asks to be watched live"
        page.fill("#reason-dialog textarea", "Watch me alert: officer asks to be watched live, backing up")
        page.click("#reason-dialog button[value=ok]")
        page.wait_for_selector(f"#video-tiles .tile[data-device-id='{WE1}'][data-status=playing]", timeout=40_000)
        # Frames decoded in the tile, not only requested.
        wait_for(lambda: page.evaluate("() => { const v = document.querySelector('#video-tiles video');"
                                       " const q = v.getVideoPlaybackQuality();"
                                       " return q.totalVideoFrames - q.droppedVideoFrames > 5 && v.videoWidth > 0; }"),
                 timeout=20, what="decoded frames in the tile")
        (request,) = s.rows("SELECT requested_by, status, covered_rule, reason FROM live_view_requests")
        assert request == ("op-all", "accepted", "officer_asked",
                           "Watch me alert: officer asks to be watched live, backing up")
        # The camera was asked once, by the officer's own watch_me (wm-<consent>); never by op-all.
        assert not s.rows("SELECT 1 FROM audit_log WHERE action = 'live_view_declined'")
        shot(page, "watch-now-playing")

        tile = page.locator(f"#video-tiles .tile[data-device-id='{WE1}']")
        tile.locator("button.enlarge").click()
        boxes = "() => [document.querySelector('#video-tiles .tile'), document.querySelector('#map')]" \
                ".map((e) => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })"
        enlarged, area = page.evaluate(boxes)
        assert area[2] > 100 and area[3] > 100
        assert all(abs(a - b) < 1 for a, b in zip(enlarged, area)), (enlarged, area)
        shot(page, "watch-now-enlarged")
        tile.locator("button.enlarge").click()
        small, area = page.evaluate(boxes)
        assert small[2] < area[2] or small[3] < area[3]

        # The control room ends the stream: the tile says it ended, then clears itself.
        with s.http("op-all") as http:
            assert http.delete(f"/api/v1/devices/{WE1}/live-view").status_code == 200
        page.wait_for_selector(f"#video-tiles .tile[data-device-id='{WE1}'][data-status=ended]", timeout=15_000)
        assert "ended" in tile.locator(".tile-status").inner_text()
        tile.wait_for(state="detached", timeout=15_000)


def test_a_declined_tile_says_so_then_clears_itself(pg: Database, mosquitto: MosquittoProcess,
                                                   browser_page: Any) -> None:
    """An emergency grants no consent: Watch now asks the camera, the tile waits for the
    officer, who declines; the tile says so, then clears itself."""
    from tests.helpers.live_view import WE1, simulated_camera
    from tests.helpers.live_view import stack as live_view_stack

    page = browser_page
    settings = make_settings()
    with live_view_stack(pg, mosquitto, live_view_idle_stop_s=60) as s, \
            running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings), \
            simulated_camera(s, decline_share=1.0):
        sign_in(page, s.base, "op-all")
        page.wait_for_selector("#conn-state[data-state=live]", timeout=15_000)
        publish_all(s.mqtt_url, [(topic_for(WE1, Channel.EVENTS), event_payload(1_000_000, "emergency"))])
        watch = page.locator(f"#alerts-panel li.alert[data-kind=emergency][data-device-id='{WE1}'] button.watch-now")
        watch.wait_for(timeout=20_000)
        watch.click()
        page.wait_for_selector("#reason-dialog[open]")
        assert page.input_value("#reason-dialog textarea") == "EMERGENCY alert: emergency button pressed"
        page.click("#reason-dialog button[value=ok]")
        tile = page.locator(f"#video-tiles .tile[data-device-id='{WE1}']")
        tile.wait_for()
        page.wait_for_selector(f"#video-tiles .tile[data-device-id='{WE1}'][data-status=declined]", timeout=30_000)
        assert "declined" in tile.locator(".tile-status").inner_text()
        (request,) = s.rows("SELECT status, covered_rule FROM live_view_requests")
        assert request == ("declined", None)  # put to the camera, not covered
        # It clears itself (CLEAR_AFTER_MS in video.js), bounded by the wait.
        tile.wait_for(state="detached", timeout=15_000)
        assert page.locator("#video-tiles .tile").count() == 0


# ---- alerts a control room can live with (#15): always in sight, one badge, one state


STALE_RGB = (0x4D, 0x55, 0x60)  # map.js STALE
LIVE_RGBS = [(0xFF, 0x45, 0x3A), (0x30, 0xD1, 0x58), (0xA1, 0xA7, 0xAD)]  # map.js STATE_COLOURS, filled ones
EMERGENCY_RGB = (0xFF, 0x2B, 0xD6)


def marker_rgb(page: Any, device_id: str) -> tuple[int, int, int] | None:
    """The colour of the centre of a unit's marker as the map's unit layer drew it (beneath
    overlays such as a track's position dot); None until that layer is drawn for the view."""
    rgb = page.evaluate(
        "(id) => { const m = window.__watchfloor.map; const u = m.store.units.get(id); const l = m.units;"
        " if (!l.view || l.dirty || l.view.cx !== m.view.cx || l.view.cy !== m.view.cy || l.view.zoom !== m.view.zoom)"
        " return null;"
        " const [x, y] = m.toScreen(u.mx, u.my);"
        " const d = l.canvas.getContext('2d').getImageData(Math.round(x * m.dpr), Math.round(y * m.dpr), 1, 1).data;"
        " return [d[0], d[1], d[2]]; }", device_id)
    return None if rgb is None else (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def near(rgb: tuple[int, int, int] | None, want: tuple[int, int, int], tolerance: int = 6) -> bool:
    return rgb is not None and all(abs(a - b) <= tolerance for a, b in zip(rgb, want, strict=True))


def in_sight(page: Any, selector: str) -> bool:
    """The element is inside the window and is what the page shows there (not clipped by a
    scrolling panel, not under another element)."""
    return bool(page.evaluate(
        "(sel) => { const el = document.querySelector(sel); if (!el) return false;"
        " const r = el.getBoundingClientRect();"
        " if (r.top < 0 || r.left < 0 || r.bottom > innerHeight || r.right > innerWidth || !r.height) return false;"
        " const hit = document.elementFromPoint(r.left + Math.min(20, r.width / 2),"
        " r.top + Math.min(10, r.height / 2));"
        " return el.contains(hit); }", selector))


def insert_alert(stack: Stack, device_id: str, kind: str, severity: str) -> int:
    return int(stack.db.scalar("INSERT INTO alerts (device_id, kind, severity, detail) VALUES (%s, %s, %s, 'dashboard')"
                               " RETURNING id", (device_id, kind, severity)))


def test_many_alerts_group_and_a_high_one_stays_in_sight_at_1100_px_with_a_unit_open(
        stack: Stack, browser_page: Any) -> None:
    """At 1100 px, with a unit's panel open (and the incident panel), the high alert is in
    the window, not below the fold. Many alerts fold into groups by kind (or by unit, as
    chosen) with a count; a group opens to its alerts and is acknowledged in one act (one
    audit entry)."""
    # Kinds that the simulated fleet's own reports do not clear.
    units = [u.device_id for u in stack.sim.units]
    watchers = [insert_alert(stack, d, "watch_me", "warning") for d in units[:12] + [units[20]]]
    insert_alert(stack, units[20], "geofence", "warning")
    high = insert_alert(stack, SOS.device_id, "assigned_not_recording", "high")
    page = browser_page
    page.set_viewport_size({"width": 1100, "height": 700})
    sign_in(page, stack.base, "op-all")
    group = page.locator("#alerts-panel .alert-group[data-group='kind:watch_me']")
    group.wait_for(timeout=15_000)
    assert group.locator(".count").inner_text() == "13 alerts"
    assert page.locator("#alerts-panel .alert[data-kind=watch_me]").count() == 0
    page.click(f".alert[data-alert-id='{high}'] button.link")  # locates the unit, opens its panel
    page.wait_for_selector(f"#unit-panel:not(.hidden)[data-device-id='{SOS.device_id}']")
    page.wait_for_selector("#unit-panel .track-info:has-text('fix')", timeout=15_000)
    assert page.is_visible("#incident-panel")
    wait_for(lambda: in_sight(page, f".alert[data-alert-id='{high}']"), timeout=15,
             what="the high alert in the window beside the open unit panel")
    shot(page, "alerts-1100-unit-open")

    group.locator("button.expand").click()
    page.wait_for_selector(".alert.in-group[data-kind=watch_me] >> nth=12")
    # For the picture only. The list is drawn again as the feed's updates come, so the group
    # is found afresh at the moment of scrolling (a held element may be detached by then).
    page.eval_on_selector("#alerts-panel .alert-group[data-group='kind:watch_me']", "g => g.scrollIntoView()")
    shot(page, "alerts-grouped")
    group.locator("button.ack-group").click()
    for alert_id in watchers:
        page.wait_for_selector(f".alert[data-alert-id='{alert_id}'].st-acknowledged")
    assert [stack.db.scalar("SELECT status FROM alerts WHERE id = %s", (i,)) for i in watchers + [high]] == \
        ["acknowledged"] * 13 + ["open"]
    entry = stack.db.scalar("SELECT details FROM audit_log WHERE action = 'alerts_acknowledged'")
    assert entry["count"] == 13

    page.select_option("#alerts-panel select[name=group-by]", "unit")
    by_unit = page.locator(f"#alerts-panel .alert-group[data-group='unit:{units[20]}']")
    by_unit.wait_for()
    assert by_unit.locator(".count").inner_text() == "2 alerts"
    page.select_option("#alerts-panel select[name=group-by]", "")
    page.wait_for_selector("#alerts-panel .alert-group", state="detached")


def test_at_phone_width_the_map_and_alerts_come_first_and_filters_fold(stack: Stack, browser_page: Any) -> None:
    """At 390 px the map comes first, then the alerts (the high one at their top, on the first
    screen, drawn over by nothing), then the filters and legend, folded behind a toggle that
    opens them; nothing is wider than the screen."""
    high = insert_alert(stack, SOS.device_id, "assigned_not_recording", "high")
    insert_alert(stack, stack.sim.units[0].device_id, "battery_low", "warning")
    page = browser_page
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, stack.base, "op-all")
    page.wait_for_selector("#conn-state[data-state=live]", timeout=15_000)
    first = page.locator("#alerts-panel .alert-list > li").first
    first.wait_for(timeout=15_000)
    assert first.get_attribute("data-alert-id") == str(high)
    top = {name: page.locator(sel).bounding_box()["y"]
           for name, sel in (("map", "#map"), ("alerts", "#alerts-panel"), ("filters", ".filters"))}
    assert top["map"] < top["alerts"] < top["filters"], top
    assert in_sight(page, f".alert[data-alert-id='{high}']"), "the high alert is not on the first screen"
    assert page.is_hidden("#filter-role") and page.is_hidden(".legend")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "phone")
    page.click("#filters-toggle")
    assert page.get_attribute("#filters-toggle", "aria-expanded") == "true"
    page.wait_for_selector("#filter-role", state="visible")
    assert page.is_visible(".legend")


def test_the_badge_always_says_the_open_count(stack: Stack, browser_page: Any) -> None:
    """Through several live alerts and an acknowledgement, the top-bar badge only ever reads
    "N open" (every text it took is recorded), with N the open count; new alerts make it
    flash, not change its words."""
    page = browser_page
    sign_in(page, stack.base, "op-all")
    page.wait_for_selector("#conn-state[data-state=live]", timeout=15_000)
    page.evaluate("() => { window.__badgeTexts = []; const b = document.querySelector('#alert-count');"
                  " new MutationObserver(() => window.__badgeTexts.push(b.textContent))"
                  ".observe(b, { childList: true, characterData: true, subtree: true }); }")

    def badge_and_summary() -> tuple[str, str]:
        pair = page.evaluate("[document.querySelector('#alert-count').textContent,"
                             " document.querySelector('#alerts-panel .alert-summary').textContent]")
        return str(pair[0]), str(pair[1])

    devices = [SOS.device_id] + [u.device_id for u in stack.sim.units[:2]]
    for seq, (device_id, kind) in enumerate([(devices[0], "emergency"), (devices[1], "watch_me"),
                                             (devices[2], "watch_me"), (devices[1], "emergency")], start=10):
        stack.publish([(topic_for(device_id, Channel.EVENTS), event_payload(seq, kind))])
        page.wait_for_selector(f".alert[data-kind={kind}][data-device-id='{device_id}']", timeout=15_000)
        badge, summary = badge_and_summary()
        assert re.fullmatch(r"\d+ open", badge), badge
        assert summary.startswith(badge.replace(" open", " open,")), (badge, summary)
    page.wait_for_selector("#alert-count.flash")
    page.locator(f".alert[data-kind=watch_me][data-device-id='{devices[2]}'] button.ack").click()
    page.wait_for_selector(f".alert[data-kind=watch_me][data-device-id='{devices[2]}'].st-acknowledged")
    badge, summary = badge_and_summary()
    assert summary.startswith(badge.replace(" open", " open,")), (badge, summary)
    texts = page.evaluate("window.__badgeTexts")
    assert len(texts) >= 4 and all(re.fullmatch(r"\d+ open", t) for t in texts), texts


def test_unit_panel_shows_the_emergency_its_marker_shows(stack: Stack, browser_page: Any) -> None:
    """A unit with an open emergency: its marker is drawn SOS (emergency colour) and its
    panel's state says EMERGENCY (not the camera's "buffering" alone); resolved, both go
    back to the camera's state."""
    page = browser_page
    sign_in(page, stack.base, "op-all")
    page.wait_for_selector("#conn-state[data-state=live]", timeout=15_000)
    stack.publish([(topic_for(SOS.device_id, Channel.EVENTS), event_payload(20, "emergency", trigger="button"))])
    item = page.locator(".alert[data-kind=emergency]")
    item.wait_for(timeout=15_000)
    item.locator("button.link").click()
    page.wait_for_selector(f"#unit-panel:not(.hidden)[data-device-id='{SOS.device_id}']")
    state = page.locator("#unit-panel dd.state")
    page.wait_for_selector("#unit-panel.emergency dd.state-emergency:has-text('EMERGENCY (SOS), not acknowledged')")
    assert "camera buffering" in state.inner_text()
    wait_for(lambda: near(marker_rgb(page, SOS.device_id), EMERGENCY_RGB), timeout=15, what="the SOS marker")
    shot(page, "unit-panel-emergency")

    item.locator("button.ack").click()
    page.wait_for_selector("#unit-panel dd.state-emergency:has-text('acknowledged by op-all')")
    item.locator("button.resolve").click()
    page.click("#resolve-dialog button[value=ok]")
    page.wait_for_selector("#unit-panel dd.state-emergency", state="detached")
    assert state.inner_text() == "buffering" and "state-buffering" in (state.get_attribute("class") or "")
    wait_for(lambda: near(marker_rgb(page, SOS.device_id), LIVE_RGBS[1]), timeout=15,
             what="the marker back to buffering")


def test_units_are_drawn_stale_while_the_feed_is_down(stack: Stack, browser_page: Any) -> None:
    """While the live feed is down (the API stopped), markers are greyed, not in live colours,
    the map says how old the last update is, and the open unit panel says so too; once the
    feed is back, live colours return and the notices go."""
    stack.publish([(topic_for(SOS.device_id, Channel.TELEMETRY), telemetry_payload(30, lat=51.4995, lon=-0.1248))])
    page = browser_page
    sign_in(page, stack.base, "op-all")
    page.wait_for_selector("#conn-state[data-state=live]", timeout=15_000)
    wait_visible(page, lambda n: n == FLEET + 1, "every unit drawn")
    page.fill("#filter-search", SOS.callsign.lower())  # SOS alone on the map: no marker drawn over it
    wait_visible(page, lambda n: n == 1, "the SOS unit alone")
    page.click(f"#search-results button:has-text('{SOS.callsign}')")
    page.wait_for_selector(f"#unit-panel:not(.hidden)[data-device-id='{SOS.device_id}']")
    wait_for(lambda: near(marker_rgb(page, SOS.device_id), LIVE_RGBS[1]), timeout=15, what="a live-coloured marker")
    assert page.is_hidden("#map-stale")

    stack.stop_api()
    page.wait_for_selector("#conn-state[data-state=disconnected]", timeout=15_000)
    stale = page.locator("#map-stale")
    stale.wait_for(timeout=15_000)
    assert re.search(r"last update \d+ s ago", stale.inner_text()), stale.inner_text()
    wait_for(lambda: near(marker_rgb(page, SOS.device_id), STALE_RGB), timeout=15, what="a greyed marker")
    page.wait_for_selector("#unit-panel.stale dd.feed-stale:has-text('last update')")
    assert "state-stale" in (page.get_attribute("#unit-panel dd.state", "class") or "")
    shot(page, "stale")

    stack.start_api()
    page.wait_for_selector("#conn-state[data-state=live]", timeout=30_000)
    stale.wait_for(state="hidden")
    wait_for(lambda: near(marker_rgb(page, SOS.device_id), LIVE_RGBS[1]), timeout=15, what="live colours again")
    page.wait_for_selector("#unit-panel dd.feed-stale", state="detached")


def test_an_escalation_is_announced_again_with_its_look_and_sound(stack: Stack, browser_page: Any) -> None:
    """A live emergency sounds once; seen (located) it stops being new; left unacknowledged
    past its deadline it escalates: the same alert is announced again (new again, drawn as
    escalated, "Escalated to supervisor") and sounds a second time."""
    page = browser_page
    sign_in(page, stack.base, "op-all")
    page.wait_for_selector("#conn-state[data-state=live]", timeout=15_000)
    stack.publish([(topic_for(SOS.device_id, Channel.EVENTS), event_payload(40, "emergency"))])
    item = page.locator(".alert[data-kind=emergency]")
    item.wait_for(timeout=15_000)
    page.wait_for_selector("#alerts-panel button.sound[data-sounds='1']", timeout=15_000)
    item.locator("button.link").click()  # seen: no longer new
    page.wait_for_selector(".alert[data-kind=emergency]:not(.new):not(.escalated)")
    alert_id = int(item.get_attribute("data-alert-id") or 0)
    # Past its deadline now (the worker's sweep escalates it), without waiting 30 s.
    assert stack.db.scalar("UPDATE alerts SET raised_at = now() - interval '10 minutes' WHERE id = %s RETURNING id",
                           (alert_id,)) == alert_id
    again = f".alert.escalated.new[data-alert-id='{alert_id}'] .escalation:has-text('Escalated to supervisor')"
    page.wait_for_selector(again, timeout=30_000)
    page.wait_for_selector("#alerts-panel button.sound[data-sounds='2']", timeout=15_000)
    shot(page, "escalated")
