"""``watchfloor users``: local users (add, list, disable, remove), each change audited and
announced so that every API process ends the user's tokens at once."""

from __future__ import annotations

import argparse
import getpass
import sys

import psycopg

from core.areas import unknown_areas
from core.settings import Settings
from services.accounts import ALL_AREAS
from watchfloor.admin_commands import announce_account, audit_key, cli_actor, database_url
from watchfloor.parsers import command, group
from watchfloor.running import migrate_first

__all__ = ["add_parsers"]


def _new_password(username: str) -> str:
    """Prompted for twice on a terminal, so it never sits in the shell's history or in ``ps``;
    read from standard input's first line when that is not a terminal (a provisioning script)."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass(f"password for {username}: ")
    if getpass.getpass("again: ") != password:
        sys.exit("the passwords differ")
    return password


def cmd_users_add(settings: Settings, args: argparse.Namespace) -> None:
    from services import audit
    from services.accounts import Role, add_user

    url = database_url(settings)  # before the prompt: a user should not type a password for nothing
    areas = [a.strip() for a in args.areas.split(",")]
    unknown = unknown_areas([a for a in areas if a != ALL_AREAS], settings.force_areas())
    if unknown:
        sys.exit(f"unknown area {', '.join(map(repr, unknown))}: not one of the force's areas")
    password = _new_password(args.username)
    migrate_first(settings, url)
    with audit.connect(url, key=audit_key(settings)) as conn:
        try:
            add_user(conn, username=args.username, password=password, role=Role(args.role),
                     areas=areas, display_name=args.name)
        except ValueError as error:
            sys.exit(str(error))
        audit.record(conn, actor=cli_actor(), action="user_changed",
                     details={"username": args.username, "role": args.role, "areas": areas,
                              "change": "added or replaced"})
    # After the commit: a replaced user's tokens carry the old role and areas, and are over.
    announce_account(settings, args.username, "replaced")
    print(f"user {args.username}: {args.role} in {args.areas}")


def cmd_users_list(settings: Settings, args: argparse.Namespace) -> None:
    from services.accounts import list_users

    with psycopg.connect(database_url(settings)) as conn:
        users = list_users(conn)
    print(f"{'USER':<24} {'ROLE':<19} {'STATE':<9} {'AREAS':<30} NAME")
    for u in users:
        print(f"{u.username:<24} {u.role.value:<19} {'disabled' if u.disabled else 'enabled':<9} "
              f"{','.join(u.areas):<30} {u.display_name or ''}")
    print(f"{len(users)} users")


def _change_user(settings: Settings, username: str, change: str) -> None:
    from services import audit
    from services.accounts import disable_user, remove_user

    act = {"disabled": disable_user, "removed": remove_user}[change]
    with audit.connect(database_url(settings), key=audit_key(settings)) as conn:
        if not act(conn, username=username):
            sys.exit(f"no such user: {username}" + (" (or already disabled)" if change == "disabled" else ""))
        audit.record(conn, actor=cli_actor(), action="user_changed", details={"username": username, "change": change})
    announce_account(settings, username, change)  # after the commit: their tokens are over
    print(f"user {username}: {change}")


def cmd_users_disable(settings: Settings, args: argparse.Namespace) -> None:
    _change_user(settings, args.username, "disabled")


def cmd_users_remove(settings: Settings, args: argparse.Namespace) -> None:
    _change_user(settings, args.username, "removed")


def add_parsers(sub: "argparse._SubParsersAction[argparse.ArgumentParser]", *, db_env: tuple[str, ...]) -> None:
    users = group(sub, "users", help="local users (sign-in with a password; OIDC users are the provider's)")
    users_env = (db_env[0], "WATCHFLOOR_MQTT_URL (optional: ends the user's tokens on every API process at once)")
    add = command(users, "add", help="create or replace a local user (prompts for the password; audited)",
                  env=users_env, run=cmd_users_add)
    add.add_argument("username")
    add.add_argument("--role", required=True,
                     choices=["operator", "firearms_commander", "fleet_manager", "auditor", "admin"])
    add.add_argument("--areas", default="*", help="comma-separated boroughs, or * for all")
    add.add_argument("--name", default=None, help="display name")
    command(users, "list", help="every local user, with role, areas and state", env=db_env[:1], run=cmd_users_list)
    for name, what, run in (("disable", "refuse the user's sign-ins and end their tokens (audited)",
                             cmd_users_disable),
                            ("remove", "delete a local user; the audit log keeps the name (audited)",
                             cmd_users_remove)):
        command(users, name, help=what, env=users_env, run=run).add_argument("username")
