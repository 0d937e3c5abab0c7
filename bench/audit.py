"""What the audit log costs: entries per second written by 1 and by 4 processes at once (one
chain, an advisory lock per entry), the time to verify the whole chain, and an argon2
device-secret check. Needs PostgreSQL on 127.0.0.1:5432; uses a scratch database.

    .venv/bin/python bench/audit.py --entries 2000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services import audit  # noqa: E402
from services.registry import DeviceRecord, provision_device, verify_device_secret  # noqa: E402
from telemetry.schema import migrate  # noqa: E402

_WRITER = textwrap.dedent("""
    import sys, psycopg
    from services import audit
    url, n = sys.argv[1], int(sys.argv[2])
    with psycopg.connect(url) as conn:
        for i in range(n):
            audit.record(conn, actor="bench", action="export", device_id="bench-1", details={"i": i, "rows": 22000})
            conn.commit()
""")


def _writers(url: str, processes: int, entries: int) -> float:
    """Entries per second with ``processes`` writers sharing ``entries``, each committed alone."""
    each = entries // processes
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, url, str(each)],
                              cwd=Path(__file__).resolve().parents[1]) for _ in range(processes)]
    for proc in procs:
        if proc.wait(600) != 0:
            raise SystemExit("a writer failed")
    return each * processes / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--entries", type=int, default=2000)
    args = parser.parse_args()
    name = f"wf_bench_audit_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = psycopg.conninfo.make_conninfo(args.admin_url, dbname=name)
    try:
        with psycopg.connect(url) as conn:
            migrate(conn, retention=timedelta(days=30), compress_after=timedelta(days=2), timescaledb="off")
        rows = []
        for processes in (1, 4):
            rows.append((f"write, {processes} process{'es' if processes > 1 else ''}",
                         f"{_writers(url, processes, args.entries):,.0f} entries/s"))
        with psycopg.connect(url) as conn:
            total = conn.execute("SELECT count(*) FROM audit_log").fetchone()
            started = time.perf_counter()
            report = audit.verify(conn)
            elapsed = time.perf_counter() - started
            assert report.ok and total is not None and report.entries == total[0]
            rows.append((f"verify {report.entries:,} entries", f"{elapsed * 1000:.0f} ms "
                         f"({report.entries / elapsed:,.0f} entries/s)"))
            secret = provision_device(conn, record=DeviceRecord("bench-1", None, None, "Camden", "response"))
            conn.commit()
            started = time.perf_counter()
            for _ in range(10):
                assert verify_device_secret(conn, device_id="bench-1", secret=secret)
            rows.append(("device secret check (argon2id)", f"{(time.perf_counter() - started) * 100:.0f} ms each"))
        width = max(len(r[0]) for r in rows)
        for what, value in rows:
            print(f"{what:<{width}}  {value}")
    finally:
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
