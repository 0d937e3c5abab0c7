"""Who is asking, and what their role and area allow: roles, principals, local users, tokens.

Local users (embedded default) have argon2-hashed passwords; the API issues them signed
bearer tokens (JWT, HS256) that carry the role and the areas. The HTTP side (reading the
bearer header, the per-route role check) is :mod:`api.auth`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import jwt
import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError

from services.errors import NotAuthenticated
from services.oidc import OidcSignIn, OidcVerifier

__all__ = [
    "ALL_AREAS",
    "HEALTH_ALERT_KINDS",
    "Principal",
    "Role",
    "TokenIssuer",
    "User",
    "PasswordRecord",
    "add_user",
    "authenticate",
    "check_password",
    "disable_user",
    "list_users",
    "password_record",
    "remove_user",
]

ALL_AREAS = "*"
MIN_SECRET_BYTES = 32
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


@dataclass(frozen=True)
class Principal:
    username: str
    role: Role
    areas: frozenset[str] | None  # None: every borough

    @property
    def sees_positions(self) -> bool:
        return self.role in SEES_POSITIONS

    def covers(self, borough: str | None) -> bool:
        return self.areas is None or (borough is not None and borough in self.areas)

    def alert_kinds(self) -> frozenset[str] | None:
        """Alert kinds this role may see (None: all)."""
        return HEALTH_ALERT_KINDS if self.role is Role.FLEET_MANAGER else None


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
        now = int(time.time())
        claims = {"iss": _ISSUER, "sub": who.username, "role": who.role.value, "iat": now, "exp": now + self._ttl_s,
                  "areas": [ALL_AREAS] if who.areas is None else sorted(who.areas)}
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
            username, role, areas = self._oidc.identity(claims)
            return Principal(username, Role(role), _areas(areas)), OidcSignIn.of(token, claims, username=username,
                                                                                 role=role)
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], issuer=_ISSUER,
                                options={"require": ["exp", "sub", "role"]})
            return Principal(str(claims["sub"]), Role(claims["role"]), _areas(claims.get("areas", []))), None
        except (jwt.PyJWTError, ValueError, KeyError) as error:
            raise NotAuthenticated(f"invalid token: {error}") from None


def add_user(conn: psycopg.Connection, *, username: str, password: str, role: Role, areas: Iterable[str],
             display_name: str | None = None) -> None:
    """Create or replace a local user (the caller commits)."""
    if len(password) < 12:
        raise ValueError("passwords must be at least 12 characters")
    conn.execute(
        "INSERT INTO users (username, password_hash, role, areas, display_name) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash, role = EXCLUDED.role,"
        " areas = EXCLUDED.areas, display_name = EXCLUDED.display_name, disabled_at = NULL",
        (username, _hasher.hash(password), role.value, sorted(set(areas)), display_name))


@dataclass(frozen=True)
class PasswordRecord:
    """What checking a password needs from the database: read first, then checked without a
    connection held (argon2 takes tens of milliseconds of a core)."""

    password_hash: str
    role: str
    areas: tuple[str, ...]


def password_record(conn: psycopg.Connection, username: str) -> PasswordRecord | None:
    """The enabled user's hash, role and areas; None for no such (enabled) user."""
    row = conn.execute("SELECT password_hash, role, areas FROM users WHERE username = %s AND disabled_at IS NULL",
                       (username,)).fetchone()
    return None if row is None else PasswordRecord(row[0], row[1], tuple(row[2]))


def check_password(record: PasswordRecord | None, username: str, password: str) -> Principal | None:
    """The principal if ``password`` is right; no database needed."""
    try:
        _hasher.verify(record.password_hash if record else _DUMMY_HASH, password)
    except (VerifyMismatchError, InvalidHashError):
        return None
    if record is None:
        return None
    return Principal(username, Role(record.role), _areas(record.areas))


def authenticate(conn: psycopg.Connection, username: str, password: str) -> Principal | None:
    return check_password(password_record(conn, username), username, password)


@dataclass(frozen=True)
class User:
    username: str
    role: Role
    areas: tuple[str, ...]
    display_name: str | None
    disabled: bool


def list_users(conn: psycopg.Connection) -> list[User]:
    """Every local user, disabled ones too, by name."""
    rows = conn.execute("SELECT username, role, areas, display_name, disabled_at IS NOT NULL FROM users"
                        " ORDER BY username").fetchall()
    return [User(r[0], Role(r[1]), tuple(r[2]), r[3], bool(r[4])) for r in rows]


def disable_user(conn: psycopg.Connection, *, username: str) -> bool:
    """Refuse the user's sign-ins from now on (the caller commits). True if they were enabled."""
    cursor = conn.execute("UPDATE users SET disabled_at = now() WHERE username = %s AND disabled_at IS NULL",
                          (username,))
    return cursor.rowcount > 0


def remove_user(conn: psycopg.Connection, *, username: str) -> bool:
    """Delete a local user (the caller commits); the audit log keeps their name. True if they existed."""
    return conn.execute("DELETE FROM users WHERE username = %s", (username,)).rowcount > 0
