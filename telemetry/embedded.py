"""Embedded parts for a machine with nothing installed: PostgreSQL and an MQTT broker.

* PostgreSQL comes from the ``pgserver`` wheel: a real server (16.x), on a unix socket in
  ``data_dir/pg``. It has no TimescaleDB, so the schema takes the plain-PostgreSQL path.
* The broker is rumqttd, via the ``iotcore`` wheel, in a child process. It was chosen over
  amqtt because amqtt drops unacknowledged QoS 1 messages after a crash (so "acknowledged
  after commit" would lose data) and has no MQTT 5 and no shared subscriptions. rumqttd
  redelivers them; but it panics when a persistent session with a ``$share`` filter
  resumes, so the embedded set-up runs one ingest worker on a direct subscription.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
from pathlib import Path

__all__ = ["EmbeddedBroker", "embedded_database_url", "free_port"]

log = logging.getLogger(__name__)

_BROKER_TOML = """\
id = 0

[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 5000
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "{host}:{port}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 65536
    max_inflight_count = 1000
    dynamic_filters = true
"""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, for a server started next. Taken below the kernel's
    ephemeral range where it can: a port from that range (what binding port 0 gives) can be
    handed to any outgoing connection before the server binds it, and at a thousand simulated
    cameras connecting, one was (a failed CI run)."""
    lowest_ephemeral = _lowest_ephemeral_port()
    for _ in range(50):
        port = random.randrange(_LOWEST_CHOSEN_PORT, lowest_ephemeral)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # a range this crowded: let the kernel choose
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


#: Above the ports of well-known services (PostgreSQL's 5432, Mosquitto's 1883 and 8883).
_LOWEST_CHOSEN_PORT = 10_000


def _lowest_ephemeral_port() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32_768  # Linux's default
    return max(low, _LOWEST_CHOSEN_PORT + 1_000)


def _clear_dead_handles(pgdata: Path) -> None:
    """pgserver keeps the pids of its users and never stops a server whose owner was
    SIGKILLed; forget dead pids so the last live user stops it."""
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    try:
        pids = json.loads(handles.read_text())
    except ValueError:
        return
    alive = []
    for pid in pids:
        try:
            os.kill(int(pid), 0)
            alive.append(pid)
        except (OSError, ValueError):
            pass
    handles.write_text(json.dumps(alive))


def embedded_database_url(data_dir: Path, *, delete_on_exit: bool = False) -> str:
    """Start (or attach to) the embedded PostgreSQL under ``data_dir/pg``; its URL. The server
    stops when the last process using it exits, and with ``delete_on_exit`` its data goes too."""
    # pgserver keeps a lock file under XDG_RUNTIME_DIR, read when it is first imported.
    os.environ.setdefault("XDG_RUNTIME_DIR", str((data_dir / "run").absolute()))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    import pgserver

    pgdata = (data_dir / "pg").absolute()
    pgdata.mkdir(parents=True, exist_ok=True)
    _clear_dead_handles(pgdata)
    server = pgserver.get_server(pgdata, cleanup_mode="delete" if delete_on_exit else "stop")  # type: ignore[attr-defined]
    return str(server.get_uri())


class EmbeddedBroker:
    """rumqttd on 127.0.0.1, MQTT 3.1.1, in a child process; ``stop()`` is idempotent."""

    def __init__(self, data_dir: Path, *, port: int | None = None, host: str = "127.0.0.1") -> None:
        from iotcore import Broker

        self.host = host
        self.port = port or free_port(host)
        data_dir.mkdir(parents=True, exist_ok=True)
        config = data_dir / "rumqttd.toml"
        config.write_text(_BROKER_TOML.format(host=host, port=self.port))
        self._broker = Broker(config_path=str(config))

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> "EmbeddedBroker":
        self._broker.start()
        log.info("embedded broker on %s", self.url)
        return self

    def stop(self) -> None:
        self._broker.stop()
