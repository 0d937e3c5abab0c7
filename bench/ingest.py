"""bench/ingest: what one stored message costs, as messages per core-second of ingest CPU,
beside a bare subscriber and beside main's ingest, measured in the same run.

    .venv/bin/python bench/ingest.py [--rates 10000] [--seconds 10] [--workers 1,2] [--protocols 5,3.1.1]
        [--alerts-off [--alert-rounds 3]]

For each configuration (one worker or two in a ``$share`` group; MQTT 5 or 3.1.1) and each
offered rate it measures, one after the other on the same broker and database:

* the **bare subscribers** (bench/bare.py): main's paho subscriber that does no work (the
  project's read buffer, MQTT 3.1.1, QoS 1 acknowledged by paho), as many processes as the
  configuration has workers, sharing the stream in a ``$share`` group as the workers do:
  their messages per core-second, the yardstick. For two workers, also one subscriber
  taking the whole stream, the yardstick of runs before 2026-12-07 (a subscriber taking half
  the stream pays its per-read costs over half the messages, and costs more per message);
* **main's ingest**: the same workers run from the baseline commit below, unpacked with
  ``git archive`` into a scratch folder (``--baseline-commit``; ``--no-baseline`` skips it);
* **this tree's ingest**;
* with ``--alerts-off``, this tree's ingest again with the alert engine off
  (``WATCHFLOOR_INGEST_RAISE_ALERTS=false``: store only), and the ratio of "on" to it: issue
  #15 asks for the alert rules and the force's policy to cost at most 5%. One window each
  differed by more than that from one run to the next, so there are ``--alert-rounds``
  rounds (3 unless told), each a window with the engine on beside one with it off, in the
  order on, off | off, on | on, off ... (a drift over the run weighs on both alike); the
  ratio printed is the rounds' median, with their lowest and highest.

A party's messages per core-second is what it stored (or received) divided by the CPU
seconds its processes used from the start of the load until the last message was stored
(so a party that falls behind pays for its catch-up). The ratio to the bare subscribers is
the figure issue #17 sets a target for (at least 0.67); the absolute figures vary threefold
from one day to the next on a shared machine. Baseline (main before the lean ingest):
6be523f9048d72f0a9c12012d70829986e21d41a.

Each ingest row also has the WAL the whole server wrote over the same span
(``pg_current_wal_lsn()`` before and after) per report stored, and the checkpoints that began
in it: a window with one pays a full-page image for each page first touched after it.

Needs the machine's PostgreSQL (``--database``), ``git``, and a ``mosquitto`` binary: a
Mosquitto is started from deploy/mosquitto/mosquitto.conf on a spare port. The load comes
from a separate process (bench/loadgen.py) spread over 22,000 device ids.
"""

from __future__ import annotations

import argparse
import os
import statistics
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
from bare import BareSubscribers
from common import ROOT, WalUsed, scratch_stack, wal_mark, wal_since

from core.mqtt import BrokerAddress, new_client  # noqa: E402
from telemetry.latency import LatencyHistogram  # noqa: E402

#: main before the lean ingest (issue #17), whose ingest runs beside this tree's.
BASELINE_COMMIT = "6be523f9048d72f0a9c12012d70829986e21d41a"


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
    count: int  # messages stored (or received), load and catch-up
    cpu_s: float  # CPU seconds of the measured processes over the same span
    wal: WalUsed | None = None  # the server's WAL over the same span (ingest only)

    @property
    def per_core_s(self) -> float:
        """Messages per core-second of the measured processes' CPU."""
        return self.count / self.cpu_s if self.cpu_s > 0 else float("nan")


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
            # While connected: the backend's process ends with the connection.
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


def _sent(proc: subprocess.Popen[bytes], seconds: float) -> int:
    out, _ = proc.communicate(timeout=seconds + 120)
    return int(out.split()[1])


def bare_subscriber(url: str, rate: int, seconds: float, cpu: CpuMeter, processes: int = 1) -> Row:
    """The broker delivering to ``processes`` subscribers that do no work (bench/bare.py),
    sharing the stream as that many ingest workers do."""
    with BareSubscribers(url, processes) as bare:
        cpu.watch(bare.processes)
        start = cpu.snapshot()
        gen = _loadgen(url, rate, seconds, "bench-bare")
        sent = _sent(gen, seconds)
        at_end = bare.received
        end = cpu.snapshot()
        t_end = time.monotonic()
        bare.reach(sent)
        catch_up = time.monotonic() - t_end
        done = cpu.snapshot()
        received = bare.received
        latency = LatencyHistogram()
        for sample in bare.close():
            latency.record(sample)
    me, broker, db = CpuMeter.percent(start, end)
    what = "bare subscriber" if processes == 1 else f"bare subscribers ×{processes}"
    return Row(what, rate, at_end / seconds, latency.quantile(0.5), latency.quantile(0.99),
               catch_up, me, broker, db, received, done[1] - start[1])


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
    wal = wal_mark(db_url)
    start = cpu.snapshot()
    with Probe(url, db_url) as probe:
        gen = _loadgen(url, rate, seconds, "bench-ingest")
        sent = _sent(gen, seconds)
        end = cpu.snapshot()
        at_end = _stored(db_url) - before
        t_end = time.monotonic()
        while _stored(db_url) - before < sent and time.monotonic() - t_end < 120:
            time.sleep(0.2)
        catch_up = time.monotonic() - t_end
        done = cpu.snapshot()
        wal_used = wal_since(db_url, wal)
    me, broker, db = CpuMeter.percent(start, end)
    return Row(label, rate, at_end / seconds, probe.latency.quantile(0.5), probe.latency.quantile(0.99),
               catch_up, me, broker, db, _stored(db_url) - before, done[1] - start[1], wal_used)


def start_workers(count: int, url: str, db_url: str, protocol: str, workdir: Path, *, tree: Path,
                   tag: str, alerts: bool = True) -> list[subprocess.Popen[bytes]]:
    """``count`` ingest processes run from ``tree``, in a ``$share`` group of their own (a
    stopped group's sessions must not take a share of the next one's messages)."""
    procs = []
    for n in range(count):
        env = dict(os.environ, WATCHFLOOR_MQTT_URL=url, WATCHFLOOR_DATABASE_URL=db_url, PYTHONPATH=str(tree),
                   WATCHFLOOR_MQTT_PROTOCOL=protocol, WATCHFLOOR_INGEST_CLIENT_ID=_client_id(tag, n),
                   WATCHFLOOR_INGEST_SHARE_GROUP=f"bench-{tag}",
                   # Off: store only, no alert rules or policy (the baseline commit ignores it).
                   WATCHFLOOR_INGEST_RAISE_ALERTS=str(alerts).lower())
        log = (workdir / f"ingest-{tag}-{n}.log").open("ab")
        procs.append(subprocess.Popen([sys.executable, "-m", "watchfloor", "ingest"], env=env, cwd=tree,
                                      stdout=log, stderr=log))
    return procs


def wait_until_storing(url: str, db_url: str, tag: str, timeout: float = 120.0) -> None:
    """Until the workers store a report: started, subscribed (a ``$share`` group drops what
    arrives before its first subscriber) and done with their start-up work, which must not
    count as the load's CPU."""
    from datetime import datetime, timezone

    address = BrokerAddress.parse(url)
    client = new_client(address, client_id=f"ready-{tag}", protocol=paho.MQTTv311)
    client.connect(address.host, address.port)
    client.loop_start()
    device = f"bench-ready-{tag}"
    deadline = time.monotonic() + timeout
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            seq = 0
            while time.monotonic() < deadline:
                seq += 1
                now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
                client.publish(f"watchfloor/v1/devices/{device}/telemetry", orjson.dumps({
                    "seq": seq, "ts": now, "battery": {"pct": 50, "charging": False}, "gps": None,
                    "recording": "off"}), qos=1)
                if conn.execute("SELECT 1 FROM device_latest WHERE device_id = %s", (device,)).fetchone():
                    return
                time.sleep(0.5)
    finally:
        client.disconnect()
        client.loop_stop()
    raise SystemExit(f"ingest workers {tag} stored nothing within {timeout:.0f}s")


def _client_id(tag: str, n: int) -> str:
    return f"watchfloor-bench-{tag}-{n}"


def stop_workers(workers: list[subprocess.Popen[bytes]], url: str, tag: str) -> None:
    """Stop them, then end their persistent sessions, which the broker would otherwise keep
    queueing the load for."""
    for w in workers:
        w.terminate()
    for w in workers:
        w.wait(20)
    address = BrokerAddress.parse(url)
    for n in range(len(workers)):
        client = new_client(address, client_id=_client_id(tag, n), protocol=paho.MQTTv311, clean=True)
        client.connect(address.host, address.port)
        client.loop_start()
        client.disconnect()
        client.loop_stop()


def _baseline_tree(commit: str, into: Path) -> Path:
    """The baseline commit's files (``git archive``), to run its ingest beside this tree's."""
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    # Its ingest must import its own code, not this tree's (installed in editable mode).
    probe = subprocess.run([sys.executable, "-c", "import telemetry.decode as d; print(d.__file__)"],
                           cwd=into, env=dict(os.environ, PYTHONPATH=str(into)), capture_output=True, text=True,
                           check=True).stdout.strip()
    if not Path(probe).is_relative_to(into):
        raise SystemExit(f"the baseline tree imports {probe}, not its own code")
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="10000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--protocols", default="5,3.1.1", help="comma-separated: 5, 3.1.1")
    parser.add_argument("--timescaledb", default="off", choices=["auto", "off", "require"])
    parser.add_argument("--workers", default="1,2", help="ingest processes in one $share group, comma-separated")
    parser.add_argument("--baseline-commit", default=BASELINE_COMMIT)
    parser.add_argument("--no-baseline", action="store_true", help="skip main's ingest")
    parser.add_argument("--alerts-off", action="store_true",
                        help="also this tree's ingest with the alert engine off (store only), for the ratio on/off")
    parser.add_argument("--alert-rounds", type=int, default=3,
                        help="with --alerts-off: windows with the engine on and off, side by side, this many times")
    args = parser.parse_args()
    if args.alert_rounds < 1:
        parser.error("--alert-rounds must be at least 1")
    rates = [int(r) for r in args.rates.split(",")]
    configs = [(int(w), p) for w in args.workers.split(",") for p in args.protocols.split(",")]

    summary: list[tuple[str, int, Row, Row | None, Row | None, Row, list[float]]] = []
    with scratch_stack(args.database, prefix="wf-bench", timescaledb=args.timescaledb) as (broker, db_url):
        workdir = broker.workdir.parent
        # (name, tree, alert engine on); "lean" is measured last, so that with --alerts-off the
        # first window with the engine off comes right after it.
        trees = [("lean", ROOT, True)]
        if not args.no_baseline:
            trees.insert(0, ("main", _baseline_tree(args.baseline_commit, workdir / "baseline"), True))
        cpu = CpuMeter(broker.pid or 0, db_url)
        header = True
        for workers, protocol in configs:
            config = f"×{workers} MQTT {protocol}"
            for rate in rates:
                bare = bare_subscriber(broker.url, rate, args.seconds, cpu, processes=workers)
                # Earlier runs compared every configuration with one subscriber taking the
                # whole stream; printed beside the like-for-like yardstick for continuity.
                single = bare_subscriber(broker.url, rate, args.seconds, cpu) if workers > 1 else None

                def window(name: str, tree: Path, alerts: bool, label: str) -> Row:
                    tag = f"{name}-{uuid.uuid4().hex[:6]}"
                    procs = start_workers(workers, broker.url, db_url, protocol, workdir, tree=tree, tag=tag,
                                          alerts=alerts)
                    try:
                        wait_until_storing(broker.url, db_url, tag)
                        cpu.watch([psutil.Process(p.pid) for p in procs])
                        return ingest(broker.url, db_url, rate, args.seconds, cpu, label)
                    finally:
                        stop_workers(procs, broker.url, tag)

                rounds = args.alerts_off and args.alert_rounds > 1
                measured = {name: window(name, tree, alerts,
                                         f"{name} ingest {config}" + (" #1" if rounds and name == "lean" else ""))
                            for name, tree, alerts in trees}
                rows = [bare, *([single] if single else []), *measured.values()]
                ratios: list[float] = []
                for n in range(1, args.alert_rounds + 1 if args.alerts_off else 1):
                    suffix = f" {config} #{n}" if rounds else f" {config}"
                    if n == 1:  # its window with the engine on is lean's, just measured
                        on, off = measured["lean"], window("store-only", ROOT, False, f"store-only ingest{suffix}")
                        rows.append(off)
                    elif n % 2 == 0:
                        off = window("store-only", ROOT, False, f"store-only ingest{suffix}")
                        on = window("lean", ROOT, True, f"lean ingest{suffix}")
                        rows += [off, on]
                    else:
                        on = window("lean", ROOT, True, f"lean ingest{suffix}")
                        off = window("store-only", ROOT, False, f"store-only ingest{suffix}")
                        rows += [on, off]
                    ratios.append(on.per_core_s / off.per_core_s)
                print(_format(rows, header=header), flush=True)
                header = False
                summary.append((config, rate, bare, single, measured.get("main"), measured["lean"], ratios))

    print()
    print("messages per core-second (stored by ingest, received by the bare subscribers: as many as the")
    print("workers, sharing the stream as they do), and ingest's ratio to them; target: lean at least 0.67.")
    print("For two workers, also one subscriber taking the whole stream, and lean's ratio to it (the")
    print("yardstick of runs before 2026-12-07)")
    print(f"| configuration | offered/s | bare | main ({args.baseline_commit[:7]}) | main ratio | lean | lean ratio"
          " | one bare subscriber | lean ratio to it |")
    print("|---|---|---|---|---|---|---|---|---|")
    for config, rate, bare, single, main_row, lean, _ in summary:
        main_cells = (f"{main_row.per_core_s:,.0f} | {main_row.per_core_s / bare.per_core_s:.2f}"
                      if main_row is not None else "- | -")
        single_cells = (f"{single.per_core_s:,.0f} | {lean.per_core_s / single.per_core_s:.2f}"
                        if single is not None else "- | -")
        print(f"| {config} | {rate} | {bare.per_core_s:,.0f} | {main_cells} | {lean.per_core_s:,.0f}"
              f" | {lean.per_core_s / bare.per_core_s:.2f} | {single_cells} |")
    if args.alerts_off:
        print()
        print("the alert engine's cost: messages per core-second with it on, to store only (goal: at least 0.95),")
        print(f"the median of {args.alert_rounds} rounds (lowest-highest)")
        for config, rate, _, _, _, _, ratios in summary:
            print(f"  {config} {rate}/s: {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")


def _format(rows: list[Row], header: bool) -> str:
    lines = []
    if header:
        lines.append(f"| {'what':<34} | offered/s | stored or delivered/s | p50 ms | p99 ms | catch-up s "
                     "| CPU measured % | CPU broker % | CPU db % | msg per core-s | WAL bytes per report "
                     "| checkpoints begun |")
        lines.append("|" + "|".join(["---"] * 12) + "|")
    for r in rows:
        p50 = f"{r.p50_ms:.0f}" if r.p50_ms is not None else "-"
        p99 = f"{r.p99_ms:.0f}" if r.p99_ms is not None else "-"
        wal = f"{r.wal.per(r.count):>20,.0f} | {r.wal.checkpoints:>17}" if r.wal else f"{'-':>20} | {'-':>17}"
        lines.append(f"| {r.what:<34} | {r.offered:>9.0f} | {r.delivered_per_s:>21.0f} | {p50:>6} | {p99:>6} "
                     f"| {r.catch_up_s:>10.1f} | {r.cpu_self:>14.0f} | {r.cpu_broker:>12.0f} | {r.cpu_db:>8.0f} "
                     f"| {r.per_core_s:>14,.0f} | {wal} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
