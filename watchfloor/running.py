"""What the long-running commands (``demo``, ``ingest``, ``simulate``) share: the database
migrated before they start, the simulated fleet in the registry, stopping on a signal, and
the ingest worker's status line."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

import psycopg

from core.settings import Settings
from services.registry import DeviceRecord, upsert_devices
from simulator.run import Simulator
from telemetry.ingest import IngestWorker
from telemetry.schema import features
from watchfloor.admin_commands import prepare_database

__all__ = ["migrate_first", "register_fleet", "report_ingest", "status_logger", "status_printer", "stop_on_signals"]

log = logging.getLogger("watchfloor")


def migrate_first(settings: Settings, url: str) -> tuple[list[str], frozenset[str]]:
    applied = prepare_database(settings, url)
    with psycopg.connect(url) as conn:
        return applied, features(conn)


def register_fleet(url: str, sim: Simulator) -> None:
    with psycopg.connect(url) as conn:
        upsert_devices(conn, (DeviceRecord(u.device_id, u.callsign, u.officer, u.borough.name, u.role)
                              for u in sim.units))


def stop_on_signals(*stoppers: threading.Event | IngestWorker | Simulator) -> threading.Event:
    done = threading.Event()

    def handler(signum: int, frame: object) -> None:
        done.set()
        for s in stoppers:
            s.set() if isinstance(s, threading.Event) else s.stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return done


def status_printer(line: str) -> None:
    print(line, flush=True)


def status_logger(line: str) -> None:
    log.info(line, extra={"event": "ingest_status"})


def report_ingest(worker: IngestWorker, sim: Simulator | None, every_s: float = 10.0,
            emit: Callable[[str], None] = status_printer) -> None:
    while True:
        time.sleep(every_s)
        s = worker.stats
        rejected = ", ".join(f"{k}={v}" for k, v in sorted(s.rejected.items())) or "none"
        line = (f"ingest: received {s.received}, stored {s.stored_telemetry} telemetry + "
                f"{s.stored_events} events, duplicates {s.duplicates}, rejected {rejected}, "
                f"queue {worker.queue_depth}, commit lag {s.last_commit_lag_s * 1000:.0f} ms")
        if sim is not None:
            line += f"; simulator published {sim.stats.published}"
        emit(line)
