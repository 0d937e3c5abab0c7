"""Real processes for the fault and observability tests: `watchfloor` subcommands, a private
PostgreSQL cluster that a test may stop and start, a publisher that keeps going through a
broker outage, and a Prometheus scraper. Every process is started here and stopped by PID."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg

from core.contract import Channel, topic_for
from telemetry.embedded import free_port
from tests.helpers.telemetry import publish_all, telemetry_payload

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def scrape(url: str) -> dict[str, float]:
    """``{'name{labels}': value}`` from a Prometheus text exposition; {} when unreachable."""
    try:
        text = httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


class WatchfloorProcess:
    """One `watchfloor` subcommand as a child process; can be killed and started again with
    the same environment (the same MQTT client id, so the same broker session)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "WatchfloorProcess":
        self.proc = subprocess.Popen([sys.executable, "-m", "watchfloor", *self.args], env={**os.environ, **self.env},
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no clean-up, no DISCONNECT, nothing flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@contextmanager
def watchfloor_process(args: list[str], env: dict[str, str], log: Path) -> Iterator[WatchfloorProcess]:
    process = WatchfloorProcess(args, env, log).start()
    try:
        yield process
    finally:
        process.stop()


class PrivatePostgres:
    """A PostgreSQL 15 cluster of this test's own (initdb in a temporary folder, a spare
    port), so that a test may stop it without touching the machine's server. As root, the
    server runs as the ``postgres`` user (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise FileNotFoundError(f"no PostgreSQL binaries in {PG_BIN}")
        self._user: int | None = None
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam("postgres").pw_uid
            except KeyError as missing:
                raise FileNotFoundError("running as root and there is no postgres user") from missing
        self.dir = Path(tempfile.mkdtemp(prefix="wf-faults-pg-"))
        self.data = self.dir / "data"
        if self._user is not None:
            os.chown(self.dir, self._user, -1)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._run([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                   "--no-sync"])

    def _popen(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        log = (self.dir / "server.log").open("ab")
        return subprocess.Popen(argv, stdout=log, stderr=log, cwd=self.dir,  # type: ignore[call-overload]
                                **({"user": self._user} if self._user is not None else {}), **kwargs)

    def _run(self, argv: list[str]) -> None:
        proc = self._popen(argv)
        if proc.wait(120) != 0:
            raise RuntimeError(f"{argv[0]} failed: {(self.dir / 'server.log').read_text()[-2000:]}")

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self, timeout: float = 30.0) -> None:
        self.proc = self._popen([str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
                                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
                                 "-c", "fsync=off"])
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.admin_url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start: {(self.dir / 'server.log').read_text()[-2000:]}")
                time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster, by PID): sessions are cut, the server exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RoundPublisher:
    """Publishes rounds of one report per device at QoS 1 on a thread. A round counts once
    the broker has acknowledged all of it; a round that fails (the broker is away) is sent
    again, byte for byte, until it is acknowledged, so the store sees the same keys twice
    and must keep one. ``acked`` is therefore exactly the set of reports the broker took."""

    def __init__(self, url: str, *, prefix: str, devices: int, rounds: int, pause_s: float = 0.02) -> None:
        self.url, self.prefix, self.devices, self.rounds, self.pause_s = url, prefix, devices, rounds, pause_s
        self.acked_rounds = 0
        self.retries = 0
        self.done = threading.Event()
        self._stop = threading.Event()
        self._hold = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"publisher-{prefix}", daemon=True)

    @property
    def acked(self) -> int:
        return self.acked_rounds * self.devices

    @property
    def total(self) -> int:
        return self.rounds * self.devices

    def start(self) -> "RoundPublisher":
        self._thread.start()
        return self

    def _run(self) -> None:
        for seq in range(1, self.rounds + 1):
            batch = [(topic_for(f"{self.prefix}-{d:03d}", Channel.TELEMETRY), telemetry_payload(seq))
                     for d in range(self.devices)]
            while not self._stop.is_set():
                try:
                    publish_all(self.url, batch, client_id=f"{self.prefix}-publisher", timeout=3)
                    break
                except Exception:  # broker away: refused, cut mid-round or timed out; send it all again
                    self.retries += 1
                    time.sleep(0.2)
            if self._stop.is_set():
                return
            self.acked_rounds = seq
            time.sleep(self.pause_s)
            while self._hold.is_set() and not self._stop.is_set():
                self._idle.set()
                time.sleep(0.05)
            self._idle.clear()
        self.done.set()

    def pause(self, timeout: float = 30.0) -> None:
        """Stop between two rounds (every round so far acknowledged); returns once idle."""
        self._hold.set()
        if not self._idle.wait(timeout) and not self.done.is_set():
            raise AssertionError("the publisher did not pause")

    def resume(self) -> None:
        self._hold.clear()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
