"""The shipped broker security (deploy/mosquitto: password file, pattern ACL, TLS listener)
on a real Mosquitto: devices provisioned with `watchfloor devices provision`, services added
with `watchfloor broker add-user`, and what each may and may not do."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from core.contract import REGISTRY_TOPIC, Channel, topic_for
from services import audit
from services.registry import change_announcement
from telemetry.embedded import free_port
from tests.helpers.db import MACHINE_PG, Database, _with_database, require_machine_pg
from tests.helpers.environment import missing, require_executable
from watchfloor import broker_credentials
from watchfloor.mosquitto import MosquittoProcess


@pytest.fixture(autouse=True, scope="module")
def _mosquitto_installed() -> None:
    require_executable("mosquitto")


def _watchfloor(*args: str, db: Database, mqtt_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHFLOOR_")}
    env["WATCHFLOOR_DATABASE_URL"] = db.url
    if mqtt_url is not None:
        env["WATCHFLOOR_MQTT_URL"] = mqtt_url
    result = subprocess.run([sys.executable, "-m", "watchfloor", *args], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result


@dataclass
class Broker:
    process: MosquittoProcess
    tls_port: int | None
    ca: Path | None
    secrets: dict[str, str]


def _throwaway_ca(where: Path) -> tuple[Path, Path, Path] | None:
    """A CA and a server certificate for 127.0.0.1, made now with openssl (never kept)."""
    if shutil.which("openssl") is None:
        return None
    ca_key, ca, key, csr, cert = (where / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    ext = where / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = [["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=test CA"],
           ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
           ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
            "-days", "1", "-extfile", ext]]
    for command in run:
        subprocess.run([str(c) for c in command], check=True, capture_output=True, timeout=60)
    return ca, cert, key


@pytest.fixture(scope="module")
def db() -> Iterator[Database]:
    """One database for the module: the broker and its accounts are set up once."""
    require_machine_pg()
    yield from _with_database(MACHINE_PG, "plain")


@pytest.fixture(scope="module")
def broker(db: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    pg, tmp_path = db, tmp_path_factory.mktemp("secure-broker")
    passwd = tmp_path / "passwd"
    secrets: dict[str, str] = {}
    for device, borough in (("cam-a", "Westminster"), ("cam-b", "Camden")):
        out = _watchfloor("devices", "provision", device, "--borough", borough, "--callsign", device.upper(),
                          "--mosquitto-passwd", str(passwd), db=pg)
        secrets[device] = out.stdout.strip().splitlines()[-1]
    for service in ("watchfloor-ingest", "watchfloor-api"):
        secrets[service] = _watchfloor("broker", "add-user", service, "--mosquitto-passwd", str(passwd),
                                       db=pg).stdout.strip()
    certs = _throwaway_ca(tmp_path)
    tls_port = free_port() if certs else None
    # The shipped TLS listener (conf.d/tls.conf) with the throwaway files in place of /mosquitto/certs.
    tls = [] if certs is None else [
        line.replace("8883 0.0.0.0", f"{tls_port} 127.0.0.1").replace("/mosquitto/certs/ca.crt", str(certs[0]))
        .replace("/mosquitto/certs/server.crt", str(certs[1])).replace("/mosquitto/certs/server.key", str(certs[2]))
        for line in (Path(__file__).parents[1] / "deploy/mosquitto/conf.d/tls.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")]
    process = MosquittoProcess(tmp_path / "mosquitto", password_file=passwd, extra=tls)
    process.start()
    try:
        yield Broker(process, tls_port, certs[0] if certs else None, secrets)
    finally:
        process.stop()


class Client:
    """A paho client (MQTT 5, so that the broker can say why it refuses a publish) that
    records its connect result, what it receives and the broker's answer to each publish.

    Mosquitto 2.0.11 answers a refused QoS 1 publish with PUBACK reason 135 (not authorised)
    and then drops the connection, so :func:`_denied` uses a connection of its own.
    """

    def __init__(self, port: int, username: str | None, password: str | None, *, ca: Path | None = None) -> None:
        self.connected: queue.Queue[int] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.subscribed: queue.Queue[list[int]] = queue.Queue()
        self.published: dict[int, int] = {}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}",
                                  protocol=paho.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.put(rc.value)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.put([r.value for r in rcs])
        self.client.on_publish = lambda c, u, mid, rc, p: self.published.__setitem__(mid, rc.value)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.rc = self.connected.get(timeout=10)

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1; the broker's reason code (under 128 accepted, 16 of them with no
        subscriber; 135 not authorised)."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        return self.published[info.mid]

    def subscribe(self, topic: str) -> list[int]:
        self.client.subscribe(topic, qos=1)
        return self.subscribed.get(timeout=10)

    def received_until(self, marker: bytes, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        """Everything received up to and including a message whose payload is ``marker``."""
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got.append(self.messages.get(timeout=0.2))
            except queue.Empty:
                continue
            if got[-1][1] == marker:
                return got
        raise AssertionError(f"marker {marker!r} never arrived; got {got}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _client(broker: Broker, username: str, **kw: object) -> Client:
    c = Client(broker.process.port, username, broker.secrets[username], **kw)  # type: ignore[arg-type]
    assert c.rc == 0, f"{username} refused: {c.rc}"
    return c


def _denied(broker: Broker, username: str, topic: str, payload: bytes) -> None:
    """``username`` publishes ``payload`` on ``topic`` and the broker refuses it (reason 135)."""
    c = _client(broker, username)
    try:
        assert c.publish(topic, payload) == 135
    finally:
        c.close()


def test_python_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    """The $7$ entry written in Python is what mosquitto_passwd writes for the same salt."""
    require_executable("mosquitto_passwd")
    path = tmp_path / "p"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "dev", "a secret"], check=True, timeout=30)
    theirs = path.read_text().strip().split(":", 1)[1]
    _, _, iterations, salt, _ = theirs.split("$")
    import base64
    ours = broker_credentials.mosquitto_hash("a secret", salt=base64.b64decode(salt), iterations=int(iterations))
    assert ours == theirs


def test_device_publishes_its_own_telemetry_only(broker: Broker) -> None:
    """cam-a's own telemetry reaches ingest; what cam-a publishes as cam-b never does."""
    ingest = _client(broker, "watchfloor-ingest")
    cam_a = _client(broker, "cam-a")
    try:
        assert ingest.subscribe("watchfloor/v1/devices/+/telemetry") == [1]
        _denied(broker, "cam-a", topic_for("cam-b", Channel.TELEMETRY), b"forged")
        _denied(broker, "cam-a", "watchfloor/v1/alerts", b"forged alert")
        _denied(broker, "cam-a", "watchfloor/v1/registry", b"forged registry change")
        _denied(broker, "cam-a", "watchfloor/v1/devices/cam-a/telemetry/extra", b"below its own topic")
        assert cam_a.publish(topic_for("cam-a", Channel.EVENTS), b"own event") == 16  # allowed, no subscriber
        assert cam_a.publish(topic_for("cam-a", Channel.TELEMETRY), b"own") == 0
        got = ingest.received_until(b"own")
        assert got == [(topic_for("cam-a", Channel.TELEMETRY), b"own")]
        # Nothing forged arrives late either: a second report of its own comes alone.
        assert cam_a.publish(topic_for("cam-a", Channel.TELEMETRY), b"sentinel") == 0
        assert ingest.received_until(b"sentinel") == [(topic_for("cam-a", Channel.TELEMETRY), b"sentinel")]
    finally:
        cam_a.close()
        ingest.close()


def test_oversized_messages_never_arrive(broker: Broker) -> None:
    """The shipped message_size_limit (64 KiB): a larger message from a camera, even on its
    own topic, is refused at the broker and never reaches ingest."""
    ingest = _client(broker, "watchfloor-ingest")
    try:
        ingest.subscribe("watchfloor/v1/devices/+/telemetry")
        big = _client(broker, "cam-a")
        try:
            # Mosquitto drops the connection (a protocol error): the message goes nowhere.
            dropped = threading.Event()
            big.client.on_disconnect = lambda *_: dropped.set()
            big.client.publish(topic_for("cam-a", Channel.TELEMETRY), b"x" * 70_000, qos=1)
            assert dropped.wait(10), "the broker kept a connection that sent an oversized message"
        finally:
            big.close()
        cam = _client(broker, "cam-a")
        try:
            cam.publish(topic_for("cam-a", Channel.TELEMETRY), b"small")
        finally:
            cam.close()
        assert ingest.received_until(b"small") == [(topic_for("cam-a", Channel.TELEMETRY), b"small")]
    finally:
        ingest.close()


def test_device_reads_only_its_own_commands(broker: Broker) -> None:
    """cam-a, subscribed to every device's commands, receives only its own; a device may not
    send commands or read other devices' telemetry."""
    api = _client(broker, "watchfloor-api")
    cam_a = _client(broker, "cam-a")
    cam_b = _client(broker, "cam-b")
    try:
        # Mosquitto 2.0 grants these subscriptions and applies the ACL to each message delivered.
        cam_a.subscribe("watchfloor/v1/devices/+/commands")
        cam_a.subscribe(topic_for("cam-b", Channel.COMMANDS))
        cam_a.subscribe(topic_for("cam-b", Channel.TELEMETRY))
        assert cam_b.subscribe(topic_for("cam-b", Channel.COMMANDS)) == [1]
        _denied(broker, "cam-a", topic_for("cam-b", Channel.COMMANDS), b"command from a device")
        api.publish(topic_for("cam-b", Channel.COMMANDS), b"for b")
        cam_b.publish(topic_for("cam-b", Channel.TELEMETRY), b"b telemetry")
        api.publish(topic_for("cam-a", Channel.COMMANDS), b"for a")
        assert cam_a.received_until(b"for a") == [(topic_for("cam-a", Channel.COMMANDS), b"for a")]
        assert cam_b.received_until(b"for b") == [(topic_for("cam-b", Channel.COMMANDS), b"for b")]
        # Nothing of the other's arrives late either: a second command to each comes alone.
        api.publish(topic_for("cam-b", Channel.COMMANDS), b"sentinel b")
        api.publish(topic_for("cam-a", Channel.COMMANDS), b"sentinel a")
        assert cam_a.received_until(b"sentinel a") == [(topic_for("cam-a", Channel.COMMANDS), b"sentinel a")]
        assert cam_b.received_until(b"sentinel b") == [(topic_for("cam-b", Channel.COMMANDS), b"sentinel b")]
    finally:
        for c in (cam_a, cam_b, api):
            c.close()


def test_wrong_unknown_and_anonymous_logins_are_refused(broker: Broker) -> None:
    """A wrong password, another device's secret, an unknown user and no credentials: refused
    (CONNACK 134 or 135: bad credentials, not authorised)."""
    port = broker.process.port
    for username, password in (("cam-a", "wrong"), ("cam-a", broker.secrets["cam-b"]), ("cam-z", "x"),
                               (None, None)):
        client = Client(port, username, password)
        try:
            assert client.rc in (134, 135), (username, client.rc)
        finally:
            client.close()


def test_tls_listener(broker: Broker) -> None:
    """The shipped TLS listener (with a throwaway certificate): a device logs in over TLS and its
    telemetry arrives; a client that does not trust the CA cannot connect."""
    if broker.tls_port is None or broker.ca is None:
        missing("openssl is not installed")
    ingest = _client(broker, "watchfloor-ingest")
    cam = Client(broker.tls_port, "cam-a", broker.secrets["cam-a"], ca=broker.ca)
    try:
        assert cam.rc == 0
        ingest.subscribe("watchfloor/v1/devices/+/telemetry")
        cam.publish(topic_for("cam-a", Channel.TELEMETRY), b"over tls")
        assert ingest.received_until(b"over tls")[-1] == (topic_for("cam-a", Channel.TELEMETRY), b"over tls")
    finally:
        cam.close()
        ingest.close()
    untrusting = paho.Client(CallbackAPIVersion.VERSION2, client_id="untrusting", protocol=paho.MQTTv5)
    untrusting.tls_set(cert_reqs=ssl.CERT_REQUIRED)  # the system's CAs only
    with pytest.raises(ssl.SSLError):
        untrusting.connect("127.0.0.1", broker.tls_port)


def test_provisioning_is_audited_and_a_reserved_name_refused(broker: Broker, db: Database) -> None:
    """Each provisioning leaves an audit entry by the CLI's user; the secret is not in it; a
    device may not take a service account's name."""
    with db.connect() as conn:
        rows = conn.execute("SELECT actor, device_id, details::text FROM audit_log WHERE action = 'device_provisioned'"
                            " ORDER BY seq").fetchall()
        assert [r[1] for r in rows] == ["cam-a", "cam-b"]
        assert all(r[0].startswith("cli") for r in rows)
        assert not any(broker.secrets["cam-a"] in r[2] for r in rows)
        assert audit.verify(conn).ok
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHFLOOR_")}
    result = subprocess.run([sys.executable, "-m", "watchfloor", "devices", "provision", "watchfloor-api"],
                            env={**env, "WATCHFLOOR_DATABASE_URL": db.url}, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "service" in result.stderr


def test_a_retired_device_can_no_longer_connect(broker: Broker, db: Database) -> None:
    """`watchfloor devices retire` revokes the secret and removes the broker entry: after a
    reload (SIGHUP) the camera is refused; the act is audited, and announced to the API
    processes (as the API's broker account). Runs last: it retires cam-b."""
    passwd = Path(str(broker.process.conf.read_text().split("password_file ")[1].split()[0]))
    api = _client(broker, "watchfloor-api")
    try:
        assert api.subscribe(REGISTRY_TOPIC) == [1]
        secret = quote(broker.secrets["watchfloor-api"], safe="")
        as_api = f"mqtt://watchfloor-api:{secret}@127.0.0.1:{broker.process.port}"
        _watchfloor("devices", "retire", "cam-b", "--mosquitto-passwd", str(passwd), db=db, mqtt_url=as_api)
        announced = change_announcement("cam-b", "retired")
        assert api.received_until(announced) == [(REGISTRY_TOPIC, announced)]
    finally:
        api.close()
    assert "cam-b" not in broker_credentials.users(passwd)
    assert broker.process.process is not None
    broker.process.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while True:
        client = Client(broker.process.port, "cam-b", broker.secrets["cam-b"])
        client.close()
        if client.rc in (134, 135) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert client.rc in (134, 135)
    with db.connect() as conn:
        row = conn.execute("SELECT details FROM audit_log WHERE action = 'device_retired' AND device_id = 'cam-b'"
                           ).fetchone()
    assert row is not None and row[0] == {"credentials_revoked": True, "broker_credentials_removed": True}
