"""bench/relay: the live-view relay's CPU per extra viewer and the time a frame spends
inside it, beside the relay of a pinned earlier commit (today's main, which packetised
each frame again in every viewer's sender) and aiortc's MediaRelay (decode once, encode
per viewer), all measured in the same run.

    .venv/bin/python bench/relay.py [--viewers 1,2,4,8,16] [--seconds 8] [--modes relay,baseline,mediarelay]
        [--rounds 3]
    .venv/bin/python bench/relay.py --quick     # a smoke run: 1 and 4 viewers, 2 s windows

Separate processes, all on 127.0.0.1, talking WHIP/WHEP-style HTTP (POST an SDP offer,
201 with the answer):

* the **relay** (``serve``): ``streaming.Relay`` of this checkout (mode ``relay``), the
  same of ``--baseline`` (mode ``baseline``: that commit's ``streaming/``, ``core/`` and
  ``telemetry/`` extracted with ``git archive`` into a temporary directory and run by
  this script), or a MediaRelay server as in aiortc's examples (mode ``mediarelay``).
  Its CPU is what the table reports, in % of one core (psutil, user + system, all its
  threads).
* the **camera** (``camera``): publishes a 640x480 30 fps synthetic picture (aiortc's VP8
  encoder) and runs the **probe** viewer, which decodes and reads the frame number drawn
  into each picture: latency is the time from the camera handing frame n to its encoder
  to the probe holding decoded frame n. The same process measures the **direct** path
  (camera → probe, no relay) first; "relay adds" is relayed p50 minus direct p50.
* the **audience** (``audience``): the other N-1 viewers, which take encoded frames
  without decoding them and count frames per second.

The relay and the baseline run in ``--rounds`` rounds (3 unless told), in the order relay,
baseline | baseline, relay | ...; other modes once, after them. Prints a table, then per
relay and round: CPU per extra viewer (the slope between the fewest and most viewers that
all still got ~30 fps), the relay's own p50/p99 (whole in the publisher's jitter buffer →
last packet to the viewer's socket) at the fewest and most viewers; then the ratio of this
checkout's cost per extra viewer to the baseline's (the median of the rounds' ratios, with
the lowest and highest) and to MediaRelay's. The machine is shared: compare rows of one run.

One file on purpose, though over 400 lines: each role above is a subcommand of this one
script, so that the processes it starts run exactly the code that the table describes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
# The code a ``serve`` process runs: this checkout, or the baseline's extracted tree.
CODE = Path(os.environ.get("RELAY_BENCH_CODE") or ROOT)
sys.path.insert(0, str(CODE))

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.contrib.media import MediaRelay  # noqa: E402
from aiortc.mediastreams import MediaStreamTrack  # noqa: E402

from streaming import HistogramSnapshot, InvalidOffer, NoSuchStream, Relay  # noqa: E402
from streaming.aiortc_internals import restrict_host_candidates  # noqa: E402
from streaming.client import ViewerPeer, http_exchange, start_publisher, start_viewer  # noqa: E402
from streaming.frames import EncodedFrame  # noqa: E402
from streaming.metrics import DELAY_EDGES_S  # noqa: E402
from streaming.synthetic import SyntheticVideoTrack, read_frame_number  # noqa: E402
from telemetry.embedded import free_port  # noqa: E402

LOOPBACK = ("127.0.0.1",)
STREAM = "bench-cam"
PER_PROCESS = 4  # audience viewers per process
# Today's main before the relay packetised once (issue 17 section 3): rerun against it.
BASELINE_COMMIT = "67b096a"


# -- the relay process -----------------------------------------------------------------------

Handler = Callable[[str, str, str], Awaitable[tuple[int, dict[str, str], str]]]


async def serve_http(port: int, handle: Handler) -> asyncio.AbstractServer:
    """Just enough HTTP/1.1 for POST with a body and DELETE, one request per connection."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            method, path, _ = head.split("\r\n", 1)[0].split(" ", 2)
            length = 0
            for line in head.split("\r\n")[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            body = (await reader.readexactly(length)).decode() if length else ""
            status, headers, text = await handle(method, path, body)
        except Exception as exc:  # a benchmark server: report and go on
            status, headers, text = 500, {}, repr(exc)
        data = text.encode()
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(data)}", "Connection: close",
                 *[f"{k}: {v}" for k, v in headers.items()]]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(on_client, "127.0.0.1", port)


async def serve_relay(port: int) -> None:
    relay = Relay(host_addresses=LOOPBACK)

    async def handle(method: str, path: str, body: str) -> tuple[int, dict[str, str], str]:
        parts = path.strip("/").split("/")
        try:
            if method == "POST" and parts[0] in ("publish", "view"):
                call = relay.publish if parts[0] == "publish" else relay.view
                session = await call(parts[1], body)
                return 201, {"Location": f"/session/{session.id}"}, session.answer_sdp
            if method == "DELETE" and parts[0] == "session":
                await relay.close(parts[1], reason="delete")
                return 200, {}, ""
            if method == "GET" and parts[0] == "stats":
                stats = relay.stats()
                delay = stats.forward_delay
                return 200, {}, json.dumps({"cumulative": delay.cumulative, "count": delay.count, "sum": delay.sum_s,
                                            "overflows": stats.queue_overflows,
                                            "keyframes": stats.keyframe_requests})
        except NoSuchStream:
            return 404, {}, "no such stream"
        except InvalidOffer as exc:
            return 400, {}, str(exc)
        return 404, {}, ""

    await run_server(port, handle)
    await relay.aclose()


async def serve_mediarelay(port: int) -> None:
    """aiortc's own pattern (examples/server): one MediaRelay, a subscription per viewer."""
    media_relay = MediaRelay()
    tracks: dict[str, MediaStreamTrack] = {}
    pcs: dict[str, RTCPeerConnection] = {}

    async def answer(pc: RTCPeerConnection, offer: str) -> str:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        restrict_host_candidates(pc, LOOPBACK)
        await pc.setLocalDescription(await pc.createAnswer())
        assert pc.localDescription is not None
        return pc.localDescription.sdp

    async def handle(method: str, path: str, body: str) -> tuple[int, dict[str, str], str]:
        parts = path.strip("/").split("/")
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        sid = str(len(pcs))
        pcs[sid] = pc
        if method == "POST" and parts[0] == "publish":
            pc.on("track", lambda track: tracks.__setitem__(parts[1], track))
            return 201, {"Location": f"/session/{sid}"}, await answer(pc, body)
        if method == "POST" and parts[0] == "view" and parts[1] in tracks:
            pc.addTrack(media_relay.subscribe(tracks[parts[1]]))
            return 201, {"Location": f"/session/{sid}"}, await answer(pc, body)
        await pc.close()
        return 404, {}, ""

    await run_server(port, handle)
    for pc in pcs.values():
        await pc.close()


async def run_server(port: int, handle: Handler) -> None:
    server = await serve_http(port, handle)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # the controller closes stdin to stop us
    server.close()


# -- the camera and probe process --------------------------------------------------------------


class Probe:
    """Frame send times from the camera, decoded-frame arrival times at the probe."""

    def __init__(self) -> None:
        self.sent: dict[int, float] = {}
        self.latencies: list[float] = []
        self.recording = False

    def on_sent(self, number: int, at: float) -> None:
        self.sent[number] = at
        self.sent.pop(number - 600, None)  # 20 s of history is plenty

    async def watch(self, viewer: ViewerPeer) -> None:
        assert viewer.track is not None
        while True:
            frame = await viewer.track.recv()
            now = time.time()
            number = read_frame_number(frame)  # type: ignore[arg-type]
            if self.recording and number is not None and number in self.sent:
                self.latencies.append(now - self.sent[number])


async def packets_lost(viewer: ViewerPeer | None) -> int:
    """Packets the probe's receiver counts as lost so far (RTCP's cumulative count)."""
    if viewer is None:
        return 0
    stats = await viewer.receiver.getStats()
    return sum(int(getattr(s, "packetsLost", 0) or 0) for s in stats.values() if s.type == "inbound-rtp")


async def direct_exchange(track: MediaStreamTrack, pcs: list[RTCPeerConnection]) -> Callable[[str], Awaitable[str]]:
    async def exchange(offer: str) -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.append(pc)
        pc.addTrack(track)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        restrict_host_candidates(pc, LOOPBACK)
        await pc.setLocalDescription(await pc.createAnswer())
        assert pc.localDescription is not None
        return pc.localDescription.sdp
    return exchange


async def camera(url: str) -> None:
    probe = Probe()
    track = SyntheticVideoTrack(label="BENCH-CAM", on_frame=probe.on_sent)
    pcs: list[RTCPeerConnection] = []
    watcher: asyncio.Task[None] | None = None
    viewer: ViewerPeer | None = None

    async def exchange_to(path: str) -> Callable[[str], Awaitable[str]]:
        async def exchange(offer: str) -> str:
            return (await http_exchange(url + path, offer)).answer_sdp
        return exchange

    async def command(words: list[str]) -> dict[str, Any]:
        nonlocal watcher, viewer
        if words[0] == "direct":  # camera → probe with no relay, in this process
            viewer = await start_viewer(exchange=await direct_exchange(track, pcs), host_addresses=LOOPBACK)
            watcher = asyncio.create_task(probe.watch(viewer))
        elif words[0] == "publish":
            pcs.append(await start_publisher(track=track, exchange=await exchange_to(f"/publish/{STREAM}"),
                                             host_addresses=LOOPBACK))
        elif words[0] == "probe":  # (re)connect the probe through the relay
            if watcher is not None:
                watcher.cancel()
            if viewer is not None:
                await viewer.pc.close()
            viewer = await start_viewer(exchange=await exchange_to(f"/view/{STREAM}"), host_addresses=LOOPBACK)
            watcher = asyncio.create_task(probe.watch(viewer))
        elif words[0] == "measure":
            probe.latencies.clear()
            probe.recording = True
            lost = await packets_lost(viewer)
            await asyncio.sleep(float(words[1]))
            probe.recording = False
            return {"latencies": probe.latencies, "probe_lost": await packets_lost(viewer) - lost}
        return {}

    await command_loop(command)


# -- the audience process ----------------------------------------------------------------------


async def audience(url: str) -> None:
    viewers: list[tuple[ViewerPeer, list[int]]] = []

    async def add() -> None:
        counter = [0]

        def on_frame(frame: EncodedFrame) -> None:
            counter[0] += 1

        async def exchange(offer: str) -> str:
            return (await http_exchange(f"{url}/view/{STREAM}", offer)).answer_sdp

        viewers.append((await start_viewer(exchange=exchange, on_frame=on_frame, host_addresses=LOOPBACK), counter))

    async def command(words: list[str]) -> dict[str, Any]:
        if words[0] == "viewers":
            while len(viewers) < int(words[1]):
                await add()
        elif words[0] == "measure":
            before = [c[0] for _, c in viewers]
            await asyncio.sleep(float(words[1]))
            return {"fps": [(c[0] - b) / float(words[1]) for (_, c), b in zip(viewers, before)]}
        return {}

    await command_loop(command)


async def command_loop(command: Callable[[list[str]], Awaitable[dict[str, Any]]]) -> None:
    """One command per stdin line, one JSON answer per stdout line; EOF ends the process."""
    while line := await asyncio.to_thread(sys.stdin.readline):
        result = await command(line.split())
        print(json.dumps(result), flush=True)


# -- the controller ----------------------------------------------------------------------------


class Child:
    def __init__(self, *args: str, code: Path = ROOT) -> None:
        env = dict(os.environ, PYTHONPATH=str(code), RELAY_BENCH_CODE=str(code))
        self.proc = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=ROOT, env=env)
        self.ps = psutil.Process(self.proc.pid)

    def ask(self, line: str) -> dict[str, Any]:
        self.send(line)
        return self.reply()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        text = self.proc.stdout.readline()
        if not text:
            raise RuntimeError(f"child {self.proc.args[2:]} ended")
        return dict(json.loads(text)) if text.startswith("{") else {"line": text.strip()}

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class Row:
    what: str
    viewers: int
    relay_cpu: float | None
    p50_ms: float | None
    p99_ms: float | None
    min_fps: float | None
    inside_p50_ms: float | None = None
    inside_p99_ms: float | None = None
    load: float = 0.0  # the machine's 1-minute load average after the window (2 cores)
    overflows: int | None = None  # viewer queues that overflowed in the relay during the window
    probe_lost: int | None = None  # packets the probe never received
    keyframes: int | None = None  # keyframes the relay asked the camera for
    audience_cpu: float | None = None


def relay_delay(url: str) -> tuple[HistogramSnapshot, int, int] | None:
    """The forwarding relay's own histogram (jitter buffer to last packet sent) and its
    queue overflows so far, if it has them."""
    if not url:
        return None
    try:
        with urllib.request.urlopen(f"{url}/stats", timeout=5) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError:
        return None
    snapshot = HistogramSnapshot(DELAY_EDGES_S, tuple(data["cumulative"]), data["count"], data["sum"])
    return snapshot, data["overflows"], data["keyframes"]


def quantiles(samples: list[float]) -> tuple[float | None, float | None]:
    if len(samples) < 10:
        return None, None
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return q[49] * 1000, q[98] * 1000


def measure(what: str, n: int, seconds: float, relay: Child | None, cam: Child, crowds: list[Child],
            url: str = "") -> Row:
    delay_before = relay_delay(url)
    start_cpu, start = (relay.cpu() if relay else 0.0), time.monotonic()
    crowd_cpu = sum(c.cpu() for c in crowds)
    cam.send(f"measure {seconds}")
    for crowd in crowds:
        crowd.send(f"measure {seconds}")
    reply = cam.reply()
    latencies = reply.get("latencies", [])
    fps = [f for crowd in crowds for f in crowd.reply().get("fps", [])]
    wall = time.monotonic() - start
    cpu = 100 * (relay.cpu() - start_cpu) / wall if relay else None
    p50, p99 = quantiles(latencies) if n > 0 else (None, None)
    row = Row(what, n, cpu, p50, p99, min(fps) if fps else None, load=os.getloadavg()[0],
              audience_cpu=100 * (sum(c.cpu() for c in crowds) - crowd_cpu) / wall if crowds else None,
              probe_lost=reply.get("probe_lost") if n > 0 else None)
    delay_after = relay_delay(url)
    if delay_before is not None and delay_after is not None:
        window = delay_after[0].minus(delay_before[0])
        row.overflows = delay_after[1] - delay_before[1]
        row.keyframes = delay_after[2] - delay_before[2]
        inside = window.quantile(0.5), window.quantile(0.99)
        row.inside_p50_ms, row.inside_p99_ms = [None if v is None else v * 1000 for v in inside]
    return row


def run_mode(mode: str, counts: list[int], seconds: float, warmup: float, baseline: Path | None,
             label: str | None = None) -> list[Row]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if mode == "baseline":
        assert baseline is not None
        relay = Child("serve", "relay", str(port), code=baseline)
    else:
        relay = Child("serve", mode, str(port))
    cam = Child("camera", url)
    crowds: list[Child] = []
    rows = []
    try:
        assert relay.reply().get("line") == "ready"
        cam.ask("publish")
        time.sleep(warmup)
        rows.append(measure(label or mode, 0, seconds, relay, cam, [], url))
        print(format_rows(rows[-1:]), flush=True)
        for n in counts:
            # The audience in processes of at most PER_PROCESS viewers: on a shared box one
            # process holding every viewer is scheduled like one task and falls behind.
            while len(crowds) * PER_PROCESS < n - 1:
                crowds.append(Child("audience", url))
            for i, crowd in enumerate(crowds):
                crowd.ask(f"viewers {max(0, min(PER_PROCESS, n - 1 - i * PER_PROCESS))}")
            # A fresh probe per row: a probe that fell behind once (its decoded frames
            # queue without bound in aiortc) would carry that backlog into every later row.
            cam.ask("probe")
            time.sleep(warmup)
            rows.append(measure(label or mode, n, seconds, relay, cam, crowds, url))
            print(format_rows(rows[-1:]), flush=True)
    finally:
        for child in (*crowds, cam, relay):
            child.stop()
    return rows


def run_direct(seconds: float, warmup: float) -> Row:
    cam = Child("camera", "")
    try:
        cam.ask("direct")
        time.sleep(warmup)
        return measure("direct (no relay)", 1, seconds, None, cam, [])
    finally:
        cam.stop()


def format_rows(rows: list[Row], header: bool = False) -> str:
    def f(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    lines = []
    if header:
        lines += ["| relay | viewers | relay CPU % of a core | camera→probe p50 ms | p99 ms "
                  "| inside the relay p50 ms | p99 ms | queue overflows | keyframes asked | probe lost packets "
                  "| slowest viewer fps | viewers' CPU % | load avg |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.what} | {r.viewers} | {f(r.relay_cpu, '.1f')} | {f(r.p50_ms, '.1f')} | "
                     f"{f(r.p99_ms, '.1f')} | {f(r.inside_p50_ms, '.2f')} | {f(r.inside_p99_ms, '.2f')} "
                     f"| {'-' if r.overflows is None else r.overflows} | {'-' if r.keyframes is None else r.keyframes} "
                     f"| {'-' if r.probe_lost is None else r.probe_lost} | {f(r.min_fps, '.1f')} "
                     f"| {f(r.audience_cpu, '.0f')} | {r.load:.1f} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("serve", "camera", "audience"):
        role, role_args = sys.argv[1], sys.argv[2:]
        if role == "serve":
            port = int(role_args[1])
            asyncio.run(serve_relay(port) if role_args[0] == "relay" else serve_mediarelay(port))
        elif role == "camera":
            asyncio.run(camera(role_args[0]))
        else:
            asyncio.run(audience(role_args[0]))
        return

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", default="1,2,4,8,16")
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement window per row")
    parser.add_argument("--warmup", type=float, default=2.0, help="settling time after each change")
    parser.add_argument("--modes", default="relay,baseline,mediarelay")
    parser.add_argument("--baseline", default=BASELINE_COMMIT, help="the commit whose relay mode baseline runs")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of relay and baseline, in alternating order; the ratio printed is their median")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (1 and 4 viewers, 2 s windows, 1 s warm-up): proves the bench works, "
                             "measures nothing worth keeping")
    args = parser.parse_args()
    if args.quick:
        args.viewers, args.seconds, args.warmup, args.rounds = "1,4", 2.0, 1.0, 1
    counts = [int(n) for n in args.viewers.split(",")]
    modes = args.modes.split(",")

    with tempfile.TemporaryDirectory(prefix="relay-baseline-") as tmp:
        baseline = extract_baseline(args.baseline, Path(tmp)) if "baseline" in modes else None
        print(format_rows([], header=True), flush=True)
        direct = run_direct(args.seconds, args.warmup)
        print(format_rows([direct]), flush=True)
        # The relay and the baseline in rounds, in the order relay, baseline | baseline,
        # relay | ...: one window each gave ratios from 0.38 to 0.65 on one quiet evening, and
        # a drift over the run weighs on both alike. Other modes run once, after them.
        paired = [m for m in ("relay", "baseline") if m in modes]
        results: dict[str, list[Row]] = {}
        for n in range(1, args.rounds + 1):
            for mode in paired if n % 2 else paired[::-1]:
                label = mode if args.rounds == 1 else f"{mode} #{n}"
                results[label] = run_mode(mode, counts, args.seconds, args.warmup, baseline, label)
        for mode in modes:
            if mode not in paired:
                results[mode] = run_mode(mode, counts, args.seconds, args.warmup, baseline)

    print()
    print(format_rows([direct] + [r for rows in results.values() for r in rows], header=True))
    print()
    slopes = {}
    for label, rows in results.items():
        named = label.replace("baseline", f"baseline ({args.baseline})")
        text, slopes[label] = summary(named, rows, direct)
        print(text)
    labels = [(f"relay #{n}", f"baseline #{n}") if args.rounds > 1 else ("relay", "baseline")
              for n in range(1, args.rounds + 1)]
    ratios = [mine / theirs for mine, theirs in ((slopes.get(a), slopes.get(b)) for a, b in labels)
              if mine is not None and theirs]
    if ratios:
        spread = f" (rounds {min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
        print(f"relay / baseline: {statistics.median(ratios):.2f} of its CPU per extra viewer, the median of "
              f"{len(ratios)} round{'s' if len(ratios) > 1 else ''}{spread}")
    relays = [v for k, v in slopes.items() if k.startswith("relay") and v is not None]
    theirs = slopes.get("mediarelay")
    if relays and theirs:
        print(f"relay / mediarelay: {statistics.median(relays) / theirs:.2f} of its CPU per extra viewer")


def extract_baseline(commit: str, into: Path) -> Path:
    """The relay's code at ``commit`` (and what it imports), as files in ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "streaming", "core", "telemetry"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def summary(mode: str, rows: list[Row], direct: Row) -> tuple[str, float | None]:
    """CPU per extra viewer over the rows where every viewer still got about 30 fps (beyond
    that the relay, or the machine, is saturated and the slope means nothing), the relay's
    own p50/p99 at the fewest and the most viewers, and the p50 the relay added over the
    direct path at each viewer count. Also returns the slope."""
    kept_up = [r for r in rows if r.viewers >= 1 and r.relay_cpu is not None
               and (r.min_fps is None or r.min_fps >= 27)]
    text = f"{mode}: "
    slope = None
    if len(kept_up) >= 2:
        lo, hi = kept_up[0], kept_up[-1]
        assert lo.relay_cpu is not None and hi.relay_cpu is not None
        slope = (hi.relay_cpu - lo.relay_cpu) / (hi.viewers - lo.viewers)
        text += f"{slope:.2f}% of a core per extra viewer ({lo.viewers}→{hi.viewers} viewers, all at ~30 fps)"
    else:
        text += "too few rows at ~30 fps for a CPU per extra viewer"
    watched = [r for r in rows if r.viewers >= 1]
    inside = [f"{r.viewers}: {r.inside_p50_ms:.2f} / {r.inside_p99_ms:.2f}" for r in (watched[:1] + watched[-1:])
              if r.inside_p50_ms is not None and r.inside_p99_ms is not None]
    if inside:
        text += f"; inside the relay p50 / p99 ms (by viewers): {', '.join(dict.fromkeys(inside))}"
    saturated = [r.viewers for r in rows if r.min_fps is not None and r.min_fps < 27]
    if saturated:
        text += f"; viewers below 27 fps from {min(saturated)} viewers"
    if direct.p50_ms is not None:
        added = ", ".join(f"{r.viewers}: {r.p50_ms - direct.p50_ms:+.1f}" for r in rows if r.p50_ms is not None)
        text += f"; p50 added over direct (ms, by viewers): {added}"
    return text, slope


if __name__ == "__main__":
    main()
