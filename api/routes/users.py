"""Local users, for admins: the list, and disabling one (which ends their tokens at once)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from api.auth import require
from api.deps import Db
from api.errors import ErrorBody
from api.models import UserOut
from core.contract import ACCOUNTS_TOPIC
from services import audit
from services.accounts import Principal, Role, User, account_announcement, disable_user, get_user, list_users
from services.errors import Conflict, NotFound

router = APIRouter(prefix="/api/v1/users", tags=["users"])

Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
# The users table's own rule (telemetry/schema.py): anything else names no user.
Username = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]


def _out(user: User) -> UserOut:
    return UserOut(username=user.username, role=user.role.value, areas=list(user.areas),
                   display_name=user.display_name, disabled=user.disabled)


@router.get("", response_model=list[UserOut], summary="Local users whose areas are within yours")
def users(db: Db, who: Admin) -> list[UserOut]:
    return [_out(u) for u in list_users(db) if u.within(who.areas)]


@router.post("/{username}/disable", response_model=UserOut,
             responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
             summary="Disable a user: no more sign-ins, and every token of theirs refused within seconds")
def disable(username: Username, db: Db, who: Admin, request: Request) -> UserOut:
    # An area-limited admin manages only users whose areas are all within theirs; any other
    # user is as unknown to them as a device outside their area.
    user = get_user(db, username=username, lock=True)
    if user is None or not user.within(who.areas):
        raise NotFound(f"no user {username} in your area")
    if not disable_user(db, username=username):
        raise Conflict(f"user {username} is already disabled")
    # No areas in the details: an entry about no device is shown to auditors of every area.
    audit.record(db, actor=who.username, action="user_changed",
                 details={"username": username, "change": "disabled", "role": user.role.value})
    db.commit()  # then announce: the other processes re-read what was committed
    request.app.state.sessions.refresh(db, username=username)  # this one at once
    request.app.state.hub.publish(ACCOUNTS_TOPIC, account_announcement(username, "disabled"))
    disabled = get_user(db, username=username)
    assert disabled is not None  # locked above, and disabling keeps the row
    return _out(disabled)
