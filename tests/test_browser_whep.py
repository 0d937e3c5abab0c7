"""A real headless Chromium plays a relayed camera over WHEP: a simulated camera publishes
over WHIP under consent, the page POSTs its offer to /api/v1/whep/{id} with a user token
and a viewing reason, and the video element's clock advances with decoded frames."""

from __future__ import annotations

import tempfile

from fastapi.responses import HTMLResponse, Response
from starlette.routing import Route

from core.contract import Channel, topic_for
from simulator.video import VideoUplink
from tests.helpers.db import Database
from tests.helpers.environment import require_executable, require_module
from tests.helpers.live_view import WE1, _live, stack
from tests.helpers.telemetry import event_payload, publish_all
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess

CHROMIUM = "/usr/bin/chromium"

# The page and its script are separate: the API's Content-Security-Policy allows scripts
# from its own origin only, never inline ones.
PAGE = """<!doctype html>
<html><body>
<video id="v" autoplay muted playsinline width="320" height="240"></video>
<script src="/test/whep.js"></script>
</body></html>"""

SCRIPT = """window.callbacks = 0;
async function play(token, device, reason) {
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addTransceiver('video', {direction: 'recvonly'});
  const video = document.getElementById('v');
  pc.ontrack = (e) => {
    video.srcObject = e.streams[0] || new MediaStream([e.track]);
    const count = () => { window.callbacks += 1; video.requestVideoFrameCallback(count); };
    video.requestVideoFrameCallback(count);
  };
  await pc.setLocalDescription(await pc.createOffer());
  // WHEP without trickle ICE: the offer goes once gathering is complete.
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
    setTimeout(resolve, 3000);
  });
  const response = await fetch('/api/v1/whep/' + device, {method: 'POST', body: pc.localDescription.sdp,
    headers: {'Content-Type': 'application/sdp', 'Authorization': 'Bearer ' + token, 'X-Viewing-Reason': reason}});
  if (response.status !== 201) return {status: response.status, body: await response.text()};
  window.sessionUrl = response.headers.get('Location');
  await pc.setRemoteDescription({type: 'answer', sdp: await response.text()});
  window.pc = pc;
  return {status: 201};
}
function quality() {
  const video = document.getElementById('v');
  const q = video.getVideoPlaybackQuality();
  return {time: video.currentTime, decoded: q.totalVideoFrames, dropped: q.droppedVideoFrames,
          callbacks: window.callbacks, width: video.videoWidth, state: window.pc ? window.pc.connectionState : null,
          colours: colours(video)};
}
// How many distinct colours the current frame has, drawn onto a canvas: a picture, not a
// black or empty box (a MediaStream is same-origin, so the canvas can be read).
function colours(video) {
  if (!video.videoWidth) return 0;
  const canvas = document.createElement('canvas');
  canvas.width = 64; canvas.height = 48;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(video, 0, 0, canvas.width, canvas.height);
  const d = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const seen = new Set();
  for (let i = 0; i < d.length; i += 4) seen.add((d[i] >> 4) << 8 | (d[i + 1] >> 4) << 4 | d[i + 2] >> 4);
  return seen.size;
}
"""


def test_chromium_plays_a_relayed_camera_over_whep(pg: Database, mosquitto: MosquittoProcess) -> None:
    """Chromium (headless, /usr/bin/chromium) plays a simulated camera relayed by the API:
    201 with a Location, the video's currentTime advances, frames are decoded
    (getVideoPlaybackQuality and requestVideoFrameCallback) and drawn (a frame copied to a
    canvas has a picture in it); the viewing is recorded."""
    require_executable(CHROMIUM, what="Chromium")
    sync_playwright = require_module("playwright.sync_api").sync_playwright
    with stack(pg, mosquitto, live_view_idle_stop_s=60) as s:
        async def page(request: object) -> HTMLResponse:
            return HTMLResponse(PAGE)

        async def script(request: object) -> Response:
            return Response(SCRIPT, media_type="text/javascript")

        uplink = VideoUplink(api_url=s.base, secrets=s.secrets).open()
        try:
            publish_all(s.mqtt_url, [(topic_for(WE1, Channel.EVENTS), event_payload(3, "watch_me"))])
            wait_for(lambda: s.rows("SELECT 1 FROM live_view_consents WHERE ended_at IS NULL"), what="consent")
            uplink.start(WE1)
            wait_for(lambda: _live(s, WE1), timeout=20, what="the camera's stream")
            # The page comes from the API itself: same origin, so the WHEP POST needs no CORS.
            s.app.router.routes.extend([Route("/test/whep.html", page), Route("/test/whep.js", script)])
            with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
                browser = playwright.chromium.launch_persistent_context(
                    profile, executable_path=CHROMIUM, headless=True,
                    args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          "--disable-features=WebRtcHideLocalIpsWithMdns",
                          "--autoplay-policy=no-user-gesture-required"])
                try:
                    tab = browser.new_page()
                    tab.goto(f"{s.base}/test/whep.html")
                    result = tab.evaluate("([t, d, r]) => play(t, d, r)", [s.token("op-all"), WE1, "browser test"])
                    assert result["status"] == 201, result
                    # Polled from here: wait_for_function evaluates a string, which the CSP forbids.
                    played = wait_for(lambda: (q := tab.evaluate("quality()"))["time"] > 2 and q["decoded"] > 20
                                      and q["callbacks"] > 20 and q, timeout=30, interval=0.25, what="playback")
                    quality = tab.evaluate("quality()")
                    assert isinstance(played, dict)
                    assert quality["width"] > 0 and quality["state"] == "connected", quality
                    # The frames were drawn: the picture has more than one colour.
                    wait_for(lambda: tab.evaluate("quality()")["colours"] > 8, timeout=10, interval=0.25,
                             what="a picture in the video element")
                    session_url = tab.evaluate("window.sessionUrl")
                    assert session_url.startswith(f"/api/v1/whep/{WE1}/")
                    # Ending the session with DELETE, as a WHEP player does.
                    status = tab.evaluate("""async ([url, t]) => (await fetch(url, {method: 'DELETE',
                        headers: {'Authorization': 'Bearer ' + t}})).status""", [session_url, s.token("op-all")])
                    assert status == 200
                finally:
                    browser.close()
        finally:
            uplink.close()
        wait_for(lambda: s.rows("SELECT viewer, reason, end_reason FROM viewing_sessions WHERE refused IS NULL")
                 == [("op-all", "browser test", "viewer_stopped")], what="the viewing record")
