"""The HTTP side of who is asking: the bearer header and the per-route role check.

Every route depends on :func:`principal` (or :func:`require`), so nothing is reachable
without a valid token: signed, not expired, and not revoked (its version checked against the
process's in-memory :class:`services.sessions.TokenVersions`, no database query per request).
Roles, principals and tokens are :mod:`services.accounts`.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from api.limits import ApiLimits
from api.sign_ins import OidcSignIns
from services.accounts import Principal, Role, TokenIssuer
from services.errors import Forbidden, NotAuthenticated
from services.sessions import TokenVersions

__all__ = ["bearer", "principal", "require"]


def bearer(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise NotAuthenticated("a bearer token is required (POST /api/v1/auth/token)")
    return authorization[7:].strip()


def principal(request: Request) -> Principal:
    """FastAPI dependency: the caller, from ``Authorization: Bearer <token>``.

    Each call takes one request from the caller's rate limit (429 when it is used up). A
    provider's token's first request is its sign-in, recorded before it goes on.
    """
    issuer: TokenIssuer = request.app.state.tokens
    who, sign_in = issuer.identify(bearer(request.headers.get("authorization")))
    if sign_in is not None:
        sign_ins: OidcSignIns = request.app.state.oidc_sign_ins
        sign_ins.note(sign_in)
    versions: TokenVersions = request.app.state.sessions
    versions.check(who)
    limits: ApiLimits | None = getattr(request.app.state, "limits", None)
    if limits is not None:
        limits.user.hit(who.username)
    return who


def require(*roles: Role) -> Callable[[Request], Principal]:
    """FastAPI dependency factory: the caller, if their role is one of ``roles``."""
    allowed = frozenset(roles)

    def dependency(request: Request) -> Principal:
        who = principal(request)
        if who.role not in allowed:
            raise Forbidden(f"role {who.role.value} may not do this")
        return who

    return dependency
