"""Cameras' broker logins, held by Mosquitto's dynamic-security plugin on the cameras' listener.

A camera's login is a dynsec *client* (username and bound client id = its device id,
password = its device secret) with a *role* of its own that allows exactly what the shipped
ACL allows a camera: publish its own telemetry, events, status and command replies, and
receive its own commands. :class:`DeviceAccounts` changes them while the broker runs, by
sending commands on ``$CONTROL/dynamic-security/v1`` and waiting for the broker's answer on
``…/response``: ``disableClient`` (retirement) disconnects the camera at once and refuses its
next login, with no reload. :func:`initial_config` writes the plugin's first file (the admin
account, and the cameras migrated from a Mosquitto password file).

Facts of Mosquitto 2.0.11 this relies on (measured; deploy/mosquitto/README.md says
more):

* With ``per_listener_settings true`` the plugin answers ``$CONTROL`` only for clients of the
  listener that loads it, so the admin connects to the cameras' listener (TLS, 8883).
* A role's ACL topics are taken literally (``%u`` and ``%c`` are not expanded), hence one
  role per camera, named :func:`role_name`.
* Each command may carry ``correlationData``, echoed in its response (the MQTT 5 property is
  not); every subscriber of the response topic sees every admin's responses.
* A client with ``clientid`` set may log in only with that client id; so the admin account,
  which has none, connects with a fresh id each time and several processes administer at once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import secrets
import ssl
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from core.contract import SERVICE_PREFIX, Channel, topic_for
from core.mqtt import BrokerAddress
from core.settings import Settings
from services.errors import Unavailable

__all__ = ["ADMIN_USERNAME", "CAMERA_PUBLISHES", "CONTROL_TOPIC", "RESPONSE_TOPIC", "DeviceAccounts",
           "camera_acls", "configured", "initial_config", "mosquitto_password", "parse_password_file", "role_name"]

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
# The account the API and the command line administer cameras' logins with; in the services'
# namespace, which no device id may enter.
ADMIN_USERNAME = f"{SERVICE_PREFIX}device-admin"
_ADMIN_ROLE = "device-admin"
# What a camera publishes (deploy/mosquitto/acl: `pattern write`); it receives its commands only.
CAMERA_PUBLISHES = (Channel.TELEMETRY, Channel.EVENTS, Channel.STATUS, Channel.COMMAND_REPLIES)
_SALT_BYTES, _HASH_BYTES, _ITERATIONS = 12, 64, 101  # Mosquitto's own (see watchfloor/broker_credentials.py)
# Answers to a delete of something absent: provisioning deletes before it creates.
_ABSENT = ("Client not found", "Role not found")


def role_name(device_id: str) -> str:
    """The camera's own role (dynsec roles take topics literally, so each camera has one)."""
    return f"device-{device_id}"


def camera_acls(device_id: str) -> list[dict[str, Any]]:
    """Exactly what deploy/mosquitto/acl grants a camera, as dynsec ACLs; everything else falls
    to the file's ``defaultACLAccess``, which denies."""
    sends = [{"acltype": "publishClientSend", "topic": topic_for(device_id, channel), "allow": True}
             for channel in CAMERA_PUBLISHES]
    commands = topic_for(device_id, Channel.COMMANDS)
    return [*sends, {"acltype": "publishClientReceive", "topic": commands, "allow": True},
            {"acltype": "subscribeLiteral", "topic": commands, "allow": True}]


def mosquitto_password(secret: str, *, salt: bytes | None = None, iterations: int | None = None) -> dict[str, Any]:
    """Mosquitto 2's stored password, as dynsec keeps it: PBKDF2-HMAC-SHA512 over 12 raw salt
    bytes, both base64 (a password file's ``$7$iterations$salt$password`` holds the same).
    ``salt`` and ``iterations`` default to a fresh salt and Mosquitto's own count."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    iterations = _ITERATIONS if iterations is None else iterations
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, iterations, _HASH_BYTES)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
            "iterations": iterations}


def parse_password_file(text: str) -> dict[str, dict[str, Any]]:
    """A Mosquitto 2 password file's ``user:$7$iterations$salt$hash`` entries as dynsec
    passwords (the same PBKDF2-SHA512, so the camera's secret carries over unchanged).
    ValueError names a line in another format (e.g. 1.x's ``$6$``)."""
    found: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        username, _, entry = line.partition(":")
        parts = entry.split("$")
        if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
            raise ValueError(f"line {number} ({username}): not a Mosquitto 2 `$7$` entry")
        found[username] = {"password": parts[4], "salt": parts[3], "iterations": int(parts[2])}
    return found


def _camera_client(device_id: str, password: Mapping[str, Any]) -> dict[str, Any]:
    # clientid binds the login to the device id: a camera cannot take another client's session.
    return {"username": device_id, "clientid": device_id, "roles": [{"rolename": role_name(device_id)}], **password}


def initial_config(*, admin_password: str, cameras: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The dynamic-security plugin's first file: every default denied, the admin account (which
    may only use the plugin's control topic) and ``cameras`` (device id to a dynsec password,
    e.g. from :func:`parse_password_file`), each with its role."""
    admin_acls = [{"acltype": "publishClientSend", "topic": CONTROL_TOPIC, "allow": True},
                  {"acltype": "publishClientReceive", "topic": RESPONSE_TOPIC, "allow": True},
                  {"acltype": "subscribeLiteral", "topic": RESPONSE_TOPIC, "allow": True}]
    return {
        # The plugin's own default lets every client receive whatever it subscribed to;
        # nothing here is allowed unless a role says so.
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                             "unsubscribe": True},
        "clients": [{"username": ADMIN_USERNAME, "roles": [{"rolename": _ADMIN_ROLE}],
                     **mosquitto_password(admin_password)},
                    *(_camera_client(device_id, password) for device_id, password in sorted(cameras.items()))],
        "groups": [],
        "roles": [{"rolename": _ADMIN_ROLE, "acls": admin_acls},
                  *({"rolename": role_name(d), "acls": camera_acls(d)} for d in sorted(cameras))],
    }


@dataclass(frozen=True)
class DeviceAccounts:
    """The cameras' logins on a running broker, through the dynamic-security plugin.

    ``url`` is ``mqtts://watchfloor-device-admin:PASSWORD@HOST:8883`` (the cameras' listener);
    ``ca_file`` the CA the broker's certificate is checked against (unset: the system's).
    Each call is one short connection that waits at most ``timeout`` seconds for the broker's
    answer; a broker that cannot be reached, refuses the login or does not answer raises
    :class:`Unavailable` (503), and the caller's transaction is not committed.
    """

    url: str
    ca_file: Path | None = None
    timeout: float = 10.0

    def provision(self, device_id: str, secret: str) -> None:
        """Give the camera a login with ``secret`` and its own role, enabled; an earlier login
        (and its connection) is replaced, so an old secret stops working at once."""
        client = {**_camera_client(device_id, {}), "password": secret}
        self._run([{"command": "deleteClient", "username": device_id},
                   {"command": "deleteRole", "rolename": role_name(device_id)},
                   {"command": "createRole", "rolename": role_name(device_id), "acls": camera_acls(device_id)},
                   {"command": "createClient", **client}],
                  absent_ok=2)

    def disable(self, device_id: str) -> bool:
        """Disable the camera's login: the broker disconnects it now and refuses it from then
        on. False if it has no login here (never provisioned with this broker)."""
        return self._run([{"command": "disableClient", "username": device_id}], absent_ok=1) == [True]

    def _run(self, commands: Sequence[dict[str, Any]], *, absent_ok: int) -> list[bool]:
        """Send ``commands`` in one message and wait for their responses. The first
        ``absent_ok`` may answer that their client or role does not exist (False in the
        result); any other error raises :class:`Unavailable` naming it."""
        tag = uuid.uuid4().hex
        tagged = [{**command, "correlationData": f"{tag}-{i}"} for i, command in enumerate(commands)]
        responses = self._exchange(json.dumps({"commands": tagged}).encode(), tag)
        by_tag = {r.get("correlationData"): r for r in responses}
        result = []
        for i, command in enumerate(commands):
            response = by_tag.get(f"{tag}-{i}")
            if response is None:
                raise Unavailable(f"the broker did not answer {command['command']}")
            error = response.get("error")
            if error is not None and not (i < absent_ok and error in _ABSENT):
                raise Unavailable(f"the broker refused {command['command']}: {error}")
            result.append(error is None)
        return result

    def _exchange(self, payload: bytes, tag: str) -> Iterable[dict[str, Any]]:
        """Connect, subscribe to the responses, publish ``payload``, and return the first response
        message carrying ``tag`` (other admins' responses, which every subscriber sees, are skipped)."""
        address = BrokerAddress.parse(self.url)
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{SERVICE_PREFIX}devices-{tag[:12]}",
                             protocol=paho.MQTTv5)
        if address.username:
            client.username_pw_set(address.username, address.password)
        if address.tls:
            client.tls_set(ca_certs=str(self.ca_file) if self.ca_file else None, cert_reqs=ssl.CERT_REQUIRED)

        def on_connect(c: paho.Client, u: object, f: object, reason: ReasonCode, p: object) -> None:
            events.put(("connect", reason))

        def on_subscribe(c: paho.Client, u: object, mid: int, reasons: list[ReasonCode], p: object) -> None:
            events.put(("subscribe", reasons))

        def on_disconnect(c: paho.Client, u: object, f: object, reason: ReasonCode, p: object) -> None:
            events.put(("disconnect", reason))

        client.on_connect, client.on_subscribe, client.on_disconnect = on_connect, on_subscribe, on_disconnect
        client.on_message = lambda c, u, message: events.put(("message", message.payload))
        try:
            client.connect(address.host, address.port, keepalive=30)
        except (OSError, ssl.SSLError) as error:
            raise Unavailable(f"cannot reach the device-accounts broker at {address.host}:{address.port}: {error}")
        client.loop_start()
        deadline = time.monotonic() + self.timeout
        try:
            reason = self._next(events, "connect", deadline)
            if reason.is_failure:
                raise Unavailable(f"the device-accounts broker refused the admin login: {reason}")
            client.subscribe(RESPONSE_TOPIC, qos=1)
            granted = self._next(events, "subscribe", deadline)
            if any(r.is_failure for r in granted):
                raise Unavailable("the admin account may not read the dynamic-security responses")
            client.publish(CONTROL_TOPIC, payload, qos=1)
            while True:
                try:
                    body = json.loads(self._next(events, "message", deadline))
                    responses = list(body["responses"])
                except (ValueError, KeyError, TypeError):
                    continue  # not a dynsec response: not ours
                if any(str(r.get("correlationData", "")).startswith(tag) for r in responses):
                    return responses
        finally:
            client.disconnect()
            client.loop_stop()

    def _next(self, events: queue.Queue[tuple[str, Any]], kind: str, deadline: float) -> Any:
        """The next event of ``kind``; a disconnect, or the deadline passing, raises."""
        while True:
            try:
                got, value = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise Unavailable(f"the device-accounts broker did not answer within {self.timeout:g} s") from None
            if got == kind:
                return value
            if got == "disconnect":
                raise Unavailable(f"the device-accounts broker closed the connection: {value}")


def configured(settings: Settings, *, mqtt_url: str | None) -> DeviceAccounts | None:
    """The cameras' logins as configured, or None where no broker holds them (the demo's
    embedded broker, a broker without accounts). ValueError when the process's broker
    (``mqtt_url``) has accounts, which a URL with a username shows, but ``device_accounts_url``
    is unset: a camera retired there would keep its login."""
    if settings.device_accounts_url:
        return DeviceAccounts(settings.device_accounts_url, ca_file=settings.device_accounts_ca_file)
    if mqtt_url and BrokerAddress.parse(mqtt_url).username:
        raise ValueError("WATCHFLOOR_DEVICE_ACCOUNTS_URL is not set, and the broker has accounts: set it to the "
                         "cameras' listener with the device-admin account (mqtts://watchfloor-device-admin:PASSWORD"
                         "@HOST:8883, deploy/mosquitto/README.md \"Accounts\"), so that retiring a camera ends "
                         "its login")
    return None
