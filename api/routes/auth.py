"""Sign-in (a username and password for a bearer token) and sign-out (every token of the
caller revoked).

The cost of an unauthenticated request is bounded before anything is checked: the
attempt's rate-limit tokens are taken first (:class:`api.limits.Attempts`), then one of a
few password-check slots (:class:`api.limits.Verifications`). The user's row is read and
the connection given back to the pool before argon2 runs, so a flood of sign-ins never
holds the connections that signed-in users' requests need.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from psycopg_pool import ConnectionPool

from api.client_address import client_address
from api.deps import Caller, Db
from api.errors import ErrorBody
from api.limits import ApiLimits
from api.models import TokenIn, TokenOut
from core.contract import ACCOUNTS_TOPIC
from services import audit
from services.accounts import (
    ALL_AREAS,
    TokenIssuer,
    account_announcement,
    check_password,
    password_record,
    revoke_tokens,
)
from services.audit_digest import FailureDigest
from services.errors import NotAuthenticated, Overloaded

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


@router.post("/token", response_model=TokenOut,
             responses={401: {"model": ErrorBody}, 429: {"model": ErrorBody}, 503: {"model": ErrorBody}},
             summary="Exchange a username and password for a bearer token")
def token(body: TokenIn, request: Request) -> TokenOut:
    limits: ApiLimits = request.app.state.limits
    pool: ConnectionPool = request.app.state.pool
    client = client_address(request, limits.proxies)
    attempt = limits.sign_in.start(client, body.username)  # 429 before anything is checked
    try:
        with limits.verifications.slot():
            with pool.connection() as conn:
                record = password_record(conn, body.username)
            who = check_password(record, body.username, body.password)
    except Overloaded:
        attempt.abandoned()  # nothing was checked: not a failure
        raise
    if who is None:
        digest: FailureDigest = request.app.state.sign_in_failures
        entries = digest.failed(body.username, client)
        if entries:
            with pool.connection() as conn:
                for entry in entries:
                    audit.record(conn, actor=entry.username, action="sign_in_failed", details=entry.details)
                conn.commit()
        raise NotAuthenticated("wrong username or password")
    attempt.succeeded()
    with pool.connection() as conn:
        audit.record(conn, actor=who.username, action="sign_in", details={"client": client, "role": who.role.value})
        conn.commit()  # no token leaves without its record
    tokens: TokenIssuer = request.app.state.tokens
    return TokenOut(access_token=tokens.issue(who), expires_in=tokens.ttl_s, role=who.role.value,
                    areas=[ALL_AREAS] if who.areas is None else sorted(who.areas))


@router.post("/sign-out", status_code=204, response_class=Response, responses={401: {"model": ErrorBody}},
             summary="Revoke every token of the caller (on every API process within seconds)")
def sign_out(db: Db, who: Caller, request: Request) -> Response:
    """Ends every session of the caller, not only this token: tokens are not tracked one by
    one, a user's are all of one version. An OIDC provider's token cannot be revoked here
    (it ends at its own expiry, or at the provider); the sign-out is recorded all the same."""
    revoked = revoke_tokens(db, username=who.username)
    audit.record(db, actor=who.username, action="sign_out", details={"tokens_revoked": revoked})
    db.commit()  # then announce: the other processes re-read what was committed
    request.app.state.sessions.refresh(db, username=who.username)  # this one at once
    if revoked:
        request.app.state.hub.publish(ACCOUNTS_TOPIC, account_announcement(who.username, "signed_out"))
    return Response(status_code=204)
