"""Live view's limits through the real API over HTTP (PostgreSQL, Mosquitto, uvicorn, the
relay, cameras publishing over WHIP): offers the relay will not take are 400s that say
why, and WHEP sessions are capped per user, per camera and per process, a session counting
as a viewer only once it is connected."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from core.commands import ReplyStatus, reply
from core.contract import Channel, topic_for
from simulator.video import VideoUplink
from tests.helpers.db import Database
from tests.helpers.live_view import WE1, AiortcViewer, Stack, Watched, _live, stack
from tests.helpers.offers import real_offer
from tests.helpers.processes import scrape
from tests.helpers.telemetry import event_payload, publish_all
from tests.helpers.waiting import run, wait_for
from watchfloor.mosquitto import MosquittoProcess

AFO = "lv-we-afo"  # a second Westminster camera


def _with_audio_sections(offer: str, n: int) -> str:
    """``offer`` and ``n`` small audio sections that aiortc takes and answers: their ICE and
    DTLS parameters said once, at session level (what the 64 KiB attack offer did)."""
    shared = dict.fromkeys(line for line in offer.split("\r\n")
                           if line.startswith(("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:", "a=setup:")))
    head = offer.replace("t=0 0\r\n", "t=0 0\r\n" + "".join(f"{line}\r\n" for line in shared), 1)
    return head + "".join(f"m=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:x{i}\r\na=recvonly\r\n"
                          f"a=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\n" for i in range(n))


@contextmanager
def streaming(s: Stack, *devices: str) -> Iterator[VideoUplink]:
    """``devices`` live: their officers press "watch me" and their cameras publish over WHIP."""
    uplink = VideoUplink(api_url=s.base, secrets=s.secrets).open()
    try:
        publish_all(s.mqtt_url, [(topic_for(d, Channel.EVENTS), event_payload(5, "watch_me")) for d in devices])
        for device in devices:
            wait_for(lambda d=device: s.rows("SELECT 1 FROM live_view_consents WHERE device_id = %s"  # type: ignore[misc]
                                             " AND ended_at IS NULL", (d,)), what=f"consent of {device}")
            uplink.start(device)
            wait_for(lambda d=device: _live(s, d), timeout=20, what=f"{device} streaming")  # type: ignore[misc]
        yield uplink
    finally:
        uplink.close()


def _whep(http: httpx.Client, device_id: str, sdp: str) -> httpx.Response:
    return http.post(f"/api/v1/whep/{device_id}", content=sdp,
                     headers={"Content-Type": "application/sdp", "X-Viewing-Reason": "limits test"})


def test_offers_the_relay_will_not_take_are_400s_with_the_reason(pg: Database, mosquitto: MosquittoProcess) -> None:
    """Over WHEP and WHIP: an offer with more media sections than allowed (the bundled-audio
    offer that stalled the loop), one with a section that says no direction (a 500 before:
    createAnswer raised outside the relay's try), and one with too many candidates are each
    refused with 400 ``invalid_offer`` naming the problem; a good offer still plays."""
    good = run(real_offer("recvonly", audio=True))
    bad = {
        "media sections": _with_audio_sections(good, 30),
        "bytes, more than": _with_audio_sections(good, 520),  # near 64 KiB: the offer that stalled the loop
        "has no direction": good.replace("a=recvonly\r\n", "", 1),
        "candidates, more than": good.replace(
            "a=end-of-candidates", "".join(f"a=candidate:{i} 1 udp 100 10.0.0.{i} 9 typ host\r\n"
                                           for i in range(20)) + "a=end-of-candidates", 1),
    }
    with stack(pg, mosquitto) as s, streaming(s, WE1), s.http("op-all") as http:
        for words, sdp in bad.items():
            assert len(sdp.encode()) <= 64 * 1024  # under the route's own limit: the relay's check answers
            response = _whep(http, WE1, sdp)
            assert response.status_code == 400, (words, response.status_code, response.text[:300])
            error = response.json()["error"]
            assert error["code"] == "invalid_offer" and words in error["message"], error
        publish = run(real_offer("sendonly")).replace("a=sendonly\r\n", "", 1)
        whip = httpx.post(f"{s.base}/api/v1/whip/{WE1}", content=publish, timeout=15,
                          headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {s.secrets[WE1]}"})
        assert whip.status_code == 400 and "has no direction" in whip.json()["error"]["message"], whip.text
        viewer = AiortcViewer(s.base, s.token("op-all"), WE1, "still plays")
        try:
            assert viewer.open() == 201, viewer.error
            wait_for(lambda: viewer.frames >= 1, timeout=20, what="a frame")
        finally:
            viewer.close()


def test_whep_sessions_are_capped_and_count_once_connected(pg: Database, mosquitto: MosquittoProcess) -> None:
    """The same offer posted in a loop makes no more sessions than the caps allow (3 per
    user, 3 per camera, 4 per process here): 409 past the user's or the camera's cap, 429
    with Retry-After past the process's, each refusal recorded; a session ended gives its
    slot back. Sessions that never connect are not viewers: the camera is told 1 only when
    a real viewer connects, never the number of sessions answered."""
    sdp = run(real_offer("recvonly"))
    caps = {"live_view_max_sessions_per_user": 3, "live_view_max_viewers_per_camera": 3, "live_view_max_viewers": 4}
    with stack(pg, mosquitto, **caps) as s, streaming(s, WE1, AFO):
        wire = Watched(s.mqtt_url, [topic_for(WE1, Channel.COMMANDS)])
        try:
            with s.http("op-all") as op_all, s.http("op-west") as op_west:
                loop = [_whep(op_all, WE1, sdp) for _ in range(10)]
                assert [r.status_code for r in loop] == [201] * 3 + [409] * 7
                assert "3 viewing sessions open" in loop[-1].json()["error"]["message"]
                camera_full = _whep(op_west, WE1, sdp)
                assert camera_full.status_code == 409 and "has 3 viewers" in camera_full.text
                assert _whep(op_west, AFO, sdp).status_code == 201
                busy = _whep(op_west, AFO, sdp)
                assert busy.status_code == 429 and "try again later" in busy.text
                assert int(busy.headers["Retry-After"]) > 0
                assert s.live_view.relay.stats().viewers == 0  # answered, none connected
                refused = s.rows("SELECT count(*) FROM viewing_sessions WHERE refused IS NOT NULL")[0][0]
                assert refused == 9 and len(s.audit("viewing_refused")) == 9
                # Two of op-all's sessions end: their slots come back, one for a real viewer.
                for response in loop[:2]:
                    assert op_all.delete(response.headers["location"]).status_code == 200
                assert _whep(op_west, AFO, sdp).status_code == 201
            viewer = AiortcViewer(s.base, s.token("op-all"), WE1, "a real viewer")
            try:
                assert viewer.open() == 201, viewer.error
                wait_for(lambda: viewer.frames >= 1, timeout=20, what="a frame at the real viewer")
                wait_for(lambda: 1 in _counts(wire), what="the camera told of its one viewer")
                assert max(_counts(wire)) == 1, _counts(wire)
            finally:
                viewer.close()
        finally:
            wire.close()


def _counts(wire: Watched) -> list[int]:
    bodies: list[dict[str, Any]] = wire.bodies("/commands")
    return [b["params"]["viewers"] for b in bodies if b["type"] == "live_view_status"]


def test_one_camera_flooding_its_events_cannot_crowd_out_another_cameras_answer(
        pg: Database, mosquitto: MosquittoProcess) -> None:
    """A Camden camera floods its events topic with watch_me (2,000 messages, into an inbox of
    20). Its messages past its own rate are dropped before the shared inbox and counted (in
    /metrics too), the inbox never overflows, and WE1's acceptance, sent after the flood, is
    recorded."""
    with stack(pg, mosquitto, live_view_inbox_max=20, live_view_intake_per_device_per_s=1.0,
               live_view_intake_per_device_burst=5, api_metrics=True) as s:
        with s.http("op-all") as http:
            created = http.post(f"/api/v1/devices/{WE1}/live-view", json={"reason": "officer needs support"})
            assert created.status_code == 201, created.text
            request_id = created.json()["request_id"]
            flood = [(topic_for("lv-ca-1", Channel.EVENTS), event_payload(seq, "watch_me")) for seq in range(2000)]
            publish_all(s.mqtt_url, flood, client_id="test-flooder")
            publish_all(s.mqtt_url, [(topic_for(WE1, Channel.COMMAND_REPLIES),
                                      reply(command_id=request_id, status=ReplyStatus.ACCEPTED))])
            answered = wait_for(lambda: (r := http.get(f"/api/v1/live-view/requests/{request_id}").json())["status"]
                                != "pending" and r, timeout=30, what="WE1's answer recorded")
            assert answered["status"] == "accepted"
        # Published before the reply, the flood has passed the intake by now; at most the
        # burst and what the rate refilled while it arrived got through.
        wait_for(lambda: s.live_view.intake_over_rate >= 1900, timeout=30, what="the flood dropped over its rate")
        assert s.live_view.inbox_dropped == 0
        metrics = scrape(f"{s.base}/metrics")
        assert metrics['watchfloor_live_view_intake_dropped_total{reason="over_rate"}'] >= 1900
        assert metrics['watchfloor_live_view_intake_dropped_total{reason="inbox_full"}'] == 0
