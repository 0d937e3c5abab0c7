"""The shipped broker security (deploy/mosquitto: the services' password file and pattern ACL,
the cameras' TLS listener with the dynamic-security plugin) on a real Mosquitto: the plugin's
file written by `watchfloor broker init-device-accounts` (one camera migrated from a password
file), devices provisioned with `watchfloor devices provision` while the broker runs, services
added with `watchfloor broker add-user`, and what each may and may not do; a camera retired
through the API or the command line is disconnected at once and refused after."""

from __future__ import annotations

import os
import queue
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
from pydantic import ValidationError

from core.contract import ACCOUNTS_TOPIC, ALERT_POLICY_TOPIC, LIVE_UNITS_TOPIC, REGISTRY_TOPIC, Channel, topic_for
from core.settings import Settings
from services import audit
from services.accounts import Role, account_announcement, add_user
from services.alert_policy import policy_announcement
from services.device_accounts import ADMIN_USERNAME, DeviceAccounts, camera_acls, configured, parse_password_file
from services.registry import change_announcement
from telemetry.embedded import free_port
from tests.helpers.db import MACHINE_PG, Database, _with_database, require_machine_pg
from tests.helpers.environment import missing, require_executable
from tests.helpers.telemetry import make_settings, running_worker, telemetry_payload
from tests.helpers.waiting import wait_for
from watchfloor import broker_credentials
from watchfloor.mosquitto import MosquittoProcess, cameras_listener, dynsec_plugin, throwaway_ca


@pytest.fixture(autouse=True, scope="module")
def _mosquitto_installed() -> None:
    require_executable("mosquitto")


def _watchfloor(*args: str, db: Database, mqtt_url: str | None = None,
                env_extra: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHFLOOR_")}
    env["WATCHFLOOR_DATABASE_URL"] = db.url
    if mqtt_url is not None:
        env["WATCHFLOOR_MQTT_URL"] = mqtt_url
    result = subprocess.run([sys.executable, "-m", "watchfloor", *args], env={**env, **(env_extra or {})},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 or not check, result.stderr
    return result


@dataclass
class Broker:
    process: MosquittoProcess
    tls_port: int
    ca: Path
    secrets: dict[str, str]
    accounts_file: Path
    admin_url: str  # the device-admin account on the cameras' listener

    def accounts_env(self) -> dict[str, str]:
        """What provision and retire need to manage the cameras' logins."""
        return {"WATCHFLOOR_DEVICE_ACCOUNTS_URL": self.admin_url, "WATCHFLOOR_DEVICE_ACCOUNTS_CA_FILE": str(self.ca)}

    def service_url(self, username: str) -> str:
        return f"mqtt://{username}:{quote(self.secrets[username], safe='')}@127.0.0.1:{self.process.port}"


def _dynsec_plugin() -> str:
    found = dynsec_plugin()
    if found is None:
        missing("Mosquitto's dynamic-security plugin is not installed")
    return found


@pytest.fixture(scope="module")
def db() -> Iterator[Database]:
    """One database for the module: the broker and its accounts are set up once."""
    require_machine_pg()
    yield from _with_database(MACHINE_PG, "plain")


@pytest.fixture(scope="module")
def broker(db: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    pg, tmp_path = db, tmp_path_factory.mktemp("secure-broker")
    plugin = _dynsec_plugin()
    secrets: dict[str, str] = {}
    # An existing deployment's devices' password file (cam-m, written as the earlier releases
    # did), migrated into the plugin's first file with its secret unchanged.
    old_passwd, accounts = tmp_path / "passwd-devices", tmp_path / "device-accounts.json"
    secrets["cam-m"] = "a migrated camera's secret " + "m" * 20
    broker_credentials.set_password(old_passwd, username="cam-m", password=secrets["cam-m"])
    admin = _watchfloor("broker", "init-device-accounts", str(accounts), "--from-passwd", str(old_passwd), db=pg)
    secrets[ADMIN_USERNAME] = admin.stdout.strip()
    services_passwd = tmp_path / "passwd-services"
    for service in ("watchfloor-ingest", "watchfloor-api"):
        secrets[service] = _watchfloor("broker", "add-user", service, "--mosquitto-passwd", str(services_passwd),
                                       db=pg).stdout.strip()
    require_executable("openssl")
    ca, cert, key = throwaway_ca(tmp_path)
    tls_port = free_port()
    tls = cameras_listener(tls_port, ca=ca, cert=cert, key=key, plugin=plugin, accounts=accounts)
    process = MosquittoProcess(tmp_path / "mosquitto", password_file=services_passwd, extra=tls)
    process.start()
    admin_url = f"mqtts://{ADMIN_USERNAME}:{quote(secrets[ADMIN_USERNAME], safe='')}@127.0.0.1:{tls_port}"
    setup = Broker(process, tls_port, ca, secrets, accounts, admin_url)
    try:
        # Provisioned while the broker runs: each login works at once, without a reload.
        for device, borough in (("cam-a", "Westminster"), ("cam-b", "Camden"), ("cam-c", "Camden"),
                                ("cam-d", "Camden")):
            out = _watchfloor("devices", "provision", device, "--borough", borough, "--callsign", device.upper(),
                              db=pg, env_extra=setup.accounts_env())
            secrets[device] = out.stdout.strip().splitlines()[-1]
        yield setup
    finally:
        process.stop()


class Client:
    """A paho client (MQTT 5, so that the broker can say why it refuses a publish) that
    records its connect result, what it receives, the broker's answer to each publish and
    its disconnections (``client_id``: a camera's must be its device id).

    Mosquitto 2.0.11 answers a refused QoS 1 publish with PUBACK reason 135 (not authorised);
    on the services' listener (ACL file) it then drops the connection, so :func:`_denied` uses
    a connection of its own.
    """

    def __init__(self, port: int, username: str | None, password: str | None, *, ca: Path | None = None,
                 client_id: str | None = None) -> None:
        self.connected: queue.Queue[int] = queue.Queue()
        self.disconnected = threading.Event()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.subscribed: queue.Queue[list[int]] = queue.Queue()
        self.published: dict[int, int] = {}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
                                  protocol=paho.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.put(rc.value)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.put([r.value for r in rcs])
        self.client.on_publish = lambda c, u, mid, rc, p: self.published.__setitem__(mid, rc.value)
        self.client.on_disconnect = lambda *_: self.disconnected.set()
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


def _camera(broker: Broker, device_id: str, password: str | None = None) -> Client:
    """A camera on the cameras' listener (TLS), with its device id as client id."""
    return Client(broker.tls_port, device_id, broker.secrets[device_id] if password is None else password,
                  ca=broker.ca, client_id=device_id)


def _client(broker: Broker, username: str) -> Client:
    """``username`` logged in where its kind of account lives: a service on the services'
    listener, a camera on the cameras' (TLS) listener."""
    if username.startswith("watchfloor-"):
        c = Client(broker.process.port, username, broker.secrets[username])
    else:
        c = _camera(broker, username)
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
    try:
        assert ingest.subscribe("watchfloor/v1/devices/+/telemetry") == [1]
        # A camera has one client id (its device id), so a second connection of cam-a would
        # take over the first: deny first (each on a connection of its own), then connect.
        _denied(broker, "cam-a", topic_for("cam-b", Channel.TELEMETRY), b"forged")
        _denied(broker, "cam-a", "watchfloor/v1/alerts", b"forged alert")
        _denied(broker, "cam-a", "watchfloor/v1/registry", b"forged registry change")
        _denied(broker, "cam-a", "watchfloor/v1/devices/cam-a/telemetry/extra", b"below its own topic")
        cam_a = _client(broker, "cam-a")
        assert cam_a.publish(topic_for("cam-a", Channel.EVENTS), b"own event") == 16  # allowed, no subscriber
        assert cam_a.publish(topic_for("cam-a", Channel.TELEMETRY), b"own") == 0
        got = ingest.received_until(b"own")
        assert got == [(topic_for("cam-a", Channel.TELEMETRY), b"own")]
        # Nothing forged arrives late either: a second report of its own comes alone.
        assert cam_a.publish(topic_for("cam-a", Channel.TELEMETRY), b"sentinel") == 0
        assert ingest.received_until(b"sentinel") == [(topic_for("cam-a", Channel.TELEMETRY), b"sentinel")]
        cam_a.close()
    finally:
        ingest.close()


def test_only_ingest_writes_the_live_picture_and_the_api_reads_no_device_state(broker: Broker) -> None:
    """The attack: a camera, or a stolen API account, forges a live-units frame to put a unit
    somewhere on every screen. The broker refuses both; the API's account receives only
    ingest's frame. It no longer receives the devices' telemetry or status either (the live
    picture is what ingest stored)."""
    api = _client(broker, "watchfloor-api")
    try:
        assert api.subscribe(LIVE_UNITS_TOPIC) == [1]
        api.subscribe(f"watchfloor/v1/devices/+/{Channel.TELEMETRY.value}")
        api.subscribe(f"watchfloor/v1/devices/+/{Channel.STATUS.value}")
        _denied(broker, "cam-a", LIVE_UNITS_TOPIC, b"forged by a camera")
        _denied(broker, "watchfloor-api", LIVE_UNITS_TOPIC, b"forged by the API's account")
        cam_a = _client(broker, "cam-a")
        try:
            assert cam_a.publish(topic_for("cam-a", Channel.TELEMETRY), b"a camera's own report") < 128
            assert cam_a.publish(topic_for("cam-a", Channel.STATUS), b"online") < 128
        finally:
            cam_a.close()
        ingest = _client(broker, "watchfloor-ingest")
        try:
            assert ingest.publish(LIVE_UNITS_TOPIC, b"sentinel") < 128
        finally:
            ingest.close()
        assert api.received_until(b"sentinel") == [(LIVE_UNITS_TOPIC, b"sentinel")]
    finally:
        api.close()


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
    """cam-a may subscribe to its own commands only (the broker refuses every other
    subscription, reason 135) and receives only its own; a device may not send commands or
    read other devices' telemetry."""
    _denied(broker, "cam-a", topic_for("cam-b", Channel.COMMANDS), b"command from a device")
    api = _client(broker, "watchfloor-api")
    cam_a = _client(broker, "cam-a")
    cam_b = _client(broker, "cam-b")
    try:
        # The plugin checks each subscription against the camera's role (a literal topic).
        assert cam_a.subscribe("watchfloor/v1/devices/+/commands") == [135]
        assert cam_a.subscribe(topic_for("cam-b", Channel.COMMANDS)) == [135]
        assert cam_a.subscribe(topic_for("cam-b", Channel.TELEMETRY)) == [135]
        assert cam_a.subscribe("#") == [135]
        assert cam_a.subscribe(topic_for("cam-a", Channel.COMMANDS)) == [1]
        assert cam_b.subscribe(topic_for("cam-b", Channel.COMMANDS)) == [1]
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
    (CONNACK 134 or 135: bad credentials, not authorised); a camera's own secret on the
    services' listener too (only service accounts exist there), and a service's on the cameras'."""
    cameras = broker.tls_port
    for port, username, password in ((cameras, "cam-a", "wrong"), (cameras, "cam-a", broker.secrets["cam-b"]),
                                     (cameras, "cam-z", "x"), (cameras, None, None),
                                     (cameras, "watchfloor-api", broker.secrets["watchfloor-api"]),
                                     (broker.process.port, "cam-a", broker.secrets["cam-a"]),
                                     (broker.process.port, "watchfloor-api", "wrong"),
                                     (broker.process.port, None, None)):
        client = Client(port, username, password, ca=broker.ca if port == cameras else None)
        try:
            assert client.rc in (134, 135), (username, client.rc)
        finally:
            client.close()


def test_tls_listener(broker: Broker) -> None:
    """The shipped TLS listener (with a throwaway certificate): a device logs in over TLS and its
    telemetry arrives; a client that does not trust the CA cannot connect."""
    ingest = _client(broker, "watchfloor-ingest")
    cam = _camera(broker, "cam-a")
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
    """Each provisioning leaves an audit entry by the CLI's user, saying a broker login was made;
    the secret is not in it; a device may not take a service account's name."""
    with db.connect() as conn:
        rows = conn.execute("SELECT actor, device_id, details::text FROM audit_log WHERE action = 'device_provisioned'"
                            " ORDER BY seq").fetchall()
        assert [r[1] for r in rows][:4] == ["cam-a", "cam-b", "cam-c", "cam-d"]
        assert all(r[0].startswith("cli") for r in rows)
        assert all('"broker_login": true' in r[2] for r in rows)
        assert not any(broker.secrets["cam-a"] in r[2] for r in rows)
        assert audit.verify(conn).ok
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHFLOOR_")}
    result = subprocess.run([sys.executable, "-m", "watchfloor", "devices", "provision", "watchfloor-api"],
                            env={**env, "WATCHFLOOR_DATABASE_URL": db.url, **broker.accounts_env()},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "service" in result.stderr


class _Camera:
    """A camera on MQTT 3.1.1 that counts its connections and the broker's PUBACKs (paho
    reconnects by itself, as a camera's firmware would)."""

    def __init__(self, broker: Broker, port: int, username: str, *, client_id: str, clean: bool = True) -> None:
        self.connects: queue.Queue[int] = queue.Queue()
        self.disconnects = 0
        self.acked: set[int] = set()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
                                  clean_session=clean)
        self.client.username_pw_set(username, broker.secrets[username])
        if port == broker.tls_port:
            self.client.tls_set(ca_certs=str(broker.ca), cert_reqs=ssl.CERT_REQUIRED)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = lambda c, u, f, rc, p: self.connects.put(rc.value)
        self.client.on_disconnect = lambda c, u, f, rc, p: setattr(self, "disconnects", self.disconnects + 1)
        self.client.on_publish = lambda c, u, mid, rc, p: self.acked.add(mid)
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        self.rc = self.connects.get(timeout=10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("listener", ["cameras", "services"])
@pytest.mark.parametrize("victim", ["another camera", "ingest"])
def test_a_camera_cannot_take_over_another_client_id(broker: Broker, db: Database, listener: str,
                                                     victim: str) -> None:
    """cam-a connects (and keeps reconnecting, clean_session=false) with cam-c's client id or
    the ingest worker's, on the cameras' listener or the services', while cam-c publishes QoS 1
    telemetry: every message the broker acknowledged to cam-c is stored exactly once, and
    neither cam-c's connection nor the worker's session is ever taken over."""
    ingest_id = "watchfloor-ingest-1"  # the documented id; every case resumes the same session
    settings = make_settings(ingest_client_id=ingest_id, ingest_share_group="watchfloor-ingest",
                             mqtt_protocol="3.1.1")
    secret = quote(broker.secrets["watchfloor-ingest"], safe="")
    as_ingest = f"mqtt://watchfloor-ingest:{secret}@127.0.0.1:{broker.process.port}"
    base = int(uuid.uuid4().int % 1_000_000) * 1000
    with running_worker(database_url=db.url, mqtt_url=as_ingest, settings=settings) as worker:
        connections = worker.broker_connections
        cam_c = _Camera(broker, broker.tls_port, "cam-c", client_id="cam-c")
        assert cam_c.rc == 0
        port = broker.tls_port if listener == "cameras" else broker.process.port
        attacker = _Camera(broker, port, "cam-a", client_id="cam-c" if victim == "another camera" else ingest_id,
                           clean=False)
        # On the cameras' listener a camera's login is bound to its own client id; on the
        # services' no device account exists: refused either way, so it takes nothing.
        assert attacker.rc in (134, 135), attacker.rc
        try:
            seqs = range(base, base + 300)
            mids: dict[int, int] = {}
            for seq in seqs:
                info = cam_c.client.publish(topic_for("cam-c", Channel.TELEMETRY), telemetry_payload(seq), qos=1)
                mids[info.mid] = seq
                time.sleep(0.01)  # pacing, not waiting: spread over seconds while the attacker reconnects
        finally:
            attacker.close()
        sentinel = base + 999
        cam_c.client.publish(topic_for("cam-c", Channel.TELEMETRY), telemetry_payload(sentinel), qos=1)
        stored_sentinel = "SELECT count(*) FROM telemetry WHERE device_id = 'cam-c' AND seq = %s"
        wait_for(lambda: db.scalar(stored_sentinel, (sentinel,)), what="cam-c's last message stored")
        disconnected, reconnected = cam_c.disconnects, not cam_c.connects.empty()
        cam_c.close()
        acked = {mids[m] for m in cam_c.acked if m in mids}
        with db.connect() as conn:
            counts = dict(conn.execute("SELECT seq, count(*) FROM telemetry WHERE device_id = 'cam-c' AND "
                                       "seq BETWEEN %s AND %s GROUP BY seq", (base, base + 299)).fetchall())
        assert acked, "the broker acknowledged nothing"
        lost = sorted(acked - set(counts))
        assert not lost, f"{len(lost)} of {len(acked)} acknowledged messages never stored"
        assert set(counts.values()) == {1}
        assert worker.broker_connections == connections and worker.broker_connected, "ingest's session was taken"
        assert not disconnected and not reconnected, "cam-c was disconnected"


def test_service_client_ids_stay_out_of_the_devices_namespace(broker: Broker) -> None:
    """Client ids are one namespace across Mosquitto's listeners: a service client named like a
    device (here cam-a) loses its connection when that camera logs in. So a worker's client id
    must start with watchfloor-, which no device id may: the settings refuse any other."""
    named_like_a_camera = _Camera(broker, broker.process.port, "watchfloor-api", client_id="cam-a")
    try:
        assert named_like_a_camera.rc == 0
        camera = _client(broker, "cam-a")
        wait_for(lambda: named_like_a_camera.disconnects, what="the service client to be taken over")
        camera.close()
    finally:
        named_like_a_camera.close()
    with pytest.raises(ValidationError):
        Settings(ingest_client_id="ingest-1")
    assert Settings(ingest_client_id="watchfloor-ingest-2").ingest_client_id == "watchfloor-ingest-2"


def test_only_the_api_account_uses_the_accounts_topic(broker: Broker, db: Database) -> None:
    """Account changes (which end users' tokens) are announced on watchfloor/v1/accounts by
    `watchfloor users disable` as the API's broker account and read by it; a camera and the
    ingest account may not publish there."""
    _denied(broker, "cam-a", ACCOUNTS_TOPIC, b"forged account change")
    _denied(broker, "watchfloor-ingest", ACCOUNTS_TOPIC, b"forged account change")
    with db.connect() as conn:
        add_user(conn, username="acl-user", password="a long enough password", role=Role.OPERATOR, areas=["*"])
    api = _client(broker, "watchfloor-api")
    try:
        assert api.subscribe(ACCOUNTS_TOPIC) == [1]
        secret = quote(broker.secrets["watchfloor-api"], safe="")
        as_api = f"mqtt://watchfloor-api:{secret}@127.0.0.1:{broker.process.port}"
        _watchfloor("users", "disable", "acl-user", db=db, mqtt_url=as_api)
        announced = account_announcement("acl-user", "disabled")
        assert api.received_until(announced) == [(ACCOUNTS_TOPIC, announced)]
    finally:
        api.close()


def test_only_the_api_announces_alert_policy_changes_and_only_ingest_hears_them(broker: Broker) -> None:
    """The alert policy's announcements (watchfloor/v1/alert-policy) are the API's to publish
    and ingest's to read: a camera or ingest publishing there is refused, and a camera that
    subscribes receives nothing (its own command, sent after, arrives alone)."""
    _denied(broker, "cam-a", ALERT_POLICY_TOPIC, b"forged policy change")
    _denied(broker, "watchfloor-ingest", ALERT_POLICY_TOPIC, b"forged policy change")
    ingest, camera, api = (_client(broker, "watchfloor-ingest"), _client(broker, "cam-a"),
                           _client(broker, "watchfloor-api"))
    try:
        assert ingest.subscribe(ALERT_POLICY_TOPIC) == [1]
        camera.subscribe(ALERT_POLICY_TOPIC)
        assert camera.subscribe(topic_for("cam-a", Channel.COMMANDS)) == [1]
        announced = policy_announcement(7)
        assert api.publish(ALERT_POLICY_TOPIC, announced) < 128
        assert ingest.received_until(announced) == [(ALERT_POLICY_TOPIC, announced)]
        assert api.publish(topic_for("cam-a", Channel.COMMANDS), b"sentinel") < 128
        assert camera.received_until(b"sentinel") == [(topic_for("cam-a", Channel.COMMANDS), b"sentinel")]
    finally:
        for c in (ingest, camera, api):
            c.close()


def _connected_camera(broker: Broker, device_id: str) -> Client:
    """A camera logged in, whose own telemetry the broker accepts (QoS 1, acknowledged)."""
    camera = _camera(broker, device_id)
    assert camera.rc == 0, camera.rc
    assert camera.publish(topic_for(device_id, Channel.TELEMETRY), b"before") in (0, 16)
    return camera


def _retired_row(db: Database, device_id: str) -> object:
    with db.connect() as conn:
        row = conn.execute("SELECT details FROM audit_log WHERE action = 'device_retired' AND device_id = %s "
                           "ORDER BY seq DESC LIMIT 1", (device_id,)).fetchone()
    return row[0] if row else None


def test_a_camera_retired_through_the_api_is_disconnected_and_refused(broker: Broker, db: Database) -> None:
    """The attack: a camera keeps its broker login after an admin retired it in the control
    room. `POST /api/v1/devices/{id}/retire` on an API whose broker has accounts disables the
    camera's login before it commits: the connected camera is disconnected at once, its next
    login is refused, and the audit entry says so. (Before the plugin, the API's retire never
    touched the broker: the camera stayed connected and could log in again.) A broker that
    does not confirm leaves the device in service (503)."""
    from tests.helpers.api import add_test_users, client, running_api

    with db.connect() as conn:
        add_test_users(conn)
    settings = make_settings(device_accounts_url=broker.admin_url, device_accounts_ca_file=broker.ca)
    wrong = broker.admin_url.replace(quote(broker.secrets[ADMIN_USERNAME], safe=""), "wrong-password")
    camera = _connected_camera(broker, "cam-d")
    try:
        # A broker that does not disable the login: 503, and the device stays in service.
        with running_api(database_url=db.url, mqtt_url=broker.service_url("watchfloor-api"),
                         settings=settings.model_copy(update={"device_accounts_url": wrong})) as api, \
                client(api.base, "admin") as admin:
            response = admin.post("/api/v1/devices/cam-d/retire")
            assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable", response.text
        assert db.scalar("SELECT retired_at IS NULL FROM devices WHERE device_id = 'cam-d'")
        assert camera.publish(topic_for("cam-d", Channel.TELEMETRY), b"still in service") in (0, 16)
        with running_api(database_url=db.url, mqtt_url=broker.service_url("watchfloor-api"),
                         settings=settings) as api, client(api.base, "admin") as admin:
            response = admin.post("/api/v1/devices/cam-d/retire")
            assert response.status_code == 200, response.text
            assert camera.disconnected.wait(10), "the retired camera is still connected"
    finally:
        camera.close()
    again = _camera(broker, "cam-d")
    again.close()
    assert again.rc in (134, 135), again.rc
    assert _retired_row(db, "cam-d") == {"credentials_revoked": True, "broker_login_disabled": True}


def test_a_camera_retired_with_the_command_is_disconnected_and_refused(broker: Broker, db: Database) -> None:
    """`watchfloor devices retire` revokes the secret and disables the broker login: the
    connected camera is disconnected at once and its next login refused, without a reload;
    the act is audited and announced to the API processes (as the API's broker account).
    Provisioned again (`--reactivate`), it logs in with its new secret only."""
    camera = _connected_camera(broker, "cam-b")
    api = _client(broker, "watchfloor-api")
    try:
        assert api.subscribe(REGISTRY_TOPIC) == [1]
        out = _watchfloor("devices", "retire", "cam-b", db=db, mqtt_url=broker.service_url("watchfloor-api"),
                          env_extra=broker.accounts_env())
        assert "disconnected now" in out.stdout
        assert camera.disconnected.wait(10), "the retired camera is still connected"
        announced = change_announcement("cam-b", "retired")
        assert api.received_until(announced) == [(REGISTRY_TOPIC, announced)]
    finally:
        api.close()
        camera.close()
    refused = _camera(broker, "cam-b")
    refused.close()
    assert refused.rc in (134, 135), refused.rc
    assert _retired_row(db, "cam-b") == {"credentials_revoked": True, "broker_login_disabled": True}
    out = _watchfloor("devices", "provision", "cam-b", "--borough", "Camden", "--reactivate", db=db,
                      mqtt_url=broker.service_url("watchfloor-api"), env_extra=broker.accounts_env())
    renewed = out.stdout.strip().splitlines()[-1]
    old, new = _camera(broker, "cam-b"), _camera(broker, "cam-b", renewed)
    old.close()
    new.close()
    assert old.rc in (134, 135) and new.rc == 0, (old.rc, new.rc)


def test_retiring_fails_whole_when_the_broker_does_not_disable_the_login(broker: Broker, db: Database) -> None:
    """With a device-admin password the broker refuses, the command exits non-zero and the
    device stays in service: retired only when its login is disabled too."""
    wrong = broker.admin_url.replace(quote(broker.secrets[ADMIN_USERNAME], safe=""), "wrong-password")
    result = _watchfloor("devices", "retire", "cam-c", db=db, check=False,
                         env_extra={**broker.accounts_env(), "WATCHFLOOR_DEVICE_ACCOUNTS_URL": wrong})
    assert result.returncode != 0 and "refused the admin login" in result.stderr
    assert db.scalar("SELECT retired_at IS NULL FROM devices WHERE device_id = 'cam-c'")
    camera = _camera(broker, "cam-c")
    camera.close()
    assert camera.rc == 0


def test_a_migrated_camera_keeps_its_secret_and_its_acl(broker: Broker) -> None:
    """`watchfloor broker init-device-accounts --from-passwd` carries a password file's
    camera over with its secret: it logs in, publishes its own telemetry and nothing else."""
    _denied(broker, "cam-m", topic_for("cam-a", Channel.TELEMETRY), b"forged")
    camera = _camera(broker, "cam-m")
    try:
        assert camera.rc == 0
        assert camera.publish(topic_for("cam-m", Channel.TELEMETRY), b"migrated") in (0, 16)
    finally:
        camera.close()
    with pytest.raises(ValueError, match="line 1"):
        parse_password_file("cam-x:$6$salt$hash\n")  # Mosquitto 1.x's format


def test_the_device_admin_account_reaches_only_the_control_topic(broker: Broker) -> None:
    """The admin account exists only on the cameras' listener and may only use the plugin's
    control topic: it may not publish as a camera nor read the cameras' topics."""
    admin = Client(broker.tls_port, ADMIN_USERNAME, broker.secrets[ADMIN_USERNAME], ca=broker.ca)
    try:
        assert admin.rc == 0
        assert admin.subscribe("watchfloor/v1/devices/+/telemetry") == [135]
        assert admin.publish(topic_for("cam-a", Channel.TELEMETRY), b"forged") == 135
    finally:
        admin.close()
    refused = Client(broker.process.port, ADMIN_USERNAME, broker.secrets[ADMIN_USERNAME])
    refused.close()
    assert refused.rc in (134, 135)
    assert DeviceAccounts(broker.admin_url, ca_file=broker.ca).disable("never-provisioned") is False


def test_an_authenticated_broker_needs_the_device_accounts_url() -> None:
    """A process whose broker has accounts (its URL has a username) refuses to run without
    the device-accounts URL, so that no retirement leaves a login working; the demo's and the
    tests' anonymous brokers need none."""
    with pytest.raises(ValueError, match="WATCHFLOOR_DEVICE_ACCOUNTS_URL"):
        configured(Settings(), mqtt_url="mqtt://watchfloor-api:pw@broker:1883")
    assert configured(Settings(), mqtt_url="mqtt://127.0.0.1:1883") is None
    assert configured(Settings(), mqtt_url=None) is None
    given = configured(Settings(device_accounts_url="mqtts://a:b@h:8883"), mqtt_url="mqtt://u:p@h:1883")
    assert given is not None and given.url == "mqtts://a:b@h:8883"


def test_a_cameras_role_is_the_shipped_acls_camera_lines() -> None:
    """The plugin's role for a camera grants exactly the `pattern` lines of deploy/mosquitto/acl
    (write: publish; read: receive and subscribe), with the device id for %u, and nothing else."""
    shipped = [line.split() for line in (Path(__file__).parents[1] / "deploy/mosquitto/acl").read_text().splitlines()
               if line.startswith("pattern ")]
    assert shipped
    expected = set()
    for _, access, topic in shipped:
        topic = topic.replace("%u", "cam-q")
        if access == "write":
            expected.add(("publishClientSend", topic))
        else:
            expected |= {("publishClientReceive", topic), ("subscribeLiteral", topic)}
    granted = [(acl["acltype"], acl["topic"]) for acl in camera_acls("cam-q") if acl["allow"]]
    assert sorted(granted) == sorted(expected) and len(granted) == len(camera_acls("cam-q"))
