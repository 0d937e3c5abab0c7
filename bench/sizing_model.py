"""The sizing model of docs/operations.md ("Sizing from per-message costs"): its constants, in
one place, and what they predict. bench/scale_out.py prints these predictions beside what it
measures; the docs' tables are this module's output.

    .venv/bin/python bench/sizing_model.py [--cameras 22000] [--hz 1] [--bare 36364] [--screens 100]

Machines here vary about threefold from one day to the next, so every CPU cost is kept as a
multiple of the **bare subscriber's** CPU per message measured in the same run (the
calibration ``B``: bench/ingest.py's and bench/scale_out.py's "bare subscriber" row, a paho
client that only counts). A prediction for a machine is the multiple times that machine's
``B``. An input nobody has measured yet is ``None`` with the reason, never a guess: its part
of the prediction is left out and says so.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

__all__ = ["API_INTAKE", "API_PER_CLIENT", "BROKER", "BROKER_CAMERAS", "BYTES_COMPRESSED", "BYTES_UNCOMPRESSED",
           "Cost", "DATABASE", "DELTA_BYTES_PER_UPDATE", "INGEST", "MOSQUITTO_CEILING", "PLAN_AT", "REFERENCE_BARE",
           "WAL_BYTES", "WORKER_CEILING", "predict_cores"]


@dataclass(frozen=True)
class Cost:
    """CPU per message (or per unit update) as a multiple of the bare subscriber's, in one run."""

    what: str
    per_bare: float | None  # None: not measured yet
    source: str  # the bench command and run that measured it, or what is missing


#: One stored report, all ingest workers together (decode, checks, alert rules, COPY, frame).
#: bench/ingest.py --rates 10000 --seconds 10 --workers 1 --protocols 5,3.1.1 --alerts-off,
#: 2026-12-06 evening, main 54e4c1f: 30,395 stored per core-second beside the bare subscriber's
#: 37,175 (ratio 0.82); 0.67 with two workers.
INGEST = Cost("ingest, per stored report", 37_175 / 30_395,
              "bench/ingest.py, 2026-12-06 (54e4c1f), one worker, MQTT 5, alerts on: ratio 0.82")
#: Mosquitto taking a report in and delivering it once (to the ingest group), with PUBACKs.
#: Same run: broker 20% of a core beside the bare subscriber's 26% (bench/scale_out.py, three
#: workers, the same evening: 0.74). Plain TCP on loopback, one publisher.
BROKER = Cost("broker, per report in and out", 20 / 26,
              "bench/ingest.py, 2026-12-06 (54e4c1f), ×1 MQTT 5 at 10,000/s: broker 20% vs bare 26%; "
              "plain TCP, one publishing connection (the cameras' TLS listener: BROKER_CAMERAS)")
#: The same on the cameras' own listener, as a real fleet connects: TLS, a dynamic-security
#: login and one connection per camera. bench/broker_fleet.py --cameras 19000 --rate 10000,
#: 2026-12-06 late evening (main 8adee48): 37.1 µs per message beside the bare subscriber's
#: 29.3 µs in the same window (1.93 times the plain leg's cost in the same run).
BROKER_CAMERAS = Cost("broker, per report over the cameras' TLS listener", 37.1 / 29.3,
                      "bench/broker_fleet.py, 2026-12-06 (8adee48), 19,000 TLS connections with dynsec "
                      "logins at 10,000/s: 37.1 µs vs bare 29.3 µs")
#: PostgreSQL's own CPU per stored report (binary COPY, insert, latest-state upsert), same run.
#: Three workers' smaller batches cost more: 1.50 in bench/scale_out.py the same evening.
DATABASE = Cost("PostgreSQL, per stored report", 33 / 26,
                "bench/ingest.py, 2026-12-06 (54e4c1f), ×1 MQTT 5 at 10,000/s: server 33% vs bare 26% "
                "(the whole server's processes)")
#: One API process taking ingest's live-units frames, per unit update (with one client).
#: bench/scale_out.py --devices 22000 --rate 10000 --seconds 30, 2026-12-06: 1.59% of a core per
#: 1,000 updates/s per API process beside the calibration's 2.49% per 1,000 messages/s.
API_INTAKE = Cost("API intake, per unit update, per process", 1.59 / 2.49,
                  "bench/scale_out.py, 2026-12-06 (54e4c1f), 2 API processes with 1 client each; "
                  "bench/fanout.py late that evening, no client, own calibration: 0.53-0.56")
#: One more live-feed client of a whole-fleet view, per unit update sent to it.
#: bench/fanout.py, 2026-12-06 late evening (main 8adee48): 3.57% per 1,000 updates/s with 200
#: clients less 1.33% alone, over 200 clients, beside the run's own calibration, a bare
#: subscriber at 23.7 µs per message (2.37% per 1,000 messages/s).
API_PER_CLIENT = Cost("API fan-out, per unit update, per client", (3.57 - 1.33) / 200 / 2.37,
                      "bench/fanout.py, 2026-12-06 (8adee48), 200 clients at live_rate_hz 10, "
                      "with its own calibration")

#: The bare subscriber's messages per core-second of the run that gave INGEST (2026-12-06), for
#: the worked example in the docs; on 2026-12-01 it was about 80,000 (the threefold swing).
REFERENCE_BARE = 37_175
#: Bytes a delta spends per unit update (only changed fields), bench/fanout.py 2026-12-02.
DELTA_BYTES_PER_UPDATE = 230
#: Telemetry on disk per report, table, indexes and TOAST, bench/disk_per_day.sql, 2026-12-06
#: (TimescaleDB 2.28.3: uncompressed, and compressed segment by device_id).
BYTES_UNCOMPRESSED = 216
BYTES_COMPRESSED = 31
#: WAL the server writes per stored report (bench/ingest.py, two workers at 10,000/s for 240 s,
#: 2026-12-06 late evening: 680 bytes, two checkpoints in the window).
WAL_BYTES = 680
#: One ingest worker is bound by its interpreter lock at 80-90% of a core (performance.md).
WORKER_CEILING = 0.85
#: Mosquitto is single-threaded: one core is all one broker process gets.
MOSQUITTO_CEILING = 1.0
#: A choice, not a measurement: plan each part at this share of its ceiling, so it can catch
#: up after an outage (a backlog drains only at ceiling minus load).
PLAN_AT = 0.6


def predict_cores(cost: Cost, *, per_s: float, bare_per_core_s: float) -> float | None:
    """Cores that ``per_s`` messages (or updates) a second take at ``cost``, on a machine
    whose bare subscriber receives ``bare_per_core_s`` messages per core-second; None if
    the cost is not measured."""
    if cost.per_bare is None:
        return None
    return cost.per_bare * per_s / bare_per_core_s


def _cores(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=22_000)
    parser.add_argument("--hz", type=float, default=1.0, help="reports per camera per second")
    parser.add_argument("--bare", type=float, default=REFERENCE_BARE,
                        help="the bare subscriber's messages per core-second on the target machine")
    parser.add_argument("--screens", type=int, default=100, help="live-feed clients with a whole-fleet view")
    args = parser.parse_args()
    rate = args.cameras * args.hz
    b = args.bare

    print(f"{args.cameras:,} cameras at {args.hz:g} Hz: {rate:,.0f} reports/s; calibration: bare subscriber "
          f"{b:,.0f} messages per core-second ({1e6 / b:.1f} µs each)\n")
    print("| input | × bare | source |")
    print("|---|---|---|")
    for cost in (INGEST, BROKER, BROKER_CAMERAS, DATABASE, API_INTAKE, API_PER_CLIENT):
        ratio = "not measured" if cost.per_bare is None else f"{cost.per_bare:.3g}"
        print(f"| {cost.what} | {ratio} | {cost.source} |")

    ingest = predict_cores(INGEST, per_s=rate, bare_per_core_s=b)
    broker = predict_cores(BROKER_CAMERAS, per_s=rate, bare_per_core_s=b)  # as cameras connect: TLS
    database = predict_cores(DATABASE, per_s=rate, bare_per_core_s=b)
    intake = predict_cores(API_INTAKE, per_s=rate, bare_per_core_s=b)
    per_client = predict_cores(API_PER_CLIENT, per_s=rate, bare_per_core_s=b)
    assert ingest is not None and broker is not None
    workers = max(2, math.ceil(ingest / (WORKER_CEILING * PLAN_AT)))  # two: one restarts, half the fleet flows
    brokers = math.ceil(broker / (MOSQUITTO_CEILING * PLAN_AT))
    per_broker = MOSQUITTO_CEILING * PLAN_AT * b / (BROKER_CAMERAS.per_bare or 1) / args.hz
    print(f"\n| part | cores at {rate:,.0f}/s | planned ({PLAN_AT:.0%} of each process's ceiling) |")
    print("|---|---|---|")
    print(f"| ingest | {_cores(ingest)} | {workers} workers of {WORKER_CEILING:g} core each at most |")
    print(f"| broker (one Mosquitto thread), cameras over TLS | {_cores(broker)} | {brokers} broker(s); one takes "
          f"about {per_broker:,.0f} cameras at {args.hz:g} Hz |")
    print(f"| PostgreSQL | {_cores(database)} | {rate:,.0f} rows/s copied and {rate:,.0f} latest-state upserts/s |")
    print(f"| API intake, each process | {_cores(intake)} | paid once per API process |")
    screens = "not measured" if per_client is None else f"{per_client * args.screens:.2f}"
    print(f"| API fan-out, {args.screens} whole-fleet screens | {screens} | "
          f"{rate * DELTA_BYTES_PER_UPDATE / 1e6:.1f} MB/s to each screen, "
          f"{rate * DELTA_BYTES_PER_UPDATE * args.screens * 8 / 1e9:.1f} Gbit/s for all |")
    day = rate * 86_400
    print(f"\ndisk per day: {day * BYTES_UNCOMPRESSED / 1e9:,.0f} GB uncompressed, "
          f"{day * BYTES_COMPRESSED / 1e9:,.0f} GB compressed ({day / 1e9:.2f} billion reports); "
          f"WAL {day * WAL_BYTES / 1e12:.1f} TB a day, {rate * WAL_BYTES / 1e6:.0f} MB/s")


if __name__ == "__main__":
    main()
