"""Bearer tokens from an external OpenID Connect provider (RS256 or ES256 JWTs).

Configured by ``WATCHFLOOR_OIDC_ISSUER``, ``…_AUDIENCE`` and ``…_JWKS_URL`` (or
``…_JWKS_FILE``). A token must be signed by a key of the provider's JWKS (chosen by ``kid``),
with one of the allowed algorithms, carry the configured issuer and audience, and not be
expired. The caller's role and areas come from claims (configurable, dotted paths such as
``realm_access.roles`` reach into nested claims). Exactly one Watchfloor role must be among
the role claim's values, after stripping ``WATCHFLOOR_OIDC_ROLE_PREFIX``.

Who the caller is comes from the issuer and ``sub`` only: their username is
``oidc:<issuer host>:<sub>``. A name claim (``preferred_username`` by default) is whatever
the user or the provider's admin set, so it is only the display name: an OIDC user named
"admin" or "system" never becomes the local user or system actor of that name (local
usernames cannot contain ``:``, and the system actors are ``system``, ``policy`` and
``device:…``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import psycopg

from core.settings import Settings
from services import audit
from services.errors import NotAuthenticated

__all__ = ["ASYMMETRIC_ALGORITHMS", "OIDC_PREFIX", "OidcIdentity", "OidcSignIn", "OidcVerifier", "oidc_from_settings",
           "record_sign_in"]

#: Never an HMAC algorithm here: the provider's keys are public.
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "EdDSA"})
_LEEWAY_S = 30
_JWKS_CACHE_S = 300
#: Every OIDC username starts with it; no local username can (they allow no ``:``).
OIDC_PREFIX = "oidc:"
_MAX_SUB = 255


@dataclass(frozen=True)
class OidcIdentity:
    username: str  # oidc:<issuer host>:<sub>
    display_name: str | None  # the name claim, for people to read; never an identity
    role: str
    areas: list[str]
    expires_at: int


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v for v in value.replace(",", " ").split() if v]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


class OidcVerifier:
    """Verifies an OIDC provider's tokens; returns their claims and the mapped identity."""

    def __init__(self, *, issuer: str, audience: str, jwks_url: str | None = None, jwks_file: Path | None = None,
                 algorithms: Iterable[str] = ("RS256", "ES256"), username_claim: str = "preferred_username",
                 roles_claim: str = "roles", areas_claim: str = "areas", role_prefix: str = "",
                 known_roles: Iterable[str] = ()) -> None:
        if (jwks_url is None) == (jwks_file is None):
            raise ValueError("OIDC needs exactly one of WATCHFLOOR_OIDC_JWKS_URL and WATCHFLOOR_OIDC_JWKS_FILE")
        self.algorithms = sorted(set(algorithms))
        if not self.algorithms or not set(self.algorithms) <= ASYMMETRIC_ALGORITHMS:
            raise ValueError(f"OIDC algorithms must be among {sorted(ASYMMETRIC_ALGORITHMS)}")
        self.issuer, self.audience = issuer, audience
        self.username_claim, self.roles_claim, self.areas_claim = username_claim, roles_claim, areas_claim
        self.role_prefix, self.known_roles = role_prefix, frozenset(known_roles)
        self._client = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=_JWKS_CACHE_S, timeout=5) \
            if jwks_url is not None else None
        self._keys = jwt.PyJWKSet.from_json(jwks_file.read_text()) if jwks_file is not None else None

    def _key(self, token: str) -> jwt.PyJWK:
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token)
        assert self._keys is not None
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self._keys.keys:
            if kid is None or key.key_id == kid:
                return key
        raise jwt.PyJWKError(f"no key {kid!r} in the JWKS file")

    def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``; :class:`NotAuthenticated` if it is not valid."""
        try:
            key = self._key(token)
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=self.algorithms, issuer=self.issuer, audience=self.audience,
                leeway=_LEEWAY_S, options={"require": ["exp", "iss", "aud", "sub"]})
        except (jwt.PyJWTError, ValueError, KeyError) as error:
            raise NotAuthenticated(f"invalid token: {error}") from None
        return claims

    def identity(self, claims: dict[str, Any]) -> OidcIdentity:
        """Who verified claims name, with their role and areas."""
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > _MAX_SUB or not sub.isprintable():
            raise NotAuthenticated("the token names no user (sub)")
        name = _claim(claims, self.username_claim)
        display_name = name if isinstance(name, str) and name else None
        roles = {v.removeprefix(self.role_prefix) for v in _strings(_claim(claims, self.roles_claim))
                 if v.startswith(self.role_prefix)} & self.known_roles
        if len(roles) != 1:
            found = ", ".join(sorted(roles)) or "none"
            raise NotAuthenticated(f"the token must carry exactly one Watchfloor role in "
                                   f"'{self.roles_claim}' (found: {found})")
        host = urlsplit(self.issuer).hostname or self.issuer
        return OidcIdentity(f"{OIDC_PREFIX}{host}:{sub}", display_name, roles.pop(),
                            _strings(_claim(claims, self.areas_claim)), int(claims["exp"]))


@dataclass(frozen=True)
class OidcSignIn:
    """A provider's token as Watchfloor accepted it: what its sign-in record says."""

    token_sha256: bytes  # the token's identity, never the token itself
    issuer: str
    subject: str
    username: str
    role: str
    expires_at: datetime

    @classmethod
    def of(cls, token: str, claims: dict[str, Any], *, username: str, role: str) -> OidcSignIn:
        return cls(hashlib.sha256(token.encode()).digest(), str(claims["iss"]), str(claims["sub"]), username, role,
                   datetime.fromtimestamp(int(claims["exp"]), timezone.utc))


def record_sign_in(conn: psycopg.Connection, sign_in: OidcSignIn) -> bool:
    """Record a token's first use as ``oidc_sign_in`` (issuer, subject, role), in the caller's
    transaction; later uses of the same token record nothing. True if this was the first.
    Tokens past their expiry are forgotten here, so the table holds only live ones."""
    conn.execute("DELETE FROM oidc_sign_ins WHERE expires_at < now() - interval '1 hour'")
    first = conn.execute("INSERT INTO oidc_sign_ins (token_sha256, expires_at) VALUES (%s, %s)"
                         " ON CONFLICT DO NOTHING", (sign_in.token_sha256, sign_in.expires_at)).rowcount > 0
    if first:
        audit.record(conn, actor=sign_in.username, action="oidc_sign_in",
                     details={"issuer": sign_in.issuer, "subject": sign_in.subject, "role": sign_in.role,
                              "expires_at": sign_in.expires_at.isoformat().replace("+00:00", "Z")})
    return first


def oidc_from_settings(settings: Settings, *, known_roles: Iterable[str]) -> OidcVerifier | None:
    """The verifier the settings describe, or None when OIDC is not configured."""
    if settings.oidc_issuer is None and settings.oidc_audience is None:
        return None
    if not settings.oidc_issuer or not settings.oidc_audience:
        raise ValueError("OIDC needs both WATCHFLOOR_OIDC_ISSUER and WATCHFLOOR_OIDC_AUDIENCE")
    return OidcVerifier(issuer=settings.oidc_issuer, audience=settings.oidc_audience,
                        jwks_url=settings.oidc_jwks_url, jwks_file=settings.oidc_jwks_file,
                        algorithms=[a.strip() for a in settings.oidc_algorithms.split(",") if a.strip()],
                        username_claim=settings.oidc_username_claim, roles_claim=settings.oidc_roles_claim,
                        areas_claim=settings.oidc_areas_claim, role_prefix=settings.oidc_role_prefix,
                        known_roles=known_roles)
