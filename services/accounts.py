"""Who is asking, and what their role and area allow: roles, principals, local users, tokens.

Local users (embedded default) have argon2-hashed passwords; the API issues them signed
bearer tokens (JWT, HS256) that carry the role, the areas and the user's token version
(``ver``). Bumping the version (sign-out, disabling, a new role or areas) ends every token
issued before; :mod:`services.sessions` holds the versions in memory for the per-request
check. The HTTP side (reading the bearer header, the per-route role check) is :mod:`api.auth`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import jwt
import orjson
import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError

from core.settings import MIN_SECRET_BYTES
from services.errors import NotAuthenticated
from services.oidc import OidcSignIn, OidcVerifier
from telemetry.system_alerts import SYSTEM_ALERT_KINDS

__all__ = [
    "ALL_AREAS",
    "HEALTH_ALERT_KINDS",
    "Principal",
    "Role",
    "TokenIssuer",
    "User",
    "PasswordRecord",
    "SEES_SYSTEM_ALERTS",
    "account_announcement",
    "add_user",
    "authenticate",
    "check_password",
    "disable_user",
    "get_user",
    "list_users",
    "password_record",
    "remove_user",
    "revoke_tokens",
    "token_version",
    "token_versions",
]

ALL_AREAS = "*"
_ISSUER = "watchfloor"
_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("not a real password")


class Role(StrEnum):
    OPERATOR = "operator"
    FIREARMS_COMMANDER = "firearms_commander"
    FLEET_MANAGER = "fleet_manager"
    AUDITOR = "auditor"
    ADMIN = "admin"


#: Roles that may see where officers are (positions, tracks, officer names).
SEES_POSITIONS = frozenset({Role.OPERATOR, Role.FIREARMS_COMMANDER, Role.ADMIN})
#: Roles that see devices at all (a fleet manager sees their health, not their positions).
SEES_DEVICES = SEES_POSITIONS | {Role.FLEET_MANAGER}
#: Roles on the live feed.
ON_LIVE_FEED = frozenset({Role.OPERATOR, Role.FIREARMS_COMMANDER, Role.FLEET_MANAGER})
#: Roles that handle alerts (acknowledge, resolve).
HANDLES_ALERTS = frozenset({Role.OPERATOR, Role.FIREARMS_COMMANDER})
#: The alerts a fleet manager sees: device health, nothing operational.
HEALTH_ALERT_KINDS = frozenset({"battery_low", "battery_critical", "storage_full", "offline"})
#: Roles that see system alerts (about Watchfloor itself, no unit: telemetry/system_alerts.py),
#: whatever their areas: the storage they are about is the whole force's.
SEES_SYSTEM_ALERTS = frozenset({Role.FLEET_MANAGER, Role.ADMIN})


@dataclass(frozen=True)
class Principal:
    username: str
    role: Role
    areas: frozenset[str] | None  # None: every borough
    display_name: str | None = field(default=None, compare=False)
    # What the token says of its session: the version it was issued at (None for an OIDC
    # provider's token, which Watchfloor cannot revoke) and when it expires (Unix seconds).
    token_version: int | None = field(default=None, compare=False)
    expires_at: int | None = field(default=None, compare=False)

    @property
    def sees_positions(self) -> bool:
        return self.role in SEES_POSITIONS

    def covers(self, borough: str | None) -> bool:
        return self.areas is None or (borough is not None and borough in self.areas)

    def alert_kinds(self) -> frozenset[str] | None:
        """Kinds of a unit's alerts this role may see (None: all). An admin sees none of a
        unit's, only system alerts."""
        if self.role is Role.FLEET_MANAGER:
            return HEALTH_ALERT_KINDS
        return frozenset() if self.role is Role.ADMIN else None

    @property
    def sees_system_alerts(self) -> bool:
        return self.role in SEES_SYSTEM_ALERTS

    def sees_kind(self, kind: str) -> bool:
        """Whether this role sees any alert of ``kind`` (a unit's or a system one)."""
        if kind in SYSTEM_ALERT_KINDS:
            return self.sees_system_alerts
        kinds = self.alert_kinds()
        return kinds is None or kind in kinds

    def sees_alert(self, alert: Mapping[str, Any]) -> bool:
        """Whether this caller may see ``alert`` (a row or a feed message: ``device_id``,
        ``borough``, ``kind``): a system alert (no device) by role alone, a unit's by area and
        kind. The SQL of :mod:`telemetry.queries` makes the same decision."""
        if alert.get("device_id") is None:
            return self.sees_system_alerts
        kinds = self.alert_kinds()
        return self.covers(alert.get("borough")) and (kinds is None or alert.get("kind") in kinds)


def _areas(raw: Iterable[str]) -> frozenset[str] | None:
    areas = frozenset(raw)
    return None if ALL_AREAS in areas else areas


class TokenIssuer:
    """Issues local tokens (HS256) and verifies them, and an OIDC provider's when configured."""

    def __init__(self, secret: str, ttl_s: int, *, oidc: OidcVerifier | None = None) -> None:
        if len(secret.encode()) < MIN_SECRET_BYTES:  # whichever entry point built the app
            raise ValueError(f"the token-signing secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self._ttl_s = ttl_s
        self._oidc = oidc

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    def issue(self, who: Principal) -> str:
        """A token for a local user, at their current token version (from :func:`authenticate`)."""
        if who.token_version is None:
            raise ValueError("a local token needs the user's token version")
        now = int(time.time())
        claims = {"iss": _ISSUER, "sub": who.username, "role": who.role.value, "iat": now, "exp": now + self._ttl_s,
                  "areas": [ALL_AREAS] if who.areas is None else sorted(who.areas), "ver": who.token_version}
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> Principal:
        """The caller a token names; :class:`NotAuthenticated` unless it is valid."""
        return self.identify(token)[0]

    def identify(self, token: str) -> tuple[Principal, OidcSignIn | None]:
        """The caller a token names and, for a provider's token, its sign-in to record
        (:func:`services.oidc.record_sign_in`); :class:`NotAuthenticated` unless it is valid.

        The header's algorithm picks the verifier: HS256 is ours (signed with the secret),
        an asymmetric one is the OIDC provider's. Each verifier accepts only its own
        algorithms, so a token cannot pass one verifier by claiming the other's.
        """
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError as error:
            raise NotAuthenticated(f"invalid token: {error}") from None
        if algorithm != "HS256":
            if self._oidc is None or algorithm not in self._oidc.algorithms:
                raise NotAuthenticated(f"invalid token: algorithm {algorithm!r} is not accepted")
            claims = self._oidc.claims(token)
            identity = self._oidc.identity(claims)
            who = Principal(identity.username, Role(identity.role), _areas(identity.areas),
                            display_name=identity.display_name, expires_at=identity.expires_at)
            return who, OidcSignIn.of(token, claims, username=identity.username, role=identity.role)
        try:
            # ``ver`` is required: a token from before versions existed cannot be revoked.
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], issuer=_ISSUER,
                                options={"require": ["exp", "sub", "role", "ver"]})
            version = claims["ver"]
            if not isinstance(version, int):
                raise ValueError("ver must be an integer")
            return Principal(str(claims["sub"]), Role(claims["role"]), _areas(claims.get("areas", [])),
                             token_version=version, expires_at=int(claims["exp"])), None
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as error:
            raise NotAuthenticated(f"invalid token: {error}") from None


def add_user(conn: psycopg.Connection, *, username: str, password: str, role: Role, areas: Iterable[str],
             display_name: str | None = None) -> None:
    """Create or replace a local user (the caller commits). Replacing one ends their tokens:
    those carry the old role and areas."""
    if len(password) < 12:
        raise ValueError("passwords must be at least 12 characters")
    conn.execute(
        "INSERT INTO users (username, password_hash, role, areas, display_name) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash, role = EXCLUDED.role,"
        " areas = EXCLUDED.areas, display_name = EXCLUDED.display_name, disabled_at = NULL,"
        " token_version = users.token_version + 1",
        (username, _hasher.hash(password), role.value, sorted(set(areas)), display_name))


@dataclass(frozen=True)
class PasswordRecord:
    """What checking a password needs from the database: read first, then checked without a
    connection held (argon2 takes tens of milliseconds of a core)."""

    password_hash: str
    role: str
    areas: tuple[str, ...]
    display_name: str | None
    token_version: int


def password_record(conn: psycopg.Connection, username: str) -> PasswordRecord | None:
    """The enabled user's hash, role and areas; None for no such (enabled) user."""
    row = conn.execute("SELECT password_hash, role, areas, display_name, token_version FROM users"
                       " WHERE username = %s AND disabled_at IS NULL", (username,)).fetchone()
    return None if row is None else PasswordRecord(row[0], row[1], tuple(row[2]), row[3], row[4])


def check_password(record: PasswordRecord | None, username: str, password: str) -> Principal | None:
    """The principal if ``password`` is right; no database needed."""
    try:
        _hasher.verify(record.password_hash if record else _DUMMY_HASH, password)
    except (VerifyMismatchError, InvalidHashError):
        return None
    if record is None:
        return None
    return Principal(username, Role(record.role), _areas(record.areas), display_name=record.display_name,
                     token_version=record.token_version)


def authenticate(conn: psycopg.Connection, username: str, password: str) -> Principal | None:
    return check_password(password_record(conn, username), username, password)


@dataclass(frozen=True)
class User:
    username: str
    role: Role
    areas: tuple[str, ...]
    display_name: str | None
    disabled: bool

    def within(self, areas: frozenset[str] | None) -> bool:
        """Whether every borough of this user is among ``areas`` (None: every borough)."""
        if areas is None:
            return True
        return ALL_AREAS not in self.areas and set(self.areas) <= areas


_USER_COLUMNS = "username, role, areas, display_name, disabled_at IS NOT NULL"


def _user(row: Sequence[Any]) -> User:
    return User(str(row[0]), Role(row[1]), tuple(row[2]), row[3], bool(row[4]))


def list_users(conn: psycopg.Connection) -> list[User]:
    """Every local user, disabled ones too, by name."""
    rows = conn.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY username").fetchall()
    return [_user(r) for r in rows]


def get_user(conn: psycopg.Connection, *, username: str, lock: bool = False) -> User | None:
    """One local user; ``lock`` holds their row until the caller's transaction ends."""
    row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE username = %s" + (" FOR UPDATE" if lock else ""),
                       (username,)).fetchone()
    return None if row is None else _user(row)


def disable_user(conn: psycopg.Connection, *, username: str) -> bool:
    """Refuse the user's sign-ins from now on, and end their tokens (the caller commits).
    True if they were enabled."""
    cursor = conn.execute("UPDATE users SET disabled_at = now(), token_version = token_version + 1"
                          " WHERE username = %s AND disabled_at IS NULL", (username,))
    return cursor.rowcount > 0


def revoke_tokens(conn: psycopg.Connection, *, username: str) -> bool:
    """End every token the user holds (sign-out; the caller commits). True if they exist."""
    cursor = conn.execute("UPDATE users SET token_version = token_version + 1 WHERE username = %s", (username,))
    return cursor.rowcount > 0


def token_versions(conn: psycopg.Connection) -> dict[str, tuple[int, bool]]:
    """Every local user's token version and whether they are enabled. Every change to a user
    (sign-out, disabling, a new role or areas, enabling again) bumps the version, so of two
    readings of a user the one with the higher version is the newer."""
    rows = conn.execute("SELECT username, token_version, disabled_at IS NULL FROM users")
    return {str(r[0]): (int(r[1]), bool(r[2])) for r in rows.fetchall()}


def token_version(conn: psycopg.Connection, *, username: str) -> tuple[int, bool] | None:
    """One user's token version and whether they are enabled; None if they do not exist."""
    row = conn.execute("SELECT token_version, disabled_at IS NULL FROM users WHERE username = %s",
                       (username,)).fetchone()
    return None if row is None else (int(row[0]), bool(row[1]))


def account_announcement(username: str, change: str) -> bytes:
    """The payload announcing an account change on ``ACCOUNTS_TOPIC`` (after its commit), on
    which every API process re-reads the token versions."""
    return orjson.dumps({"username": username, "change": change})


def remove_user(conn: psycopg.Connection, *, username: str) -> bool:
    """Delete a local user (the caller commits); the audit log keeps their name. True if they existed."""
    return conn.execute("DELETE FROM users WHERE username = %s", (username,)).rowcount > 0
