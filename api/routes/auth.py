"""Sign-in: a username and password for a bearer token."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import Db
from api.errors import ErrorBody
from api.limits import RateLimiter
from api.models import TokenIn, TokenOut
from services import audit
from services.accounts import ALL_AREAS, TokenIssuer, authenticate
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
