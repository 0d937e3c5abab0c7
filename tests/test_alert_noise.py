"""The noise test of issue #15: a fleet of 2,000 simulated cameras for 10 minutes, with the
default alert policy, raises fewer than 1 high (or critical) alert per 100 cameras per hour
besides emergencies, and every emergency is raised. Real processes: the simulator, the
shipped Mosquitto, a `watchfloor ingest` process and PostgreSQL; the 10 minutes are lived
ten times faster, with every alert timeout divided alike (tests/helpers/noise.py).
bench/alert_noise.py runs the same uncompressed."""

from __future__ import annotations

from pathlib import Path

from simulator.fleet import FleetProfile
from tests.helpers.db import Database
from tests.helpers.noise import NoiseRun, measure
from watchfloor.mosquitto import MosquittoProcess

# Emergencies are rare (0.002 per camera-hour); enough of them here to show each is raised.
RUN = NoiseRun(devices=2_000, minutes=10, interval_s=25, time_scale=10,
               profile=FleetProfile(emergencies_per_h=0.3))


def test_two_thousand_cameras_for_ten_minutes_are_quiet_and_every_emergency_is_raised(
        pg: Database, mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    result = measure(database_url=pg.url, mqtt_url=mosquitto.url, run=RUN, log=tmp_path / "ingest.log")
    print(result.report())
    assert result.emergency_senders, "the fleet sent no emergency: the test proves nothing of them"
    assert result.emergency_senders <= result.emergency_alerted, "an emergency was not raised"
    assert result.rate < 1.0, result.report()
