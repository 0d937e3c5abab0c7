"""bench/alert_noise: the noise test of issue #15 at full length. A fleet of simulated cameras
(2,000 by default) runs for real minutes (10 by default) against a `watchfloor ingest`
process with the default alert policy; prints how many high or critical alerts, besides
emergencies, it raised per 100 cameras per hour, by kind, and whether every emergency the
fleet sent was raised. tests/test_alert_noise.py runs the same harness (tests/helpers/noise.py)
ten times faster.

    .venv/bin/python bench/alert_noise.py [--devices 2000] [--minutes 10] [--interval 10]

Needs the machine's PostgreSQL (``--database``) and a ``mosquitto`` binary: a scratch
database and a Mosquitto from deploy/mosquitto/mosquitto.conf, both removed afterwards.
Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import sys

from common import scratch_stack

from simulator.fleet import FleetProfile  # noqa: E402
from tests.helpers.noise import NoiseRun, measure  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=2_000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between two reports of a camera")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="simulated seconds per real second (timeouts are divided alike)")
    parser.add_argument("--emergencies-per-h", type=float, default=FleetProfile().emergencies_per_h,
                        help="per camera; the simulator's default is rare enough to send none in a short run")
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    run = NoiseRun(devices=args.devices, minutes=args.minutes, interval_s=args.interval, time_scale=args.time_scale,
                   profile=FleetProfile(emergencies_per_h=args.emergencies_per_h))
    with scratch_stack(args.database, prefix="wf-noise") as (broker, db_url):
        result = measure(database_url=db_url, mqtt_url=broker.url, run=run,
                         log=broker.workdir.parent / "ingest.log")
    print(result.report())
    missed = result.emergency_senders - result.emergency_alerted
    verdict = "PASS" if result.rate < 1.0 and not missed else "FAIL"
    print(f"{verdict}: {result.rate:.2f} per 100 cameras per hour (goal < 1); emergencies not raised: {len(missed)}")
    sys.exit(0 if verdict == "PASS" else 1)


if __name__ == "__main__":
    main()
