"""``watchfloor devices provision|retire|assign|unassign``, ``watchfloor broker add-user|init-device-accounts`` and
``watchfloor audit verify``: the security administration commands, each audited where it changes something."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import psycopg

from core.areas import unknown_areas
from core.contract import ACCOUNTS_TOPIC, REGISTRY_TOPIC
from core.mqtt import publish_all
from core.settings import Settings
from services import device_accounts
from services.accounts import account_announcement
from services.errors import ServiceError, Unavailable
from services.registry import (
    DeviceRecord,
    change_announcement,
    lock_device,
    provision_device,
    reactivate_device,
    retire_device,
)
from telemetry.schema import migrate, pending
from watchfloor import broker_credentials
from watchfloor.parsers import command, group

if TYPE_CHECKING:
    from services.audit import Checkpoint

__all__ = ["add_parsers", "announce_account", "audit_key", "cli_actor", "database_url", "prepare_database"]


def cli_actor() -> str:
    """Who is at the command line, for the audit log: the OS user, marked as the CLI."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (a container's numeric uid)
        return "cli"


def database_url(settings: Settings) -> str:
    """The force's database; every command but ``demo`` refuses to start without one, so that a
    production process never writes to an embedded server in a local directory by mistake."""
    if not settings.database_url:
        sys.exit("WATCHFLOOR_DATABASE_URL is not set: this command needs the force's PostgreSQL "
                 "(`watchfloor demo` runs on an embedded database and broker)")
    return settings.database_url


def audit_key(settings: Settings, *, required: bool = False) -> bytes | None:
    """The audit chain's key, or exit with what to set."""
    try:
        return settings.audit_secret(required=required)
    except (ValueError, OSError) as error:
        sys.exit(str(error))


def prepare_database(settings: Settings, url: str) -> list[str]:
    """Apply pending migrations, if any: in the demo (one role) this is all it takes; a runtime
    role owns nothing and cannot migrate, so it is told to run ``watchfloor db migrate`` first."""
    with psycopg.connect(url) as conn:
        if not pending(conn):
            return []
        try:
            return migrate(conn, retention=timedelta(days=settings.retention_days),
                           compress_after=timedelta(days=settings.compress_after_days),
                           timescaledb=settings.timescaledb)
        except psycopg.errors.InsufficientPrivilege:
            sys.exit("the schema needs migrating and this role may not (it is the runtime role): run "
                     "`watchfloor db migrate` with WATCHFLOOR_MIGRATE_DATABASE_URL (the owner) first")


def _database(settings: Settings) -> str:
    url = database_url(settings)
    prepare_database(settings, url)
    return url


def _announce(settings: Settings, device_id: str, change: str) -> None:
    """Tell the API processes to re-read the registry now (their live feeds show the change)."""
    _publish_change(settings, REGISTRY_TOPIC, change_announcement(device_id, change),
                    otherwise="live feeds show the change at the API's next registry refresh, within 30 s")


def announce_account(settings: Settings, username: str, change: str) -> None:
    """Tell the API processes that a user changed, so that they refuse that user's earlier tokens now."""
    _publish_change(settings, ACCOUNTS_TOPIC, account_announcement(username, change),
                    otherwise="the API processes refuse the user's earlier tokens at their next refresh, within 30 s")


def _publish_change(settings: Settings, topic: str, payload: bytes, *, otherwise: str) -> None:
    """Publish a change through the configured broker; without one (or if it refuses), say
    when the API processes see it anyway (``otherwise``)."""
    sent = settings.mqtt_url is not None and publish_all(
        settings.mqtt_url, [(topic, payload)], client_id=f"watchfloor-cli-{secrets.token_hex(4)}")
    if not sent:
        print(f"not announced on a broker (WATCHFLOOR_MQTT_URL unset or unreachable): {otherwise}", file=sys.stderr)


def _device_accounts(settings: Settings) -> device_accounts.DeviceAccounts | None:
    """The cameras' broker logins (WATCHFLOOR_DEVICE_ACCOUNTS_URL), or exit saying why it is needed."""
    try:
        return device_accounts.configured(settings, mqtt_url=settings.mqtt_url)
    except ValueError as error:
        sys.exit(str(error))


def cmd_devices_provision(settings: Settings, args: argparse.Namespace) -> None:
    from services import audit

    unknown = unknown_areas([args.borough], settings.force_areas())
    if unknown:
        sys.exit(f"cannot provision {args.device_id}: unknown area {unknown[0]!r}: not one of the force's areas")
    record = DeviceRecord(args.device_id, args.callsign, args.officer, args.borough, args.role)
    accounts = _device_accounts(settings)
    with audit.connect(_database(settings), key=audit_key(settings)) as conn:
        entry = lock_device(conn, device_id=args.device_id)
        if entry is not None and entry.retired and not args.reactivate:
            # A retired camera comes back only when someone says so (and the log shows who).
            sys.exit(f"cannot provision {args.device_id}: it is retired; pass --reactivate to bring it back")
        try:
            secret = provision_device(conn, record=record)
        except (ValueError, psycopg.errors.CheckViolation) as error:
            sys.exit(f"cannot provision {args.device_id}: {error}")
        if entry is not None and entry.retired:
            reactivate_device(conn, device_id=args.device_id)
            audit.record(conn, actor=cli_actor(), action="device_reactivated", device_id=args.device_id,
                         details={"borough": entry.borough})
        audit.record(conn, actor=cli_actor(), action="device_provisioned", device_id=args.device_id,
                     details={"callsign": args.callsign, "borough": args.borough, "role": args.role,
                              "broker_login": accounts is not None})
        if accounts is not None:
            # Before the commit: if the broker does not take it, neither the secret nor the record is kept.
            try:
                accounts.provision(args.device_id, secret)
            except Unavailable as error:
                sys.exit(f"cannot provision {args.device_id}: {error}")
        conn.commit()
    _announce(settings, args.device_id, "registered")
    print(f"device {args.device_id} provisioned. Its secret (MQTT password and WHIP token) is shown once:")
    print(secret)
    if accounts is None:
        print("no broker login made (WATCHFLOOR_DEVICE_ACCOUNTS_URL unset)", file=sys.stderr)


def cmd_devices_retire(settings: Settings, args: argparse.Namespace) -> None:
    from services import audit

    accounts = _device_accounts(settings)
    with audit.connect(_database(settings), key=audit_key(settings)) as conn:
        if lock_device(conn, device_id=args.device_id) is None:
            sys.exit(f"no device {args.device_id}")
        # Disabled before the commit: if the broker does not, the device is not retired either.
        try:
            disabled = accounts.disable(args.device_id) if accounts is not None else None
        except Unavailable as error:
            sys.exit(f"cannot retire {args.device_id}: {error}")
        retire_device(conn, device_id=args.device_id, actor=cli_actor(),
                      details={"broker_login_disabled": disabled})
        conn.commit()
    _announce(settings, args.device_id, "retired")
    print(f"device {args.device_id} retired; its secret no longer works; broker login: "
          + {True: "disabled (disconnected now)", False: "none on the broker",
             None: "not touched (WATCHFLOOR_DEVICE_ACCOUNTS_URL unset)"}[disabled])


def _given_password(args: argparse.Namespace) -> str | None:
    """The first line of standard input with ``--password-stdin``: a password on the command line
    would sit in the shell's history and in ``ps`` for every local user to read."""
    if not args.password_stdin:
        return None
    password = sys.stdin.readline().rstrip("\n")
    if not password:
        sys.exit("--password-stdin: standard input's first line is empty")
    return password
def _at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        sys.exit(f"--at {text!r} is not an RFC 3339 time")


def cmd_devices_assign(settings: Settings, args: argparse.Namespace) -> None:
    """Give a camera to an officer by hand (audited as ``device_assigned``), as the API does."""
    from services import assignments, audit

    with audit.connect(_database(settings), key=audit_key(settings)) as conn:
        entry = lock_device(conn, device_id=args.device_id)
        if entry is None or entry.retired:
            sys.exit(f"no device {args.device_id}" + (" (it is retired)" if entry is not None else ""))
        try:
            start = assignments.assign(conn, device_id=args.device_id, officer=args.officer, callsign=args.callsign,
                                       at=_at(args.at), actor=cli_actor())
        except (ServiceError, psycopg.errors.CheckViolation) as error:
            sys.exit(str(error))
        conn.commit()
    _announce(settings, args.device_id, "updated")
    print(f"device {args.device_id} carried by {args.officer} from {start.isoformat()}")


def cmd_devices_unassign(settings: Settings, args: argparse.Namespace) -> None:
    """End a camera's custody by hand (audited as ``device_unassigned``), as the API does."""
    from services import assignments, audit

    with audit.connect(_database(settings), key=audit_key(settings)) as conn:
        if lock_device(conn, device_id=args.device_id) is None:
            sys.exit(f"no device {args.device_id}")
        try:
            end = assignments.end_assignment(conn, device_id=args.device_id, at=_at(args.at), actor=cli_actor())
        except ServiceError as error:
            sys.exit(str(error))
        conn.commit()
    print(f"device {args.device_id} carried by nobody from {end.isoformat()}")


def cmd_broker_add_user(settings: Settings, args: argparse.Namespace) -> None:
    password = _given_password(args) or secrets.token_urlsafe(32)
    try:
        broker_credentials.set_password(args.mosquitto_passwd, username=args.username, password=password)
    except ValueError as error:
        sys.exit(str(error))
    print(f"broker user {args.username} written to {args.mosquitto_passwd} (reload the broker to apply it)",
          file=sys.stderr)
    if not args.password_stdin:
        print(password)


def cmd_broker_init_device_accounts(settings: Settings, args: argparse.Namespace) -> None:
    """The dynamic-security plugin's first file: the device-admin account and the cameras of an
    existing password file. Never overwrites: once running, the broker owns the file."""
    try:
        cameras = device_accounts.parse_password_file(args.from_passwd.read_text()) if args.from_passwd else {}
    except (OSError, ValueError) as error:
        sys.exit(f"cannot migrate {args.from_passwd}: {error}")
    password = _given_password(args) or secrets.token_urlsafe(32)
    config = device_accounts.initial_config(admin_password=password, cameras=cameras)
    try:
        # Owner-only: it holds password hashes (give it to the broker's user, which rewrites it).
        fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        sys.exit(f"cannot create {args.file}: {error}")
    with os.fdopen(fd, "w") as out:
        json.dump(config, out, indent=1)
    print(f"{args.file} written: account {device_accounts.ADMIN_USERNAME}, {len(cameras)} camera(s) migrated; "
          "the broker's user must own it", file=sys.stderr)
    if not args.password_stdin:
        print(password)


def _checkpoints(args: argparse.Namespace, key: bytes | None) -> list[Checkpoint]:
    """Those given on the command line and those in the files named, each MAC checked."""
    from services import audit

    lines = list(args.checkpoint)
    try:
        for path in args.checkpoint_file:
            lines += [line for line in Path(path).read_text().splitlines() if line.strip()]
        return [audit.parse_checkpoint(text, key=key) for text in lines]
    except (ValueError, OSError) as error:
        sys.exit(str(error))


def cmd_audit_verify(settings: Settings, args: argparse.Namespace) -> None:
    from services import audit

    key = audit_key(settings)
    saved = _checkpoints(args, key)
    with psycopg.connect(database_url(settings)) as conn:
        report = audit.verify(conn, key=key, checkpoints=saved)
    for problem in report.problems:
        where = f"entry {problem.seq}" + (f" (id {problem.id})" if problem.id is not None else "")
        print(f"TAMPERED {problem.kind:<9} {where}: {problem.message}")
    if report.truncated:
        print("(more problems than shown)")
    print(f"{report.entries} entries; head: seq {report.head_seq} hash {report.head_hash}; "
          f"checked against {report.checkpoints} saved checkpoint(s)")
    if report.unchecked:
        print(f"{report.unchecked} keyed entries not checked: set WATCHFLOOR_AUDIT_KEY to check them")
    if not report.ok:
        sys.exit(1)
    print("audit log intact" + (" as far as it could be checked without the key" if report.unchecked else ""))


def cmd_audit_checkpoint(settings: Settings, args: argparse.Namespace) -> None:
    from services import audit

    key = audit_key(settings, required=True)
    assert key is not None
    with psycopg.connect(database_url(settings)) as conn:
        point = audit.checkpoint(conn, key=key)
        if args.store:
            audit.store_checkpoint(conn, point)
            conn.commit()
    print(point.line())


def cmd_devices_list(settings: Settings, args: argparse.Namespace) -> None:
    from telemetry.queries import DeviceFilter, list_devices

    where = DeviceFilter(borough=args.borough, include_retired=args.retired)
    with psycopg.connect(database_url(settings)) as conn:
        rows, total = list_devices(conn, boroughs=None, where=where, limit=args.limit, offset=0)
    print(f"{'DEVICE':<16} {'CALLSIGN':<10} {'BOROUGH':<24} {'ROLE':<10} {'STATE':<10} OFFICER")
    for r in rows:
        state = "retired" if r.get("retired_at") else (r.get("state") or "")
        print(f"{r['device_id']:<16} {r.get('callsign') or '':<10} {r.get('borough') or '':<24} {r['role']:<10} "
              f"{state:<10} {r.get('officer') or ''}")
    print(f"{len(rows)} of {total} devices")


def add_parsers(sub: Any) -> None:
    """Add the subcommands to ``watchfloor``'s subparsers."""
    db_env = ("WATCHFLOOR_DATABASE_URL",)
    announce_env = (*db_env, "WATCHFLOOR_MQTT_URL (optional: announces the change to the API processes)",
                    "WATCHFLOOR_DEVICE_ACCOUNTS_URL and WATCHFLOOR_DEVICE_ACCOUNTS_CA_FILE (the cameras' broker "
                    "logins; required when WATCHFLOOR_MQTT_URL has a username)")
    devices = group(sub, "devices", help="device registry and credentials")
    listing = command(devices, "list", help="registered devices with their latest state", env=db_env,
                      run=cmd_devices_list)
    listing.add_argument("--borough", default=None, help="only this borough's devices")
    listing.add_argument("--retired", action="store_true", help="include retired devices")
    listing.add_argument("--limit", type=int, default=1000, help="at most this many")
    provision = command(devices, "provision", help="register a device, make its secret and its broker login",
                        env=announce_env, run=cmd_devices_provision)
    provision.add_argument("device_id")
    provision.add_argument("--callsign")
    provision.add_argument("--officer")
    provision.add_argument("--borough")
    from api.models import RoleName
    provision.add_argument("--role", default="response", choices=get_args(RoleName))
    provision.add_argument("--reactivate", action="store_true",
                           help="bring a retired device back (refused without it; recorded in the audit log)")
    retire = command(devices, "retire",
                     help="retire a device: revoke its secret, disable its broker login (disconnected now)",
                     env=announce_env, run=cmd_devices_retire)
    retire.add_argument("device_id")
    assign = command(devices, "assign", help="give a camera to an officer from a time (default now), ending its "
                     "current custody (audited)", env=announce_env[:2], run=cmd_devices_assign)
    assign.add_argument("device_id")
    assign.add_argument("--officer", required=True)
    assign.add_argument("--callsign")
    assign.add_argument("--at", default=None, metavar="RFC3339", help="from when, with an offset (default: now)")
    unassign = command(devices, "unassign", help="end a camera's custody at a time (default now): nobody carries "
                       "it from then (audited)", env=db_env, run=cmd_devices_unassign)
    unassign.add_argument("device_id")
    unassign.add_argument("--at", default=None, metavar="RFC3339", help="when, with an offset (default: now)")

    broker = group(sub, "broker", help="broker accounts")
    add_user = command(broker, "add-user", help="add a service account (e.g. watchfloor-ingest) to the broker",
                       run=cmd_broker_add_user)
    add_user.add_argument("username")
    add_user.add_argument("--mosquitto-passwd", type=Path, required=True, metavar="FILE")
    add_user.add_argument("--password-stdin", action="store_true", help="read the password from standard input's "
                          "first line (default: a random one, printed once)")
    init = command(broker, "init-device-accounts", help="write the cameras' dynamic-security file: the device-admin "
                   "account, and the cameras of an existing password file", run=cmd_broker_init_device_accounts)
    init.add_argument("file", type=Path, help="the plugin's file, e.g. /mosquitto/data/device-accounts.json "
                      "(refused if it exists)")
    init.add_argument("--from-passwd", type=Path, default=None, metavar="FILE",
                      help="an existing devices' password file whose cameras keep their secrets")
    init.add_argument("--password-stdin", action="store_true", help="read the device-admin account's password from "
                      "standard input's first line (default: a random one, printed once)")

    audit = group(sub, "audit", help="the audit log")
    verify = command(audit, "verify", help="check the hash chain; exit status 1 if anything was tampered with",
                     env=(*db_env, "WATCHFLOOR_AUDIT_KEY (checks keyed entries)"), run=cmd_audit_verify)
    verify.add_argument("--checkpoint", "--expect-head", action="append", default=[], metavar="SEQ:HASH[:TIME:MAC]",
                        help="a checkpoint saved earlier (`audit checkpoint`, or a head printed by verify): the "
                             "entry at SEQ must still have HASH, whatever the head is now (repeatable)")
    verify.add_argument("--checkpoint-file", action="append", default=[], metavar="FILE",
                        help="a file of saved checkpoints, one a line (e.g. appended to by a schedule)")
    checkpoint = command(audit, "checkpoint", help="print the head as a keyed checkpoint, to keep outside the "
                         "database (append it to a file elsewhere, on a schedule)",
                         env=(*db_env, "WATCHFLOOR_AUDIT_KEY or WATCHFLOOR_AUDIT_KEY_FILE"), run=cmd_audit_checkpoint)
    checkpoint.add_argument("--store", action="store_true",
                            help="also store it in the database, where the API's verify checks against the latest")
