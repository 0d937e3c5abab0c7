"""bench/ingest: sustained ingest throughput and publish-to-commit latency, beside a
baseline measured in the same run (the broker delivering to a bare subscriber).

    .venv/bin/python bench/ingest.py [--rates 5000,10000,20000,25000] [--seconds 10] [--alerts both]

Needs the machine's PostgreSQL (``--database``) and a ``mosquitto`` binary: a Mosquitto is
started from deploy/mosquitto/mosquitto.conf on a spare port. The load comes from a
separate process (bench/loadgen.py) spread over 22,000 device ids. Prints a table.

``--alerts both`` (the default) runs ingest twice in the same run, with the alert engine (the
rules and the force's alert policy) on and off (``WATCHFLOOR_INGEST_RAISE_ALERTS=false``:
store only), and prints their ratio per rate: issue #15 asks for "on" within 5% of "off".
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import psutil
import psycopg
from common import ROOT, scratch_stack

from core.mqtt import BrokerAddress, new_client, publish_all  # noqa: E402
from telemetry.latency import LatencyHistogram  # noqa: E402


@dataclass
class Row:
    what: str
    offered: float
    delivered_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    catch_up_s: float
    cpu_self: float
    cpu_broker: float
    cpu_db: float


Snapshot = tuple[float, float, float, float]  # wall clock, then CPU seconds of each party


class CpuMeter:
    """CPU of what is measured (the bare subscriber, then the ingest workers), the broker
    and the database server, in % of one core."""

    def __init__(self, broker_pid: int, db_url: str) -> None:
        self._me = [psutil.Process()]
        self._broker = psutil.Process(broker_pid)
        with psycopg.connect(db_url) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        self._postmaster = psutil.Process(row[0]).parent()

    def watch(self, processes: list[psutil.Process]) -> None:
        """Count these (the ingest workers) as "self" from now on."""
        self._me = processes

    def _db_processes(self) -> list[psutil.Process]:
        return [self._postmaster, *self._postmaster.children()]

    @staticmethod
    def _cpu(procs: list[psutil.Process]) -> float:
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def snapshot(self) -> Snapshot:
        return (time.monotonic(), self._cpu(self._me), self._cpu([self._broker]),
                self._cpu(self._db_processes()))

    @staticmethod
    def percent(a: Snapshot, b: Snapshot) -> tuple[float, float, float]:
        wall = b[0] - a[0]
        return tuple(100.0 * (b[i] - a[i]) / wall for i in (1, 2, 3))  # type: ignore[return-value]


def _loadgen(url: str, rate: int, seconds: float, client_id: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(ROOT / "bench" / "loadgen.py"), url, str(rate), str(seconds),
                             "22000", client_id], stdout=subprocess.PIPE)


def _sent(proc: subprocess.Popen[bytes]) -> int:
    out, _ = proc.communicate(timeout=120)
    return int(out.split()[1])


def bare_subscriber(url: str, rate: int, seconds: float, cpu: CpuMeter) -> Row:
    """The broker delivering to a subscriber that does no work (QoS 1, auto-ack)."""
    address = BrokerAddress.parse(url)
    received = [0]
    latency = LatencyHistogram()
    client = new_client(address, client_id=f"bare-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv311)

    def on_message(c: paho.Client, u: object, m: paho.MQTTMessage) -> None:
        received[0] += 1
        if received[0] % 50 == 0:  # sample: parsing every message would be work
            sent = orjson.loads(m.payload)["ts"]
            latency.record(time.time() - _epoch(sent))

    client.on_message = on_message
    client.connect(address.host, address.port)
    client.subscribe("watchfloor/v1/devices/+/telemetry", qos=1)
    client.loop_start()
    time.sleep(0.5)
    start = cpu.snapshot()
    gen = _loadgen(url, rate, seconds, "bench-bare")
    sent = _sent(gen)
    at_end = received[0]
    end = cpu.snapshot()
    t_end = time.monotonic()
    while received[0] < sent and time.monotonic() - t_end < 60:
        time.sleep(0.05)
    catch_up = time.monotonic() - t_end
    client.disconnect()
    client.loop_stop()
    me, broker, db = CpuMeter.percent(start, end)
    return Row("bare subscriber", rate, at_end / seconds, latency.quantile(0.5), latency.quantile(0.99),
               catch_up, me, broker, db)


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


class Probe:
    """Black-box publish-to-commit latency, whatever the number of workers: publishes a
    probe report every 50 ms among the load and polls device_latest for it every 2 ms."""

    def __init__(self, url: str, db_url: str) -> None:
        self._url, self._db_url = url, db_url
        self.latency = LatencyHistogram()
        self._stop = threading.Event()
        self._sent: dict[int, float] = {}
        self._threads = [threading.Thread(target=self._publish, daemon=True),
                         threading.Thread(target=self._poll, daemon=True)]

    def __enter__(self) -> "Probe":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)

    def _publish(self) -> None:
        from datetime import datetime, timezone

        address = BrokerAddress.parse(self._url)
        client = new_client(address, client_id=f"probe-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv311)
        client.connect(address.host, address.port)
        client.loop_start()
        seq = int(time.time() * 1000)
        while not self._stop.wait(0.05):
            seq += 1
            now = datetime.now(timezone.utc)
            self._sent[seq] = time.time()
            client.publish("watchfloor/v1/devices/bench-probe/telemetry", orjson.dumps({
                "seq": seq, "ts": now.isoformat().replace("+00:00", "Z"),
                "battery": {"pct": 50, "charging": False}, "gps": None, "recording": "off"}), qos=1)
        client.disconnect()
        client.loop_stop()

    def _poll(self) -> None:
        seen = 0
        with psycopg.connect(self._db_url, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute("SELECT seq FROM device_latest WHERE device_id = 'bench-probe'").fetchone()
                now = time.time()
                if row is not None and row[0] > seen:
                    for seq in [s for s in self._sent if seen < s <= row[0]]:
                        self.latency.record(now - self._sent.pop(seq))
                    seen = row[0]
                time.sleep(0.002)


def _stored(db_url: str) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM telemetry WHERE device_id LIKE 'load-%'").fetchone()
    return int(row[0]) if row else 0


def ingest(url: str, db_url: str, rate: int, seconds: float, cpu: CpuMeter, label: str) -> Row:
    before = _stored(db_url)
    start = cpu.snapshot()
    with Probe(url, db_url) as probe:
        gen = _loadgen(url, rate, seconds, "bench-ingest")
        sent = _sent(gen)
        end = cpu.snapshot()
        at_end = _stored(db_url) - before
        t_end = time.monotonic()
        while _stored(db_url) - before < sent and time.monotonic() - t_end < 120:
            time.sleep(0.2)
        catch_up = time.monotonic() - t_end
    me, broker, db = CpuMeter.percent(start, end)
    return Row(label, rate, at_end / seconds, probe.latency.quantile(0.5), probe.latency.quantile(0.99),
               catch_up, me, broker, db)


def _start_workers(count: int, url: str, db_url: str, protocol: str, workdir: Path,
                   alerts: bool) -> list[subprocess.Popen[bytes]]:
    import os

    procs = []
    for n in range(count):
        env = dict(os.environ, WATCHFLOOR_MQTT_URL=url, WATCHFLOOR_DATABASE_URL=db_url,
                   WATCHFLOOR_MQTT_PROTOCOL=protocol, WATCHFLOOR_INGEST_RAISE_ALERTS=str(alerts).lower(),
                   # A session and a shared group per mode: the stopped "off" workers' sessions
                   # outlive them at the broker, and would still take their share of the group's
                   # messages (queued, never stored) from the "on" workers.
                   WATCHFLOOR_INGEST_CLIENT_ID=f"watchfloor-bench-ingest-{'on' if alerts else 'off'}-{n}",
                   WATCHFLOOR_INGEST_SHARE_GROUP=f"bench-ingest-{'on' if alerts else 'off'}",
                   WATCHFLOOR_MQTT_SESSION_EXPIRY_S="60")
        log = (workdir / f"ingest-{n}.log").open("ab")
        procs.append(subprocess.Popen([sys.executable, "-m", "watchfloor", "ingest"], env=env, cwd=ROOT,
                                      stdout=log, stderr=log))
    return procs


def _wait_subscribed(url: str, db_url: str, mode: str) -> None:
    """Until the workers store a report of their own device: they have subscribed, so the
    load that follows is not published into the void (a fixed sleep was too short on a busy
    machine, and the lost messages then read as a 120 s catch-up)."""
    device = f"ready-{mode}"
    deadline = time.monotonic() + 60
    for seq in range(1_000_000):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        report = orjson.dumps({"seq": seq, "ts": stamp, "battery": {"pct": 90, "charging": False},
                               "gps": {"lat": 51.5, "lon": -0.12, "accuracy_m": 5.0}, "recording": "off"})
        publish_all(url, [(f"watchfloor/v1/devices/{device}/telemetry", report)], client_id=f"bench-{device}")
        with psycopg.connect(db_url, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM device_latest WHERE device_id = %s", (device,)).fetchone():
                return
        if time.monotonic() > deadline:
            raise SystemExit("the ingest workers did not subscribe within 60 s")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="5000,10000,20000,25000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--protocol", default="auto", choices=["auto", "5", "3.1.1"])
    parser.add_argument("--timescaledb", default="off", choices=["auto", "off", "require"])
    parser.add_argument("--workers", type=int, default=1, help="ingest processes in one $share group")
    parser.add_argument("--alerts", default="both", choices=["both", "on", "off"],
                        help="ingest with the alert engine on, off (store only), or both in turn")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.alerts]

    rows: list[Row] = []
    by_mode: dict[bool, list[Row]] = {}
    with scratch_stack(args.database, prefix="wf-bench", timescaledb=args.timescaledb) as (broker, db_url):
        workdir = broker.workdir.parent
        cpu = CpuMeter(broker.pid or 0, db_url)
        # Baselines first, before ingest subscribes, so that nothing else shares the broker.
        baselines = [bare_subscriber(broker.url, rate, args.seconds, cpu) for rate in rates]
        for alerts in modes:
            workers = _start_workers(args.workers, broker.url, db_url, args.protocol, workdir, alerts)
            cpu.watch([psutil.Process(w.pid) for w in workers])
            _wait_subscribed(broker.url, db_url, "on" if alerts else "off")
            label = f"ingest ×{args.workers} alerts {'on' if alerts else 'off'}"
            by_mode[alerts] = []
            try:
                for rate, baseline in zip(rates, baselines):
                    row = ingest(broker.url, db_url, rate, args.seconds, cpu, label)
                    by_mode[alerts].append(row)
                    rows += [baseline, row]
                    print(_format(rows[-2:], header=len(rows) == 2), flush=True)
            finally:
                for w in workers:
                    w.terminate()
                    w.wait(20)

    print()
    print(f"ratio of ingest to bare subscriber, per offered rate (MQTT {args.protocol}):")
    for alerts, measured in by_mode.items():
        for bare, ing in zip(baselines, measured):
            print(f"  alerts {'on ' if alerts else 'off'} {bare.offered:>7.0f}/s: "
                  f"{ing.delivered_per_s / bare.delivered_per_s:.0%}")
    if len(by_mode) == 2:
        print("ratio of ingest with the alert engine on to off (goal: at least 95%):")
        for off, on in zip(by_mode[False], by_mode[True]):
            print(f"  {off.offered:>7.0f}/s: {on.delivered_per_s / off.delivered_per_s:.1%}"
                  f" (p99 {on.p99_ms or 0:.0f} ms on, {off.p99_ms or 0:.0f} ms off)")


def _format(rows: list[Row], header: bool) -> str:
    lines = []
    if header:
        lines.append(f"| {'what':<22} | offered/s | stored or delivered/s | p50 ms | p99 ms | catch-up s "
                     "| CPU measured % | CPU broker % | CPU db % |")
        lines.append("|" + "|".join(["---"] * 9) + "|")
    for r in rows:
        p50 = f"{r.p50_ms:.0f}" if r.p50_ms is not None else "-"
        p99 = f"{r.p99_ms:.0f}" if r.p99_ms is not None else "-"
        lines.append(f"| {r.what:<22} | {r.offered:>9.0f} | {r.delivered_per_s:>21.0f} | {p50:>6} | {p99:>6} "
                     f"| {r.catch_up_s:>10.1f} | {r.cpu_self:>10.0f} | {r.cpu_broker:>12.0f} | {r.cpu_db:>8.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
