"""The wearer knows who is watching, and a consent means what it says (issue 14), on real
parts: PostgreSQL, Mosquitto, the API (as a `watchfloor api` process over HTTP, or in this
process where a test needs its counters), the simulator's camera over MQTT and WHIP, and
aiortc viewers over WHEP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.commands import ReplyStatus, reply
from core.contract import Channel, topic_for
from services.registry import provision_device
from telemetry.embedded import free_port
from tests.helpers.api import API_PROCESS_ENV, add_test_users
from tests.helpers.api import token as sign_in
from tests.helpers.db import Database
from tests.helpers.live_view import (
    DEVICES,
    WE1,
    AiortcViewer,
    Stack,
    Watched,
    _whip,
    camera_against,
    simulated_camera,
    stack,
)
from tests.helpers.processes import WatchfloorProcess, scrape
from tests.helpers.telemetry import event_payload, publish_all
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess


@pytest.fixture
def s(pg: Database, mosquitto: MosquittoProcess) -> Iterator[Stack]:
    with stack(pg, mosquitto, live_view_idle_stop_s=30, live_view_request_timeout_s=20) as running:
        yield running


_TOKENS: dict[tuple[str, str], str] = {}


def token(base: str, user: str) -> str:
    """A token per user and API (signing in is slow on purpose: once each)."""
    if (base, user) not in _TOKENS:
        _TOKENS[base, user] = sign_in(base, user)
    return _TOKENS[base, user]


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False




def _ask(base: str, user: str, reason: str, incident_id: int | None = None) -> dict[str, Any]:
    """A request (naming ``incident_id``, if given), answered (by a rule, the policy or the camera)."""
    headers = {"Authorization": f"Bearer {token(base, user)}"}
    body: dict[str, Any] = {"reason": reason} if incident_id is None else {"reason": reason, "incident_id": incident_id}
    with httpx.Client(base_url=base, headers=headers, timeout=15) as http:
        created = http.post(f"/api/v1/devices/{WE1}/live-view", json=body)
        assert created.status_code == 201, created.text
        request_id = created.json()["request_id"]
        answered = wait_for(lambda: (r := http.get(f"/api/v1/live-view/requests/{request_id}").json())["status"]
                            != "pending" and r, timeout=20, what=f"the answer to {user}'s request")
    assert isinstance(answered, dict)
    return answered


def _relay_viewers(base: str) -> list[str]:
    """Who the API says watches WE1 (its open viewings), in the order they started."""
    headers = {"Authorization": f"Bearer {token(base, 'op-all')}"}
    return [v["viewer"] for v in httpx.get(f"{base}/api/v1/devices/{WE1}/viewers", headers=headers,
                                           timeout=10).json()]


def test_the_cameras_list_follows_the_relays_viewers_through_joins_leaves_a_crash_and_a_restart(
        pg: Database, mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    """A `watchfloor api` process, the simulator's camera and two WHEP viewers: after each
    join, leave, a viewer's crash (its peer connection gone without a DELETE) and a restart
    of the API process, the list the camera shows its wearer names exactly the viewers the
    API has, by call sign (the force's setting), and says why the stream is allowed."""
    with pg.connect() as conn:
        add_test_users(conn)
        secrets = {record.device_id: provision_device(conn, record=record) for record in DEVICES}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"WATCHFLOOR_DATABASE_URL": pg.url, "WATCHFLOOR_MQTT_URL": mosquitto.url, **API_PROCESS_ENV,
           "WATCHFLOOR_TIMESCALEDB": "off", "WATCHFLOOR_LIVE_VIEW_WEARER_SEES": "callsign",
           "WATCHFLOOR_LIVE_VIEW_IDLE_STOP_S": "60"}
    api = WatchfloorProcess(["api", "--port", str(port)], env, tmp_path / "api.log").start()
    wire = Watched(mosquitto.url, [topic_for(WE1, Channel.COMMANDS)])
    viewers: list[AiortcViewer] = []

    def join(user: str, reason: str) -> AiortcViewer:
        viewer = AiortcViewer(base, token(base, user), WE1, reason)
        viewers.append(viewer)
        assert viewer.open() == 201, viewer.error
        wait_for(lambda: viewer.frames >= 1, timeout=20, what=f"frames at {user}'s viewer")
        return viewer

    def shown(expected: list[str], what: str) -> None:
        """The camera's list, the viewings the API holds open and the relay's connected viewers agree."""
        wait_for(lambda: list(camera.units[0].watching) == expected and _relay_viewers(base) == expected
                 and scrape(f"{base}/metrics").get("watchfloor_relay_viewers") == len(expected),
                 timeout=30, what=f"the camera, the API and the relay agreeing on {expected} ({what})")

    try:
        wait_for(lambda: _ready(base), timeout=60, what="the API process")
        with camera_against(base, mosquitto.url, secrets[WE1], decline_share=0.0) as camera:
            assert _ask(base, "op-all", "officer needs support")["status"] == "accepted"
            first = join("op-all", "officer needs support")
            shown(["op-all"], "a join")
            # Another operator is not covered by op-all's consent: the camera is asked, and says yes.
            later = _ask(base, "op-west", "second pair of eyes")
            assert later["status"] == "accepted" and later["covered_rule"] is None
            second = join("op-west", "second pair of eyes")
            shown(["op-all", "op-west"], "a second join")
            status = [b for b in wire.bodies("/commands") if b["type"] == "live_view_status"][-1]["params"]
            assert status["basis"] == "accepted_request" and status["reason"] == "officer needs support"
            assert [(w["name"], w["role"], w["reason"]) for w in status["watching"]] == [
                ("op-all", "operator", "officer needs support"), ("op-west", "operator", "second pair of eyes")]
            assert status["watching"][0]["since"] <= status["watching"][1]["since"]
            # op-west's viewer crashes: its peer connection goes, no DELETE is sent.
            second.close()
            viewers.remove(second)
            shown(["op-all"], "a crashed viewer")
            assert first.leave() == 200
            first.close()
            viewers.remove(first)
            shown([], "a leave")
            join("op-all", "back again")
            shown(["op-all"], "a rejoin")
            api.stop()  # SIGTERM: the process ends its sessions and tells the camera
            wait_for(lambda: list(camera.units[0].watching) == [] and not camera.units[0].live, timeout=30,
                     what="the camera told nobody watches once the API stopped")
            for viewer in viewers:
                viewer.close()
            viewers.clear()
            api.start()
            wait_for(lambda: _ready(base), timeout=60, what="the API process again")
            assert _relay_viewers(base) == [] and list(camera.units[0].watching) == []
            assert _ask(base, "op-west", "after the restart")["status"] == "accepted"
            join("op-west", "after the restart")
            shown(["op-west"], "a join after the restart")
    finally:
        for viewer in viewers:
            viewer.close()
        wire.close()
        api.stop()
    assert "Traceback" not in api.tail(20_000), api.tail()


def test_a_consent_covers_its_requester_and_anyone_else_is_put_to_the_camera(s: Stack) -> None:
    """op-all's request is accepted by the officer. op-all asking again is covered (the record
    says by which consent and rule; the camera is not asked); op-west may not join on it, and
    op-west's request goes to the camera, naming op-west and the reason; accepted by the
    officer, the record says so and op-west may watch. The audit log tells the two apart."""
    wire = Watched(s.mqtt_url, [topic_for(WE1, Channel.COMMANDS)])
    try:
        with simulated_camera(s, decline_share=0.0):
            first = _ask(s.base, "op-all", "officer needs support")
            assert first["status"] == "accepted" and first["covered_rule"] is None
            (consent_id,) = s.rows("SELECT id FROM live_view_consents WHERE ended_at IS NULL")[0]
            assert first["consent_id"] == consent_id
            again = _ask(s.base, "op-all", "still on scene")
            assert again["covered_rule"] == "same_requester" and again["consent_id"] == consent_id
            assert again["detail"] == (f"covered by consent {consent_id} of request {first['request_id']}"
                                       " (rule: same requester)")
            asked = [b["id"] for b in wire.bodies("/commands") if b["type"] == "live_view_request"]
            assert asked == [first["request_id"]]  # the covered request was not put to the camera

            uncovered = AiortcViewer(s.base, s.token("op-west"), WE1, "just looking")
            try:
                assert uncovered.open() == 403, uncovered.error
                assert uncovered.error is not None and "ask" in uncovered.error["error"]["message"]
            finally:
                uncovered.close()

            other = _ask(s.base, "op-west", "second pair of eyes")
            assert other["status"] == "accepted" and other["covered_rule"] is None
            assert other["consent_id"] == consent_id  # the same consent: the stream kept running
            (put,) = [b for b in wire.bodies("/commands")
                      if b["type"] == "live_view_request" and b["id"] == other["request_id"]]
            assert put["params"] == {"requested_by": "op-west", "reason": "second pair of eyes", "basis": "ask"}
            viewer = AiortcViewer(s.base, s.token("op-west"), WE1, "second pair of eyes")
            try:
                assert viewer.open() == 201, viewer.error
            finally:
                viewer.close()
    finally:
        wire.close()
    accepted = {a[2]["request_id"]: (a[0], a[2].get("covered_rule")) for a in s.audit("live_view_accepted")}
    assert accepted == {first["request_id"]: (f"device:{WE1}", None), again["request_id"]: ("policy", "same_requester"),
                        other["request_id"]: (f"device:{WE1}", None)}
    assert s.rows("SELECT count(*) FROM live_view_consents") == [(1,)]


def _incident(s: Stack, borough: str, *, assign: bool) -> int:
    """An open incident (made by op-all), with WE1 assigned to it if ``assign``."""
    with s.http("op-all") as http:
        made = http.post("/api/v1/incidents", json={"title": f"incident in {borough}", "lat": 51.5, "lon": -0.13,
                                                    "radius_m": 500, "borough": borough})
        assert made.status_code == 201, made.text
        incident_id = int(made.json()["id"])
        if assign:
            assigned = http.post(f"/api/v1/incidents/{incident_id}/units", json={"device_ids": [WE1]})
            assert assigned.status_code == 200, assigned.text
    return incident_id


def test_a_consent_covers_a_request_for_the_same_incident_and_nobody_else(s: Stack) -> None:
    """op-all's request for incident A is accepted by the officer. op-west's request for A is
    covered by rule same_incident (the camera is not asked; the record and the audit say so) and
    op-west may watch; afo-cmd's request naming no incident, and op-west's for incident B, go to
    the camera. A request may name only an incident the caller sees (404) with the unit assigned
    to it (409)."""
    on_scene, other = _incident(s, "Westminster", assign=True), _incident(s, "Westminster", assign=True)
    unassigned, elsewhere = _incident(s, "Westminster", assign=False), _incident(s, "Camden", assign=False)
    with s.http("op-west") as http:
        for incident_id, status in ((unassigned, 409), (elsewhere, 404), (10**9, 404)):
            refused = http.post(f"/api/v1/devices/{WE1}/live-view",
                                json={"reason": "for the incident", "incident_id": incident_id})
            assert refused.status_code == status, (incident_id, refused.text)
    assert s.rows("SELECT count(*) FROM live_view_requests") == [(0,)]  # a refusal records no request
    wire = Watched(s.mqtt_url, [topic_for(WE1, Channel.COMMANDS)])
    try:
        with simulated_camera(s, decline_share=0.0):
            first = _ask(s.base, "op-all", "armed suspect on scene", on_scene)
            assert first["status"] == "accepted" and first["covered_rule"] is None
            assert first["incident_id"] == on_scene
            covered = _ask(s.base, "op-west", "cordon support", on_scene)
            assert covered["covered_rule"] == "same_incident" and covered["consent_id"] == first["consent_id"]
            assert covered["detail"] == (f"covered by consent {first['consent_id']} of request {first['request_id']}"
                                         " (rule: same incident)")
            viewer = AiortcViewer(s.base, s.token("op-west"), WE1, "cordon support")
            try:
                assert viewer.open() == 201, viewer.error
            finally:
                viewer.close()
            no_incident = _ask(s.base, "afo-cmd", "checking the scene")
            another = _ask(s.base, "op-west", "a different job", other)
            asked = [b["id"] for b in wire.bodies("/commands") if b["type"] == "live_view_request"]
            assert asked == [first["request_id"], no_incident["request_id"], another["request_id"]]
            assert no_incident["covered_rule"] is None and another["covered_rule"] is None
    finally:
        wire.close()
    accepted = {a[2]["request_id"]: (a[0], a[2].get("covered_rule"), a[2].get("incident_id"))
                for a in s.audit("live_view_accepted")}
    assert accepted[covered["request_id"]] == ("policy", "same_incident", on_scene)
    requested = {a[2]["request_id"]: a[2]["incident_id"] for a in s.audit("live_view_requested")}
    assert requested == {first["request_id"]: on_scene, covered["request_id"]: on_scene,
                         no_incident["request_id"]: None, another["request_id"]: other}


def test_a_watch_me_from_the_cameras_buffer_or_a_duplicate_grants_no_consent(s: Stack) -> None:
    """A watch_me whose ts is older than the bound (sent late from the camera's buffer) grants
    nothing and is counted; a fresh one grants; once that consent has ended, the same message
    again (a QoS 1 duplicate) or an older one grants nothing either, and is counted."""
    live_view = s.live_view
    events = topic_for(WE1, Channel.EVENTS)
    buffered = event_payload(3, "watch_me", ts=datetime.now(timezone.utc) - timedelta(hours=2))
    publish_all(s.mqtt_url, [(events, buffered)], client_id="test-wearer-buffer")
    wait_for(lambda: live_view.events_ignored["stale"] == 1, what="the buffered watch_me seen and ignored")
    assert s.rows("SELECT count(*) FROM live_view_consents") == [(0,)]

    now = datetime.now(timezone.utc)
    fresh = event_payload(10, "watch_me", ts=now)
    publish_all(s.mqtt_url, [(events, fresh)], client_id="test-wearer-fresh")
    wait_for(lambda: s.rows("SELECT basis FROM live_view_consents WHERE ended_at IS NULL") == [("officer_request",)],
             what="consent from the fresh watch_me")
    with s.http("op-all") as http:
        assert http.delete(f"/api/v1/devices/{WE1}/live-view").status_code == 200
    publish_all(s.mqtt_url, [(events, fresh), (events, event_payload(9, "watch_me", ts=now))],
                client_id="test-wearer-duplicate")
    wait_for(lambda: live_view.events_ignored["replayed"] == 2, what="the duplicate and the older one ignored")
    assert s.rows("SELECT count(*), count(ended_at) FROM live_view_consents") == [(1, 1)]
    assert [a[2]["basis"] for a in s.audit("live_view_accepted")] == ["officer_request"]
    # A newer one is the officer asking again: it grants.
    publish_all(s.mqtt_url, [(events, event_payload(11, "watch_me"))], client_id="test-wearer-again")
    wait_for(lambda: s.rows("SELECT count(*) FROM live_view_consents WHERE ended_at IS NULL") == [(1,)],
             what="consent from a newer watch_me")


def test_policy_consent_needs_the_unit_online_with_a_recent_reading(s: Stack) -> None:
    """A firearms unit whose last reading (hours old) says recording, or that is offline, is
    not watched by policy: the camera is asked. With a fresh reading and online, policy grants."""
    wire = Watched(s.mqtt_url, [topic_for("lv-we-afo", Channel.COMMANDS)])
    try:
        with s.db.connect() as conn:
            conn.execute("INSERT INTO device_latest (device_id, ts, recording, online)"
                         " VALUES ('lv-we-afo', now() - interval '3 hours', 'recording', true)")
        with s.http("afo-cmd") as http:
            hours_old = http.post("/api/v1/devices/lv-we-afo/live-view", json={"reason": "armed deployment"}).json()
            with s.db.connect() as conn:
                conn.execute("UPDATE device_latest SET ts = now(), online = false WHERE device_id = 'lv-we-afo'")
            offline = http.post("/api/v1/devices/lv-we-afo/live-view", json={"reason": "armed deployment"}).json()
            with s.db.connect() as conn:
                conn.execute("UPDATE device_latest SET ts = now(), online = true WHERE device_id = 'lv-we-afo'")
            current = http.post("/api/v1/devices/lv-we-afo/live-view", json={"reason": "armed deployment"}).json()
        assert [hours_old["status"], offline["status"], current["status"]] == ["pending", "pending", "accepted"]
        wait_for(lambda: len([b for b in wire.bodies("/commands") if b["type"] == "live_view_request"]) == 3,
                 what="three requests sent to the camera")
        bases = {b["id"]: b["params"]["basis"] for b in wire.bodies("/commands") if b["type"] == "live_view_request"}
        assert bases == {hours_old["request_id"]: "ask", offline["request_id"]: "ask",
                         current["request_id"]: "policy_recording"}
    finally:
        wire.close()
    assert s.rows("SELECT basis, request_id FROM live_view_consents") == [("policy_recording", current["request_id"])]


def test_a_camera_that_dials_in_before_its_acceptance_is_recorded_is_not_refused(s: Stack) -> None:
    """The accept-path race: the camera's WHIP POST reaches the API before its "accepted" reply
    has (here, deliberately, before it is even sent). The POST waits while the request is
    pending and is answered 201 once the reply is recorded: no 403, no refusal on record. A
    WHIP POST with no request pending, or after a decline, is refused at once."""
    assert _whip(s, WE1, s.secrets[WE1]).status_code == 403  # nothing asked: refused, no wait
    with s.http("op-all") as http:
        created = http.post(f"/api/v1/devices/{WE1}/live-view", json={"reason": "officer needs support"})
        assert created.status_code == 201, created.text
    request_id = created.json()["request_id"]
    statuses: list[int] = []
    dialling = threading.Thread(target=lambda: statuses.append(_whip(s, WE1, s.secrets[WE1]).status_code))
    dialling.start()
    try:
        wait_for(lambda: s.live_view.whip_waiting == 1, timeout=30, what="the WHIP POST waiting for the answer")
        reply_topic = topic_for(WE1, Channel.COMMAND_REPLIES)
        publish_all(s.mqtt_url, [(reply_topic, reply(command_id=request_id, status=ReplyStatus.ACCEPTED))])
    finally:
        dialling.join(60)
    assert statuses == [201]
    assert s.rows("SELECT count(*) FROM viewing_sessions WHERE refused IS NOT NULL") == [(0,)]
    assert s.rows("SELECT basis FROM live_view_consents WHERE request_id = %s", (request_id,)) == [
        ("accepted_request",)]
