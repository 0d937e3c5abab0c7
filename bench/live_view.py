"""Live view, end to end: how long from an operator's request, and from "Watch now" on an
officer's watch_me alert, to the first decoded frame; both paths in the same run.

One run: a scratch database and Mosquitto, the API (uvicorn, in this process), an ingest
worker (it raises the watch_me alerts), simulated cameras that answer over MQTT and publish a
synthetic picture over WHIP (their own thread and event loop), and an aiortc viewer over
WHEP. First the request path, for each of ``--rounds`` cameras in turn:

* request -> answer: ``POST /devices/{id}/live-view`` until the request reads ``accepted``
  (command to the camera over the broker, its reply, the API's transaction);
* WHEP -> 201: the viewer's POST, which waits while the camera dials in (WHIP, ICE, DTLS);
* 201 -> first frame: ICE and DTLS to the relay, a keyframe asked of the camera, decoded;
* request -> first frame: what the operator waits for.

Then the "Watch now" path, for the same cameras again: the camera sends ``watch_me`` (a
fresh MQTT connection publishes it on the camera's events topic: a few ms of the first step
on loopback); the API records the officer's consent and tells the camera to dial in, while
ingest raises the alert:

* watch_me -> alert: until ``GET /alerts`` lists the unit's open watch_me alert (what the
  dashboard's alert list shows; its live feed is pushed, not polled, so a little sooner);
* Watch now -> accepted: the request with the alert as reason, covered by the officer's ask
  (rule ``officer_asked``: the camera is not asked again);
* Watch now -> first frame: the request, the WHEP POST (the camera is usually live by now)
  and the first decoded frame: what the operator waits for after pressing it;
* watch_me -> first frame: what the officer waits for.

After each round the viewer leaves and the operator stops the stream. Needs PostgreSQL on
:5432 and mosquitto. ``python bench/live_view.py --rounds 10``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from datetime import datetime, timezone

import httpx
import orjson
import psycopg
import uvicorn
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from common import scratch_stack  # first: it puts the repository on the path

from api.app import WS_DEFLATE, WS_IMPL, create_app  # noqa: E402,I001
from core import mqtt  # noqa: E402
from core.contract import Channel, topic_for  # noqa: E402
from core.settings import Settings  # noqa: E402
from services.accounts import Role, add_user  # noqa: E402
from services.registry import DeviceRecord, provision_device  # noqa: E402
from simulator.camera import CameraPolicy  # noqa: E402
from simulator.run import Simulator  # noqa: E402
from simulator.video import VideoUplink  # noqa: E402
from telemetry.embedded import free_port  # noqa: E402
from telemetry.ingest import IngestWorker  # noqa: E402

PASSWORD = "benchmark password 1"
SECRET = "bench-secret-" + "x" * 40


async def _first_frame(base: str, bearer: str, device_id: str) -> tuple[float, float, str]:
    """(seconds to 201, seconds from 201 to the first decoded frame, session URL)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    got = asyncio.get_running_loop().create_future()

    @pc.on("track")
    def on_track(track: object) -> None:
        async def read() -> None:
            try:
                await track.recv()  # type: ignore[attr-defined]
                if not got.done():
                    got.set_result(time.perf_counter())
                while True:
                    await track.recv()  # type: ignore[attr-defined]
            except MediaStreamError:
                pass
        asyncio.ensure_future(read())

    await pc.setLocalDescription(await pc.createOffer())
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(f"{base}/api/v1/whep/{device_id}", content=pc.localDescription.sdp,
                                   headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {bearer}",
                                            "X-Viewing-Reason": "benchmark"})
    created = time.perf_counter()
    if response.status_code != 201:
        raise RuntimeError(f"WHEP {response.status_code}: {response.text}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
    first = await asyncio.wait_for(got, 30)
    location = response.headers["location"]
    await asyncio.sleep(0.5)
    async with httpx.AsyncClient(timeout=30) as http:
        await http.delete(f"{base}{location}", headers={"Authorization": f"Bearer {bearer}"})
    await pc.close()
    return created - started, first - created, location


async def _rounds(base: str, device_ids: list[str], bearer: str) -> list[tuple[float, float, float]]:
    out = []
    headers = {"Authorization": f"Bearer {bearer}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
        for device_id in device_ids:
            t0 = time.perf_counter()
            request = (await http.post(f"/api/v1/devices/{device_id}/live-view", json={"reason": "benchmark"})).json()
            while True:
                status = (await http.get(f"/api/v1/live-view/requests/{request['request_id']}")).json()["status"]
                if status != "pending":
                    break
                await asyncio.sleep(0.005)
            answered = time.perf_counter() - t0
            if status != "accepted":
                raise RuntimeError(f"{device_id}: {status}")
            to_201, to_frame, _ = await _first_frame(base, bearer, device_id)
            out.append((answered, to_201, to_frame))
            await http.delete(f"/api/v1/devices/{device_id}/live-view")
            print(f"  {device_id}: answer {answered * 1000:.0f} ms, WHEP 201 {to_201 * 1000:.0f} ms, "
                  f"first frame {to_frame * 1000:.0f} ms", flush=True)
    return out


def _watch_me(mqtt_url: str, device_id: str, seq: int) -> None:
    """The officer presses "watch me": the event as the camera sends it."""
    ts = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    payload = orjson.dumps({"seq": seq, "ts": ts, "type": "watch_me"})
    if not mqtt.publish_all(mqtt_url, [(topic_for(device_id, Channel.EVENTS), payload)], client_id="bench-lv-officer"):
        raise RuntimeError("the broker did not take the watch_me")


async def _watch_now_rounds(base: str, mqtt_url: str, device_ids: list[str],
                            bearer: str) -> list[tuple[float, float, float, float]]:
    """Per camera: (watch_me -> alert, Watch now -> accepted, WHEP -> 201, 201 -> first frame)."""
    out = []
    headers = {"Authorization": f"Bearer {bearer}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
        for seq, device_id in enumerate(device_ids, start=1_000_000):
            t0 = time.perf_counter()
            await asyncio.to_thread(_watch_me, mqtt_url, device_id, seq)
            while True:
                page = (await http.get("/api/v1/alerts", params={"status": "open", "kind": "watch_me"})).json()
                alert = next((a for a in page["items"] if a["device_id"] == device_id), None)
                if alert is not None:
                    break
                await asyncio.sleep(0.005)
            alerted = time.perf_counter()
            # The dashboard's Watch now: the same request, the alert as its reason.
            request = (await http.post(f"/api/v1/devices/{device_id}/live-view",
                                       json={"reason": f"Watch me alert: {alert['detail']}"})).json()
            while request["status"] == "pending":  # only if the alert beat the consent to the database
                await asyncio.sleep(0.005)
                request = (await http.get(f"/api/v1/live-view/requests/{request['request_id']}")).json()
            accepted = time.perf_counter()
            if request["status"] != "accepted":
                raise RuntimeError(f"{device_id}: {request['status']}")
            to_201, to_frame, _ = await _first_frame(base, bearer, device_id)
            out.append((alerted - t0, accepted - alerted, to_201, to_frame))
            await http.delete(f"/api/v1/devices/{device_id}/live-view")
            await http.post(f"/api/v1/alerts/{alert['id']}/resolve", json={"outcome": "resolved", "note": "benchmark"})
            print(f"  {device_id}: alert {(alerted - t0) * 1000:.0f} ms, Watch now accepted "
                  f"{(accepted - alerted) * 1000:.0f} ms ({request['covered_rule'] or 'asked'}), "
                  f"WHEP 201 {to_201 * 1000:.0f} ms, first frame {to_frame * 1000:.0f} ms", flush=True)
    return out


def _row(name: str, values: list[float]) -> str:
    values = sorted(values)
    return (f"| {name} | {statistics.median(values) * 1000:.0f} | {values[-1] * 1000:.0f} | "
            f"{min(values) * 1000:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    with scratch_stack(args.pg, prefix="bench-live-view") as (broker, db_url):
        sim = Simulator(mqtt_url=broker.url, devices=args.rounds, interval_s=1.0, seed=11,
                        camera_policy=CameraPolicy(decline_share=0.0), client_prefix="bench-lv")
        secrets: dict[str, str] = {}
        with psycopg.connect(db_url) as conn:
            add_user(conn, username="op", password=PASSWORD, role=Role.OPERATOR, areas=["*"])
            for u in sim.units:
                secrets[u.device_id] = provision_device(
                    conn, record=DeviceRecord(u.device_id, u.callsign, u.officer, u.borough.name, u.role))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        video = VideoUplink(api_url=base, secrets=secrets).open()
        sim.attach_video(video)  # the fleet was built first to provision its ids
        app = create_app(settings=Settings(), database_url=db_url, mqtt_url=broker.url, signing_secret=SECRET,
                         audit_key=None)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                               ws=WS_IMPL, ws_per_message_deflate=WS_DEFLATE))
        ingest = IngestWorker(settings=Settings(), database_url=db_url, mqtt_url=broker.url)
        threads = [threading.Thread(target=server.run, daemon=True), threading.Thread(target=sim.run, daemon=True),
                   threading.Thread(target=ingest.run, daemon=True)]
        for thread in threads:
            thread.start()
        while not server.started:
            time.sleep(0.05)
        time.sleep(1.0)  # the simulator's connections and subscriptions
        bearer = httpx.post(f"{base}/api/v1/auth/token", json={"username": "op", "password": PASSWORD}).json()
        device_ids = [u.device_id for u in sim.units]
        try:
            results = asyncio.run(_rounds(base, device_ids, bearer["access_token"]))
            watched = asyncio.run(_watch_now_rounds(base, broker.url, device_ids, bearer["access_token"]))
        finally:
            ingest.stop()
            sim.stop()
            video.close()
            server.should_exit = True
            for thread in threads:
                thread.join(20)
    print(f"\n{len(results)} cameras, 320x240 at 15 fps VP8, one viewer each, all on 127.0.0.1\n")
    print("| step | p50 ms | max ms | min ms |\n|---|---|---|---|")
    print(_row("request -> camera's answer (MQTT round trip, recorded)", [r[0] for r in results]))
    print(_row("WHEP POST -> 201 (waits while the camera dials in)", [r[1] for r in results]))
    print(_row("201 -> first decoded frame", [r[2] for r in results]))
    print(_row("request -> first decoded frame", [r[0] + r[1] + r[2] for r in results]))
    print(_row("watch_me -> alert listed (ingest, GET /alerts)", [w[0] for w in watched]))
    print(_row("Watch now -> accepted (covered by the officer's ask)", [w[1] for w in watched]))
    print(_row("Watch now: WHEP POST -> 201", [w[2] for w in watched]))
    print(_row("Watch now: 201 -> first decoded frame", [w[3] for w in watched]))
    print(_row("**Watch now -> first decoded frame**", [w[1] + w[2] + w[3] for w in watched]))
    print(_row("watch_me -> first decoded frame", [sum(w) for w in watched]))


if __name__ == "__main__":
    main()
