"""Sign-in (a username and password for a bearer token) and sign-out (every token of the
caller revoked)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.deps import Caller, Db
from api.errors import ErrorBody
from api.limits import RateLimiter
from api.models import TokenIn, TokenOut
from core.contract import ACCOUNTS_TOPIC
from services import audit
from services.accounts import ALL_AREAS, TokenIssuer, account_announcement, authenticate, revoke_tokens
from services.errors import NotAuthenticated

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


@router.post("/token", response_model=TokenOut, responses={401: {"model": ErrorBody}, 429: {"model": ErrorBody}},
             summary="Exchange a username and password for a bearer token")
def token(body: TokenIn, request: Request, db: Db) -> TokenOut:
    client = request.client.host if request.client else None
    failures: RateLimiter = request.app.state.limits.sign_in
    key = f"{client}|{body.username}"
    failures.check(key)  # refused while too many recent failures, even with the right password
    who = authenticate(db, body.username, body.password)
    source = {"client": client}
    if who is None:
        failures.take(key)
        audit.record(db, actor=body.username, action="sign_in_failed", details=source)
        db.commit()  # the refusal below rolls the request back; the record stays
        raise NotAuthenticated("wrong username or password")
    audit.record(db, actor=who.username, action="sign_in", details={**source, "role": who.role.value})
    db.commit()  # no token leaves without its record
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
    if revoked:
        request.app.state.hub.publish(ACCOUNTS_TOPIC, account_announcement(who.username, "signed_out"))
    return Response(status_code=204)
