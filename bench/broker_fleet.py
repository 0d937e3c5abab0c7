"""bench/broker_fleet: one Mosquitto at fleet scale, over the cameras' real listener (TLS with the
dynamic-security plugin), beside the plain-TCP cost the sizing model's ``k_broker`` is made of.

    .venv/bin/python bench/broker_fleet.py [--cameras 22000] [--generators 2] [--concurrency 200]
        [--keepalive 30] [--idle 75] [--rate CAMERAS] [--seconds 20]

Starts Mosquitto from deploy/mosquitto/mosquitto.conf with the cameras' listener of
conf.d/tls.conf (a throwaway CA and certificate made now in a scratch folder, this machine's
dynamic-security plugin, and a plugin file of ``--cameras`` logins written by
services/device_accounts.py, each camera with its own secret and role), the services' listener
anonymous as in the other benchmarks. ``--generators`` processes of bench/fleet_cameras.py
each hold a share of the cameras, one TLS connection and login each. Then, in one run:

a) **reconnect storm**: every camera connects at once (at most ``--concurrency`` handshakes in
   flight per generator), as after an outage: the broker's CPU seconds per connection, the
   wall time until every CONNACK, the broker's resident memory before and after;
b) **idle**: the connections held for ``--idle`` seconds (75) with only the keep-alive
   (``--keepalive``, the simulator's 30 s; the contract sets none): the broker's % of a core
   and its memory per connection;
c) **per message**: telemetry at ``--rate`` a second in all (default: each camera at 1 Hz)
   for ``--seconds`` over those connections, then the same rate over one plain-TCP connection
   to the services' listener (bench/loadgen.py); a bare paho subscriber counts both. The broker's
   CPU per message of each, their ratio (the TLS and dynamic-security correction of
   ``k_broker``), and the bare subscriber's CPU per message, the run's calibration (as
   bench/ingest.py measures it).

A part whose generators did not connect every camera, did not send their schedule, or whose
messages were not acknowledged and received, says NOT VALID instead of its figures. Needs
``--cameras`` + 256 open files in the broker (the limit is raised for it and the generators up to
the hard limit; past it only a process with CAP_SYS_RESOURCE may raise it, and the bench says so
and stops). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from common import ROOT, CountingSubscriber
from fleet_cameras import device_id, secret_for

from services.device_accounts import initial_config, mosquitto_password  # noqa: E402
from telemetry.embedded import free_port  # noqa: E402
from watchfloor.mosquitto import MosquittoProcess, cameras_listener, dynsec_plugin, throwaway_ca  # noqa: E402

#: Under this share of the schedule sent, acknowledged or received, a part is not valid.
ACHIEVED_MIN = 0.95
#: Open files the broker needs beside one a camera: listeners, the subscriber, loadgen, its files.
OPEN_FILES_SPARE = 256
#: The longest any one phase may take before the bench gives up.
PHASE_TIMEOUT_S = 900.0


def raise_open_files(needed: int) -> None:
    """Raise RLIMIT_NOFILE (inherited by the broker and the generators) to ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
    except (ValueError, OSError) as error:
        raise SystemExit(f"cannot raise the open-files limit from {soft} (hard {hard}) to {needed}: {error}; "
                         f"run where the hard limit is at least {needed} (root with CAP_SYS_RESOURCE, or "
                         f"`prlimit --nofile={needed}`), or with --cameras {hard - OPEN_FILES_SPARE} or fewer"
                         ) from None
    print(f"open-files limit raised from {soft} to {needed}")


def broker_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, resident bytes) of the broker so far, from /proc/PID."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    rss = next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return cpu, rss


def own_cpu() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


class Generators:
    """The bench/fleet_cameras.py processes, each with its share of the cameras."""

    def __init__(self, port: int, ca: Path, cameras: int, count: int, seed: str, keepalive: int,
                 concurrency: int) -> None:
        share = -(-cameras // count)
        self.procs = [subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "fleet_cameras.py"), str(port), str(ca), str(first),
             str(min(share, cameras - first)), seed, "--keepalive", str(keepalive), "--concurrency",
             str(concurrency)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            for first in range(0, cameras, share)]
        self._answers("ready", 60)

    def ask(self, command: str, event: str, timeout: float = PHASE_TIMEOUT_S) -> list[dict[str, Any]]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{command}\n".encode())
            proc.stdin.flush()
        return self._answers(event, timeout)

    def _answers(self, event: str, timeout: float) -> list[dict[str, Any]]:
        answers: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            for n, proc in enumerate(self.procs):
                assert proc.stdout is not None
                selector.register(proc.stdout, selectors.EVENT_READ, n)
            while len(answers) < len(self.procs):
                ready = selector.select(max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise SystemExit(f"a generator did not answer `{event}` within {timeout:.0f} s")
                for key, _ in ready:
                    line = key.fileobj.readline()  # type: ignore[union-attr]
                    if not line:
                        raise SystemExit(f"generator {key.data} exited before answering `{event}`")
                    answers[key.data] = json.loads(line)
                    selector.unregister(key.fileobj)
        if any(a.get("event") != event for a in answers.values()):
            raise SystemExit(f"unexpected answers to `{event}`: {answers}")
        return [answers[n] for n in range(len(self.procs))]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None and proc.stdin is not None:
                try:
                    proc.stdin.write(b"quit\n")
                    proc.stdin.flush()
                except BrokenPipeError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def write_accounts(path: Path, cameras: int, seed: str) -> None:
    """The plugin's file: the shipped defaults and admin account, and every camera with its own
    secret and role, as `watchfloor broker init-device-accounts` writes them."""
    logins = {device_id(i): mosquitto_password(secret_for(seed, device_id(i))) for i in range(cameras)}
    path.write_text(json.dumps(initial_config(admin_password=uuid.uuid4().hex, cameras=logins)))


def per_message_leg(name: str, broker_pid: int, counter: CountingSubscriber, send: Any) -> dict[str, Any] | None:
    """Run ``send()`` (which returns (offered, sent, acked)) and wait until the subscriber has
    everything sent: the broker's and the subscriber's CPU over that window. None (and says
    why) where the leg is not valid."""
    received0, broker0, me0, began = counter.count, broker_usage(broker_pid)[0], own_cpu(), time.monotonic()
    offered, sent, acked = send()
    counter.reach(received0 + sent)
    window, received = time.monotonic() - began, counter.count - received0
    broker, me = broker_usage(broker_pid)[0] - broker0, own_cpu() - me0
    print(f"{name}: offered {offered:,}, sent {sent:,}, acknowledged {acked:,}, received {received:,} "
          f"in a {window:.1f} s window")
    if sent < ACHIEVED_MIN * offered or acked < ACHIEVED_MIN * sent or received < ACHIEVED_MIN * sent:
        print(f"NOT VALID ({name}): the generator fell behind its schedule, or the broker did not acknowledge "
              "or deliver what was sent")
        return None
    return {"received": received, "broker_s": broker, "subscriber_s": me, "window": window}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=22_000)
    parser.add_argument("--generators", type=int, default=2, help="processes holding the cameras' connections")
    parser.add_argument("--concurrency", type=int, default=200, help="TLS handshakes in flight per generator")
    parser.add_argument("--keepalive", type=int, default=30, help="the cameras' keep-alive, seconds")
    parser.add_argument("--idle", type=float, default=75.0,
                        help="the idle window, seconds (two keep-alive rounds and more)")
    parser.add_argument("--rate", type=float, default=None, help="messages a second in all (default: --cameras)")
    parser.add_argument("--seconds", type=float, default=20.0, help="each per-message leg's load, seconds")
    args = parser.parse_args()
    rate = float(args.cameras) if args.rate is None else args.rate
    plugin = dynsec_plugin()
    if plugin is None:
        raise SystemExit("Mosquitto's dynamic-security plugin is not installed")
    raise_open_files(args.cameras + OPEN_FILES_SPARE)

    workdir = Path(tempfile.mkdtemp(prefix="wf-brokerfleet-"))
    seed = uuid.uuid4().hex
    broker: MosquittoProcess | None = None
    generators: Generators | None = None
    counter: CountingSubscriber | None = None
    try:
        ca, cert, key = throwaway_ca(workdir)
        accounts = workdir / "device-accounts.json"
        write_accounts(accounts, args.cameras, seed)
        tls_port = free_port()
        broker = MosquittoProcess(workdir / "mosquitto", extra=cameras_listener(
            tls_port, ca=ca, cert=cert, key=key, plugin=plugin, accounts=accounts)).start()
        pid = broker.pid or 0
        counter = CountingSubscriber(broker.url)
        generators = Generators(tls_port, ca, args.cameras, args.generators, seed, args.keepalive, args.concurrency)
        print(f"{args.cameras:,} cameras over {len(generators.procs)} generators, TLS 1.2+ with dynamic-security "
              f"logins; keep-alive {args.keepalive} s")

        # a) the reconnect storm
        cpu0, rss0 = broker_usage(pid)
        storm = generators.ask("connect", "connected")
        cpu1, rss1 = broker_usage(pid)
        connected = sum(a["connected"] for a in storm)
        wall = max(a["finished"] for a in storm) - min(a["started"] for a in storm)
        failed: dict[str, int] = {}
        for answer in storm:
            for why, n in answer["failed"].items():
                failed[why] = failed.get(why, 0) + n
        print(f"\na) reconnect storm: {connected:,} of {args.cameras:,} connected in {wall:.1f} s"
              + (f"; failed: {failed}" if failed else ""))
        if connected < args.cameras:
            print("NOT VALID (storm): not every camera connected")
        else:
            print(f"   broker CPU {cpu1 - cpu0:.2f} s, {1e3 * (cpu1 - cpu0) / connected:.3f} ms per connection "
                  f"(TLS handshake, dynsec login, the Last Will and a retained `online` each); "
                  f"RSS {rss0 / 2**20:.1f} → {rss1 / 2**20:.1f} MiB")

        # b) idle with keep-alives
        cpu0, t0 = broker_usage(pid)[0], time.monotonic()
        idle = generators.ask(f"idle {args.idle}", "idle", args.idle + 60)
        cpu1, rss2 = broker_usage(pid)
        window = time.monotonic() - t0
        pings, pongs, lost = (sum(a[k] for a in idle) for k in ("pings", "pongs", "lost"))
        # Each camera pings once per keep-alive it spends idle; the window's edges may miss one round.
        expected = connected * max(1, int(args.idle // args.keepalive) - 1)
        print(f"\nb) idle for {window:.1f} s: {pings:,} PINGREQ sent ({pings / window:,.0f}/s; at least "
              f"{expected:,} expected), {pongs:,} answered, {lost} connections lost")
        if lost or pongs < ACHIEVED_MIN * pings or pings < ACHIEVED_MIN * expected:
            print("NOT VALID (idle): connections were lost, or the generators' keep-alives were not sent or "
                  "not answered")
        elif connected:
            print(f"   broker {100 * (cpu1 - cpu0) / window:.2f}% of a core; RSS {rss2 / 2**20:.1f} MiB, "
                  f"{(rss2 - rss0) / connected / 1024:.1f} KiB per connection")

        # c) per message: TLS + dynsec, then plain TCP, at the same rate
        print(f"\nc) {rate:,.0f} messages/s for {args.seconds:g} s")

        def tls_load() -> tuple[int, int, int]:
            answers = generators.ask(f"publish {rate / len(generators.procs)} {args.seconds}", "published",
                                     args.seconds + 120)
            behind = max(a["behind_s"] for a in answers)
            if behind > 1.0:
                print(f"   a generator was up to {behind:.1f} s behind its schedule")
            return tuple(sum(a[k] for a in answers) for k in ("offered", "sent", "acked"))  # type: ignore[return-value]

        url = broker.url

        def plain_load() -> tuple[int, int, int]:
            proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "loadgen.py"), url, str(rate),
                                     str(args.seconds), str(args.cameras), "bench-fleet-plain"],
                                    stdout=subprocess.PIPE)
            words = proc.communicate(timeout=args.seconds + 120)[0].split()
            return int(rate * args.seconds), int(words[1]), int(words[3])

        legs = {"TLS + dynsec, one connection per camera": per_message_leg("TLS", pid, counter, tls_load),
                "plain TCP, one connection": per_message_leg("plain", pid, counter, plain_load)}
        if any(legs.values()):
            print("\n| leg | received | broker µs/message | bare subscriber µs/message | broker × bare |")
            print("|---|---|---|---|---|")
        for name, leg in legs.items():
            if leg is not None:
                broker_us = 1e6 * leg["broker_s"] / leg["received"]
                bare_us = 1e6 * leg["subscriber_s"] / leg["received"]
                print(f"| {name} | {leg['received']:,} | {broker_us:.1f} | {bare_us:.1f} | {broker_us / bare_us:.2f} |")
        tls, plain = legs.values()
        if tls is not None and plain is not None:
            ratio = (tls["broker_s"] / tls["received"]) / (plain["broker_s"] / plain["received"])
            print(f"\nbroker per message, TLS + dynsec / plain: {ratio:.2f} (k_broker's correction for the "
                  f"cameras' listener)")
        print(f"the whole machine: {psutil.cpu_count()} cores; generators and subscriber ran beside the broker")
    finally:
        if generators is not None:
            generators.stop()
        if counter is not None:
            counter.stop()
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
