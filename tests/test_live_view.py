"""Live view end to end on real parts: PostgreSQL, Mosquitto, the API (uvicorn) with its
relay, simulated cameras that answer over MQTT and publish over WHIP (aiortc), and aiortc
viewers over WHEP. Consent first: no consent, no stream; every session leaves its record."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from core.contract import Channel, topic_for
from simulator.video import VideoUplink
from tests.helpers.api import LiveReader, running_api
from tests.helpers.db import Database
from tests.helpers.live_view import (
    WE1,
    AiortcViewer,
    Stack,
    Watched,
    _ended,
    _live,
    _relay_empty,
    _watched_stream,
    _whip,
    simulated_camera,
    stack,
)
from tests.helpers.telemetry import event_payload, make_settings, publish_all, running_worker
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess


@pytest.fixture
def s(pg: Database, mosquitto: MosquittoProcess) -> Iterator[Stack]:
    with stack(pg, mosquitto, live_view_idle_stop_s=30, live_view_request_timeout_s=20) as running:
        yield running


def test_no_consent_no_stream(s: Stack) -> None:
    """WHIP is refused without consent in force (403), with another device's secret or a
    wrong one (401), and nothing reaches the relay."""
    refused = _whip(s, WE1, s.secrets[WE1])
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert _whip(s, WE1, s.secrets["lv-ca-1"]).status_code == 401
    assert _whip(s, WE1, "not-a-secret").status_code == 401
    with s.http("op-all") as http:
        no_sdp = http.post(f"/api/v1/whip/{WE1}", content=b"v=0", headers={"Content-Type": "text/plain"})
    assert no_sdp.status_code in (401, 415)
    assert _relay_empty(s)


def test_who_may_watch_and_every_refusal_is_recorded(s: Stack) -> None:
    """A fleet manager's or an auditor's WHEP request is refused (403), an operator of
    another area gets 404, a viewer without a reason is refused, and a unit that is not live
    answers 409; each refusal is in viewing_sessions and in the audit log."""
    cases = [("fleet", WE1, "checking the unit", 403), ("audit", WE1, "checking the unit", 403),
             ("op-west", "lv-ca-1", "checking the unit", 404), ("op-west", WE1, None, 403),
             ("op-all", WE1, "suspect vehicle stopped", 409)]
    for user, device_id, reason, status in cases:
        viewer = AiortcViewer(s.base, s.token(user), device_id, reason)
        try:
            assert viewer.open() == status, (user, device_id, viewer.error)
            assert viewer.error is not None and set(viewer.error) == {"error"}
        finally:
            viewer.close()
    refusals = s.rows("SELECT viewer, device_id, refused FROM viewing_sessions WHERE refused IS NOT NULL"
                      " ORDER BY id")
    assert [(r[0], r[1]) for r in refusals] == [(u, d) for u, d, _, _ in cases]
    assert len(s.audit("viewing_refused")) == len(cases)
    # Nor may a fleet manager ask a camera to stream.
    with s.http("fleet") as http:
        assert http.post(f"/api/v1/devices/{WE1}/live-view", json={"reason": "checking"}).status_code == 403
    assert _relay_empty(s)


def test_camera_accepts_viewer_plays_and_the_session_is_recorded(s: Stack) -> None:
    """An operator asks; the simulated camera accepts over MQTT and publishes over WHIP; an
    aiortc viewer plays it over WHEP. The camera is told how many watch (and reports live and
    viewers in its telemetry), websocket clients see each step, and the viewing is recorded
    with who, why, start, end and how it ended, and audited."""
    wire = Watched(s.mqtt_url, [topic_for(WE1, Channel.TELEMETRY), topic_for(WE1, Channel.COMMANDS)])
    feed = LiveReader(s.base, s.token("op-all"))
    west_feed = LiveReader(s.base, s.token("op-west"))
    fleet_feed = LiveReader(s.base, s.token("fleet"))
    try:
        with simulated_camera(s, decline_share=0.0):
            with s.http("op-all") as http:
                created = http.post(f"/api/v1/devices/{WE1}/live-view", json={"reason": "officer needs support"})
                assert created.status_code == 201, created.text
                request = created.json()
                assert request["status"] == "pending" and request["requested_by"] == "op-all"
                wait_for(lambda: http.get(f"/api/v1/live-view/requests/{request['request_id']}").json()["status"]
                         == "accepted", timeout=20, what="the camera's answer")
            # Straight after the answer: the camera may still be dialling in, and WHEP waits for it.
            viewer = AiortcViewer(s.base, s.token("op-all"), WE1, "officer needs support")
            try:
                assert viewer.open() == 201, viewer.error
                wait_for(lambda: viewer.frames >= 10, timeout=20, what="decoded frames at the viewer")
                with s.http("op-west") as http:
                    watching = http.get(f"/api/v1/devices/{WE1}/viewers").json()
                assert [(v["viewer"], v["reason"]) for v in watching] == [("op-all", "officer needs support")]
                wait_for(lambda: any(b["type"] == "live_view_status" and b["params"]["viewers"] == 1
                                     for b in wire.bodies("/commands")), what="the viewer count sent to the camera")
                wait_for(lambda: any(b.get("live") and b.get("viewers") == 1 for b in wire.bodies("/telemetry")),
                         what="the camera reporting live with one viewer")
                assert viewer.leave() == 200
            finally:
                viewer.close()
            wait_for(lambda: s.rows("SELECT 1 FROM viewing_sessions WHERE end_reason IS NOT NULL"
                                    " AND refused IS NULL"), what="the viewing record's end")
        frames = [f for f in feed.of_type("live_view") if f["device_id"] == WE1]
        answered = [f for f in frames if f["event"] == "accepted"]
        assert answered and answered[0]["request_id"] == request["request_id"] and answered[0]["status"] == "accepted"
        events = [f["event"] for f in frames]
        for expected in ("requested", "accepted", "stream_started", "viewer_joined", "viewer_left"):
            assert expected in events, events
        assert any(f["device_id"] == WE1 for f in west_feed.of_type("live_view"))
        assert not fleet_feed.of_type("live_view")  # a fleet manager is not told about video
    finally:
        for reader in (feed, west_feed, fleet_feed):
            reader.close()
        wire.close()
    (session,) = s.rows("SELECT viewer, device_id, reason, started_at, ended_at, end_reason, consent_id"
                        " FROM viewing_sessions WHERE refused IS NULL")
    assert session[:3] == ("op-all", WE1, "officer needs support")
    assert session[3] < session[4] and session[5] == "viewer_stopped" and session[6] is not None
    (consent,) = s.rows("SELECT basis, request_id FROM live_view_consents")
    assert consent == ("accepted_request", request["request_id"])
    assert [a[0] for a in s.audit("live_view_requested")] == ["op-all"]
    assert [a[0] for a in s.audit("live_view_accepted")] == [f"device:{WE1}"]
    assert [a[0] for a in s.audit("viewing_started")] == ["op-all"]
    (ended,) = s.audit("viewing_ended")
    assert ended[0] == "op-all" and ended[2]["reason"] == "viewer_stopped" and ended[2]["duration_s"] > 0
    wait_for(lambda: _relay_empty(s), timeout=15, what="the stream to end with the simulator")


def test_camera_declines_and_the_requester_sees_it(s: Stack) -> None:
    """A camera whose officer declines answers ``declined``; the request says so (with the
    detail), the requester's websocket is told, the refusal is audited, and nothing streams."""
    feed = LiveReader(s.base, s.token("op-all"))
    try:
        with simulated_camera(s, decline_share=1.0), s.http("op-all") as http:
            request = http.post(f"/api/v1/devices/{WE1}/live-view", json={"reason": "welfare check"}).json()
            answered = wait_for(lambda: (r := http.get(f"/api/v1/live-view/requests/{request['request_id']}")
                                         .json())["status"] != "pending" and r, timeout=20, what="the answer")
            assert isinstance(answered, dict)
            assert answered["status"] == "declined" and answered["detail"] == "declined by the officer"
            wait_for(lambda: any(f["event"] == "declined" for f in feed.of_type("live_view")), what="websocket")
            listed = http.get("/api/v1/live-view/requests", params={"device_id": WE1}).json()
            assert [r["status"] for r in listed] == ["declined"]
            time.sleep(1.0)
            assert not _live(s, WE1)
    finally:
        feed.close()
    assert [a[0] for a in s.audit("live_view_declined")] == [f"device:{WE1}"]
    assert s.rows("SELECT count(*) FROM live_view_consents") == [(0,)]
    assert _relay_empty(s)


def test_camera_vanishes_viewer_is_told_and_nothing_leaks(s: Stack) -> None:
    """The officer asks to be watched (watch_me): consent, then the stream. When the camera's
    connection goes away without a DELETE, the viewer's connection is closed, websocket
    clients are told, the viewing and the consent end with a reason, and the relay holds
    nothing."""
    feed = LiveReader(s.base, s.token("op-all"))
    uplink = VideoUplink(api_url=s.base, secrets=s.secrets).open()
    viewer = AiortcViewer(s.base, s.token("op-all"), WE1, "officer asked to be watched")
    try:
        publish_all(s.mqtt_url, [(topic_for(WE1, Channel.EVENTS), event_payload(7, "watch_me"))])
        wait_for(lambda: s.rows("SELECT basis FROM live_view_consents WHERE ended_at IS NULL")
                 == [("officer_request",)], what="consent from watch_me")
        uplink.start(WE1)
        wait_for(lambda: _live(s, WE1), timeout=20, what="the stream")
        assert viewer.open() == 201, viewer.error
        wait_for(lambda: viewer.frames >= 5, timeout=20, what="frames")
        # The camera drops off the network: its peer connection closes, no DELETE is sent.
        stream = uplink._streams[WE1]
        asyncio.run_coroutine_threadsafe(stream.pc.close(), uplink._loop).result(10)  # type: ignore[arg-type]
        wait_for(lambda: viewer.state in ("closed", "failed"), timeout=40, what="the viewer being disconnected")
        wait_for(lambda: any(f["event"] == "stream_ended" for f in feed.of_type("live_view")), what="websocket")
        wait_for(lambda: _relay_empty(s), timeout=15, what="an empty relay")
    finally:
        viewer.close()
        uplink.close()
        feed.close()
    wait_for(lambda: s.rows("SELECT end_reason FROM viewing_sessions WHERE refused IS NULL")
             == [("camera_gone",)], what="the viewing's end")
    (consent,) = s.rows("SELECT basis, end_reason FROM live_view_consents")
    assert consent[0] == "officer_request" and consent[1] == "camera_lost"
    (ended,) = s.audit("viewing_ended")
    assert ended[2]["reason"] == "camera_gone" and ended[2]["stream_end_reason"] == "camera_lost"
    assert not s.live_view._viewers and not s.live_view._publishers


def test_policy_consent_ends_with_the_recording(s: Stack) -> None:
    """A firearms unit that is recording may be watched without asking: the request is
    accepted at once by policy and the camera is told; when the camera stops recording, the
    consent ends, the camera is told to stop and the stream is closed."""
    with s.db.connect() as conn:
        conn.execute("INSERT INTO device_latest (device_id, ts, recording, online)"
                     " VALUES ('lv-we-afo', now(), 'recording', true)")
    wire = Watched(s.mqtt_url, [topic_for("lv-we-afo", Channel.COMMANDS)])
    uplink = VideoUplink(api_url=s.base, secrets=s.secrets).open()
    try:
        with s.http("afo-cmd") as http:
            request = http.post("/api/v1/devices/lv-we-afo/live-view", json={"reason": "armed deployment"}).json()
        assert request["status"] == "accepted" and "policy" in request["detail"]
        wait_for(lambda: any(b["type"] == "live_view_request" and b["params"]["basis"] == "policy_recording"
                             for b in wire.bodies("/commands")), what="the camera being told")
        uplink.start("lv-we-afo")
        wait_for(lambda: _live(s, "lv-we-afo"), timeout=20, what="the stream")
        publish_all(s.mqtt_url, [(topic_for("lv-we-afo", Channel.EVENTS),
                                  event_payload(9, "recording_stopped", reason="button"))])
        wait_for(lambda: any(b["type"] == "live_view_stop" for b in wire.bodies("/commands")), what="stop command")
        wait_for(lambda: _relay_empty(s), timeout=15, what="the stream closed")
    finally:
        uplink.close()
        wire.close()
    assert s.rows("SELECT basis, end_reason FROM live_view_consents") == [("policy_recording", "recording_stopped")]
    assert [a[2]["basis"] for a in s.audit("live_view_accepted")] == ["policy_recording"]


def test_a_stream_nobody_watches_stops(pg: Database, mosquitto: MosquittoProcess) -> None:
    """With no viewer attached for live_view_idle_stop_s, the stream stops: the consent ends
    (no_viewers), the camera is sent live_view_stop and the publisher session is closed."""
    with stack(pg, mosquitto, live_view_idle_stop_s=2) as s:
        wire = Watched(s.mqtt_url, [topic_for(WE1, Channel.COMMANDS)])
        uplink = VideoUplink(api_url=s.base, secrets=s.secrets).open()
        try:
            publish_all(s.mqtt_url, [(topic_for(WE1, Channel.EVENTS), event_payload(1, "watch_me"))])
            uplink.start(WE1)
            wait_for(lambda: _live(s, WE1), timeout=20, what="the stream")
            wait_for(lambda: _relay_empty(s), timeout=15, what="the idle stop")
            wait_for(lambda: any(b["type"] == "live_view_stop" for b in wire.bodies("/commands")), what="stop")
        finally:
            uplink.close()
            wire.close()
        assert s.rows("SELECT end_reason FROM live_view_consents") == [("no_viewers",)]
        # Stopped after the idle time, not before: from the stream's start to the consent's end.
        (lasted,) = s.rows("SELECT extract(epoch FROM ended_at - publishing_since) FROM live_view_consents")[0]
        assert 2.0 <= float(lasted) < 10.0
        assert json.loads(json.dumps(s.audit("live_view_ended")[0][2]))["reason"] == "no_viewers"


def test_a_watch_me_stream_waits_for_a_viewer_while_its_alert_is_open(pg: Database,
                                                                     mosquitto: MosquittoProcess) -> None:
    """The officer asked to be watched and the control room has not resolved the alert yet:
    the stream nobody watches outlives the idle time (the timeout fires, and keeps it, more
    than once); resolved, the stream stops at the next idle timeout (no_viewers)."""
    with stack(pg, mosquitto, live_view_idle_stop_s=1) as s, \
            running_worker(database_url=pg.url, mqtt_url=mosquitto.url, settings=make_settings()):
        uplink = VideoUplink(api_url=s.base, secrets=s.secrets).open()
        try:
            publish_all(s.mqtt_url, [(topic_for(WE1, Channel.EVENTS), event_payload(1, "watch_me"))])
            wait_for(lambda: s.rows("SELECT 1 FROM alerts WHERE kind = 'watch_me' AND status = 'open'"),
                     what="the watch_me alert")
            wait_for(lambda: s.rows("SELECT 1 FROM live_view_consents WHERE ended_at IS NULL"), what="consent")
            uplink.start(WE1)
            wait_for(lambda: _live(s, WE1), timeout=20, what="the stream")
            # Three idle timeouts came and went, each keeping the stream.
            wait_for(lambda: s.live_view.idle_held >= 3, timeout=20, what="idle timeouts that keep the stream")
            assert _live(s, WE1) and s.live_view.relay.stats().streams == 1
            assert s.rows("SELECT ended_at FROM live_view_consents") == [(None,)]
            (alert_id,) = s.rows("SELECT id FROM alerts WHERE kind = 'watch_me'")[0]
            with s.http("op-all") as http:
                resolved = http.post(f"/api/v1/alerts/{alert_id}/resolve", json={"outcome": "resolved", "note": None})
                assert resolved.status_code == 200, resolved.text
            wait_for(lambda: _relay_empty(s), timeout=15, what="the idle stop after the alert was resolved")
        finally:
            uplink.close()
        assert s.rows("SELECT end_reason FROM live_view_consents") == [("no_viewers",)]


def test_every_api_process_sees_the_answer_and_exactly_one_records_it(pg: Database,
                                                                      mosquitto: MosquittoProcess) -> None:
    """With two API processes, a request made through one is answered by the camera: both
    show the answer and push it to their websocket clients, and it is recorded (and audited)
    once, whichever process handled the reply first."""
    with stack(pg, mosquitto) as a:
        settings = make_settings()
        with running_api(database_url=pg.url, mqtt_url=mosquitto.url, settings=settings) as server_b:
            b = Stack(server_b.base, mosquitto.url, pg, a.secrets, server_b.app.state.live_view, server_b.app)
            feed_b = LiveReader(b.base, b.token("op-west"))
            try:
                with simulated_camera(a, decline_share=1.0), a.http("op-all") as http_a, b.http("op-west") as http_b:
                    request = http_a.post(f"/api/v1/devices/{WE1}/live-view", json={"reason": "welfare check"}).json()
                    wait_for(lambda: http_b.get(f"/api/v1/live-view/requests/{request['request_id']}").json()
                             ["status"] == "declined", timeout=20, what="the answer, read through the other process")
                    wait_for(lambda: [f["event"] for f in feed_b.of_type("live_view")] == ["requested", "declined"],
                             what="the other process's websocket client told")
            finally:
                feed_b.close()
    assert len(a.audit("live_view_declined")) == 1
    assert len(a.audit("live_view_requested")) == 1


def test_join_and_leave_cycles_leave_nothing_behind(s: Stack) -> None:
    """Twenty viewers join and leave one stream in turn: every viewing is recorded and ended,
    the camera's last count is zero, and the API holds no viewer, timer or stray task. Then
    the camera's WHIP DELETE ends the stream and the consent (``officer_stopped``)."""
    uplink = VideoUplink(api_url=s.base, secrets=s.secrets).open()
    wire = Watched(s.mqtt_url, [topic_for(WE1, Channel.COMMANDS)])
    try:
        publish_all(s.mqtt_url, [(topic_for(WE1, Channel.EVENTS), event_payload(5, "watch_me"))])
        wait_for(lambda: s.rows("SELECT 1 FROM live_view_consents WHERE ended_at IS NULL"), what="consent")
        uplink.start(WE1)
        wait_for(lambda: _live(s, WE1), timeout=20, what="the stream")
        tasks_before = len(s.live_view._tasks)
        for cycle in range(20):
            viewer = AiortcViewer(s.base, s.token("op-all"), WE1, f"cycle {cycle}")
            try:
                assert viewer.open() == 201, viewer.error
                if cycle % 5 == 0:  # now and then, wait for pictures before leaving
                    wait_for(lambda: viewer.frames >= 1, timeout=20, what="a frame")
                assert viewer.leave() == 200
            finally:
                viewer.close()
        wait_for(lambda: s.live_view.relay.stats().viewers == 0 and not s.live_view._viewers, what="no viewers")
        wait_for(lambda: [b["params"]["viewers"] for b in wire.bodies("/commands")
                          if b["type"] == "live_view_status"][-1:] == [0], what="the camera told: nobody")
        wait_for(lambda: len(s.live_view._tasks) <= tasks_before, timeout=10, what="no handler left running")
        assert s.rows("SELECT count(*), count(ended_at) FROM viewing_sessions WHERE refused IS NULL") == [(20, 20)]
        assert s.rows("SELECT DISTINCT end_reason FROM viewing_sessions WHERE refused IS NULL") == [("viewer_stopped",)]
    finally:
        uplink.close()
        wire.close()
    wait_for(lambda: _relay_empty(s), timeout=15, what="the stream ended with the camera")
    assert not s.live_view._publishers and not s.live_view._idle
    # The camera ended it with a WHIP DELETE on its Location: the officer stopped the stream.
    wait_for(lambda: s.rows("SELECT end_reason FROM live_view_consents") == [("officer_stopped",)],
             what="the consent ended by the officer")


def test_policy_consent_ends_when_the_unit_is_seen_not_recording(s: Stack) -> None:
    """If the recording_stopped event never arrives, the unit's latest state (not recording)
    still ends a policy consent within a sweep, and the camera is told to stop."""
    with s.db.connect() as conn:
        conn.execute("INSERT INTO device_latest (device_id, ts, recording, online)"
                     " VALUES ('lv-we-afo', now(), 'recording', true)")
    wire = Watched(s.mqtt_url, [topic_for("lv-we-afo", Channel.COMMANDS)])
    try:
        with s.http("afo-cmd") as http:
            assert http.post("/api/v1/devices/lv-we-afo/live-view", json={"reason": "armed deployment"}).json()[
                "status"] == "accepted"
        with s.db.connect() as conn:
            conn.execute("UPDATE device_latest SET recording = 'buffering' WHERE device_id = 'lv-we-afo'")
        wait_for(lambda: s.rows("SELECT end_reason FROM live_view_consents") == [("recording_stopped",)],
                 timeout=10, what="the sweep")
        wait_for(lambda: any(b["type"] == "live_view_stop" for b in wire.bodies("/commands")), what="stop command")
    finally:
        wire.close()


def test_watchfloor_simulate_streams_with_provisioned_secrets(pg: Database, mosquitto: MosquittoProcess,
                                                             tmp_path: Any) -> None:
    """``watchfloor simulate --register --provision --secrets-file F --api-url URL`` gives its
    cameras secrets (written owner-only), and they answer a request and stream to the API."""
    import os
    import stat
    import subprocess
    import sys

    with stack(pg, mosquitto) as s:
        secrets_file = tmp_path / "secrets.json"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("WATCHFLOOR_")},
               "WATCHFLOOR_MQTT_URL": s.mqtt_url, "WATCHFLOOR_DATABASE_URL": pg.url}
        proc = subprocess.Popen([sys.executable, "-m", "watchfloor", "simulate", "--devices", "2", "--seed", "21",
                                 "--interval", "1", "--duration", "40", "--register", "--provision",
                                 "--decline-share", "0", "--secrets-file", str(secrets_file), "--api-url", s.base],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: secrets_file.exists() and secrets_file.stat().st_size > 2, timeout=60,
                     what="the secrets file")
            assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
            device_id = sorted(json.loads(secrets_file.read_text()))[0]
            time.sleep(2.0)  # the fleet connects and subscribes to its commands
            with s.http("op-all") as http:
                request = http.post(f"/api/v1/devices/{device_id}/live-view", json={"reason": "cli check"}).json()
                answered = wait_for(lambda: (r := http.get(f"/api/v1/live-view/requests/{request['request_id']}")
                                             .json())["status"] != "pending" and r, timeout=20, what="an answer")
            assert isinstance(answered, dict) and answered["status"] == "accepted", answered
            viewer = AiortcViewer(s.base, s.token("op-all"), device_id, "cli check")
            try:
                assert viewer.open() == 201, viewer.error
                wait_for(lambda: viewer.frames >= 5, timeout=20, what="frames from the CLI's camera")
            finally:
                viewer.close()
        finally:
            proc.terminate()
            output, _ = proc.communicate(timeout=30)
        assert "provisioned 2 devices" in output, output


def test_an_api_process_that_stops_ends_its_sessions_with_their_records(pg: Database,
                                                                        mosquitto: MosquittoProcess) -> None:
    """When the API process stops (its lifespan ends), its viewings and the consent end with
    ``server_stopping``, recorded and audited: no record is left open."""
    uplink: VideoUplink | None = None
    viewer: AiortcViewer | None = None
    try:
        with stack(pg, mosquitto) as s:
            uplink = VideoUplink(api_url=s.base, secrets=s.secrets).open()
            publish_all(s.mqtt_url, [(topic_for(WE1, Channel.EVENTS), event_payload(2, "watch_me"))])
            wait_for(lambda: s.rows("SELECT 1 FROM live_view_consents WHERE ended_at IS NULL"), what="consent")
            uplink.start(WE1)
            wait_for(lambda: _live(s, WE1), timeout=20, what="the stream")
            viewer = AiortcViewer(s.base, s.token("op-all"), WE1, "shift handover")
            assert viewer.open() == 201, viewer.error
            wait_for(lambda: viewer.frames >= 1, timeout=20, what="a frame")
    finally:
        if viewer is not None:
            viewer.close()
        if uplink is not None:
            uplink.close()
    with psycopg.connect(pg.url) as conn:
        assert conn.execute("SELECT end_reason FROM viewing_sessions WHERE refused IS NULL").fetchall() == [
            ("server_stopping",)]
        assert conn.execute("SELECT end_reason FROM live_view_consents").fetchall() == [("server_stopping",)]
        ended = conn.execute("SELECT count(*) FROM audit_log WHERE action IN ('viewing_ended', 'live_view_ended')")
        assert ended.fetchone() == (2,)


def test_a_camera_that_moves_to_another_api_process_takes_its_stream_along(pg: Database,
                                                                           mosquitto: MosquittoProcess) -> None:
    """A camera publishing through process A publishes again through process B (A died, or
    the balancer moved it): B takes the stream over and ends the viewings left open at A;
    when A's old session ends, the consent stays (it speaks for B's now), and only the
    camera's DELETE at B ends it."""
    with stack(pg, mosquitto) as a:
        with running_api(database_url=pg.url, mqtt_url=mosquitto.url, settings=make_settings()) as server_b:
            b = Stack(server_b.base, mosquitto.url, pg, a.secrets, server_b.app.state.live_view, server_b.app)
            to_a = VideoUplink(api_url=a.base, secrets=a.secrets).open()
            to_b = VideoUplink(api_url=b.base, secrets=a.secrets).open()
            try:
                publish_all(a.mqtt_url, [(topic_for(WE1, Channel.EVENTS), event_payload(4, "watch_me"))])
                wait_for(lambda: a.rows("SELECT 1 FROM live_view_consents WHERE ended_at IS NULL"), what="consent")
                to_a.start(WE1)
                wait_for(lambda: a.live_view.relay.is_publishing(WE1), timeout=20, what="the stream at A")
                with a.db.connect() as conn:  # a viewing left open by a process that died
                    conn.execute("INSERT INTO viewing_sessions (session_id, device_id, viewer, role, reason,"
                                 " consent_id) SELECT 'of-a-dead-process', device_id, 'op-all', 'operator',"
                                 " 'before the move', id FROM live_view_consents WHERE ended_at IS NULL")
                to_b.start(WE1)
                wait_for(lambda: b.live_view.relay.is_publishing(WE1), timeout=20, what="the stream at B")
                session_b = b.live_view._publishers[WE1]
                wait_for(lambda: a.rows("SELECT publisher_session FROM live_view_consents WHERE ended_at IS NULL")
                         == [(session_b,)], what="the consent following B")
                to_a.stop(WE1)  # A's old session ends (its DELETE)
                wait_for(lambda: not a.live_view.relay.is_publishing(WE1), timeout=15, what="A's session gone")
                time.sleep(1.0)
                assert a.rows("SELECT publisher_session, ended_at FROM live_view_consents") == [(session_b, None)]
                # The viewing that could not follow the stream was ended when B took over.
                assert a.rows("SELECT viewer, end_reason FROM viewing_sessions WHERE refused IS NULL") == [
                    ("op-all", "stream_moved")]
                viewer = AiortcViewer(b.base, b.token("op-all"), WE1, "after the move")
                try:
                    assert viewer.open() == 201, viewer.error
                    wait_for(lambda: viewer.frames >= 3, timeout=20, what="frames through B")
                finally:
                    viewer.close()
            finally:
                to_a.close()
                to_b.close()
            wait_for(lambda: a.rows("SELECT end_reason FROM live_view_consents") == [("officer_stopped",)],
                     what="the camera's DELETE at B ending the consent")


def test_viewings_left_open_by_a_dead_process_end_with_their_consent(s: Stack) -> None:
    """A viewing still open well after its consent ended (its API process died) is ended by
    the sweep (``consent_ended``) and audited, so 'who is watching' shows no ghost."""
    with s.db.connect() as conn:
        conn.execute("INSERT INTO live_view_consents (device_id, basis, granted_at, ended_at, end_reason)"
                     " VALUES (%s, 'officer_request', now() - interval '5 minutes', now() - interval '1 minute',"
                     " 'docked')", (WE1,))
        conn.execute("INSERT INTO viewing_sessions (session_id, device_id, viewer, role, reason, consent_id,"
                     " started_at) SELECT 'ghost', %s, 'op-all', 'operator', 'ghost', id,"
                     " now() - interval '4 minutes' FROM live_view_consents", (WE1,))
    wait_for(lambda: s.rows("SELECT end_reason FROM viewing_sessions") == [("consent_ended",)], timeout=10,
             what="the sweep")
    with s.http("op-all") as http:
        assert http.get(f"/api/v1/devices/{WE1}/viewers").json() == []
    assert [a[2]["session_id"] for a in s.audit("viewing_ended")] == ["ghost"]


def test_each_viewing_records_how_it_ended(s: Stack) -> None:
    """A viewer whose connection goes without a DELETE: connection_lost. The control room
    stopping the stream: its viewer's record says consent_ended (the audit entry says what
    ended the consent). The officer stopping it on the camera (WHIP DELETE): officer_stopped.
    (viewer_stopped, camera_gone and the idle stop have tests of their own above.)"""
    uplink = VideoUplink(api_url=s.base, secrets=s.secrets).open()
    try:
        _watched_stream(s, uplink, 11)
        stays = AiortcViewer(s.base, s.token("op-all"), WE1, "officer asked to be watched")
        drops = AiortcViewer(s.base, s.token("op-west"), WE1, "officer asked to be watched")
        try:
            assert stays.open() == 201 and drops.open() == 201
            wait_for(lambda: stays.frames >= 1 and drops.frames >= 1, timeout=20, what="frames at both")
            drops.close()  # the peer connection goes, no DELETE: a crash, a lost network
            wait_for(lambda: _ended(s, drops) is not None, timeout=40, what="the dropped viewer's end")
            assert _ended(s, drops) == "connection_lost"
            with s.http("op-all") as http:
                assert http.delete(f"/api/v1/devices/{WE1}/live-view").status_code == 200
            wait_for(lambda: _ended(s, stays) is not None, timeout=20, what="the viewing's end")
            assert _ended(s, stays) == "consent_ended"
        finally:
            stays.close()
        wait_for(lambda: _relay_empty(s) and not uplink.live, timeout=15, what="the stream closed")
        ended = {a[0]: a[2] for a in s.audit("viewing_ended")}
        assert ended["op-west"]["reason"] == "connection_lost"
        assert ended["op-all"]["reason"] == "consent_ended"
        assert ended["op-all"]["stream_end_reason"] == "stopped_by_control_room"
        # Again, and this time the officer ends it on the camera.
        _watched_stream(s, uplink, 12)
        watcher = AiortcViewer(s.base, s.token("op-all"), WE1, "officer asked again")
        try:
            assert watcher.open() == 201
            wait_for(lambda: watcher.frames >= 1, timeout=20, what="frames")
            uplink.stop(WE1)  # the officer's stop: WHIP DELETE on the session's Location
            wait_for(lambda: _ended(s, watcher) is not None, timeout=20, what="the viewing's end")
            assert _ended(s, watcher) == "officer_stopped"
        finally:
            watcher.close()
    finally:
        uplink.close()
    assert s.rows("SELECT end_reason FROM live_view_consents ORDER BY id") == [("stopped_by_control_room",),
                                                                              ("officer_stopped",)]


def test_watch_me_camera_is_told_to_dial_in_once_consent_is_in_force(s: Stack) -> None:
    """The watch-me race: the camera dials in when the API tells it to (a live_view_request
    with basis officer_request), and that is sent only once the consent is on record, so a WHIP
    made the moment the command arrives is accepted, never refused."""
    wire = Watched(s.mqtt_url, [topic_for(WE1, Channel.COMMANDS)])
    try:
        publish_all(s.mqtt_url, [(topic_for(WE1, Channel.EVENTS), event_payload(13, "watch_me"))])
        go = wait_for(lambda: [b for b in wire.bodies("/commands") if b["type"] == "live_view_request"],
                      timeout=20, what="the go-ahead")
        assert isinstance(go, list) and go[0]["params"]["basis"] == "officer_request"
        answer = _whip(s, WE1, s.secrets[WE1])  # at once: no wait, no retry
        assert answer.status_code == 201, answer.text
    finally:
        wire.close()
    (consent,) = s.rows("SELECT id, basis FROM live_view_consents")
    assert consent[1] == "officer_request" and go[0]["id"] == f"wm-{consent[0]}"


def test_simulated_camera_asked_to_be_watched_streams_without_a_refusal(s: Stack,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """The simulated camera's officer asks to be watched (its watch_me event): the camera goes
    live without a single WHIP refusal (it used to dial in with the event, be refused 403, and
    retry)."""
    caplog.set_level(logging.INFO, logger="simulator.video")
    with simulated_camera(s, decline_share=0.0):
        publish_all(s.mqtt_url, [(topic_for(WE1, Channel.EVENTS), event_payload(14, "watch_me"))])
        wait_for(lambda: _live(s, WE1), timeout=30, what="the camera streaming")
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals == []
    assert s.rows("SELECT basis FROM live_view_consents") == [("officer_request",)]
