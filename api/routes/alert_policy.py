"""The force's alert policy: read by every role, changed by admins of every area. A change is
audited, committed, then announced on the broker so that every ingest worker applies it
before its next batch (docs/operations.md, "Alert policy")."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict

from api.auth import require
from api.deps import Db
from api.errors import ErrorBody
from core.contract import ALERT_POLICY_TOPIC
from services.accounts import Principal, Role
from services.alert_policy import policy_announcement, remove_rule, set_policy_rule
from telemetry.alert_policy import DEVICE_ROLES, KINDS, STATE_KINDS, TIMED_KINDS, Outcome, PolicyRule
from telemetry.alert_policy_store import load_policy

router = APIRouter(prefix="/api/v1/alert-policy", tags=["alerts"],
                   responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 422: {"model": ErrorBody}})

Reader = Annotated[Principal, Depends(require(*Role))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
# Checked against the kinds and roles by the service, which names what is allowed.
Kind = Annotated[str, Path(max_length=64)]
DeviceRole = Annotated[str, Path(max_length=64)]
OutcomeName = Literal["critical", "high", "warning", "info", "activity", "off"]


class RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcome: OutcomeName
    # For a unit assigned to an open incident; null: the same as outcome.
    assigned_outcome: OutcomeName | None = None
    # Only for offline: seconds a unit of this role may be quiet before it is offline; null:
    # WATCHFLOOR_ALERT_OFFLINE_AFTER_S. Its range is checked by the service, which says why.
    after_s: float | None = None


class RuleOut(BaseModel):
    kind: str
    role: str
    outcome: OutcomeName
    assigned_outcome: OutcomeName | None
    after_s: float | None


class PolicyOut(BaseModel):
    version: int
    kinds: list[str]
    state_kinds: list[str]  # raised while a state holds: a severity or off, never activity only
    roles: list[str]
    timed_kinds: list[str]  # may take after_s
    offline_after_s: float  # the offline timeout of a role whose rule gives none
    rules: list[RuleOut]


def _out(rule: PolicyRule) -> RuleOut:
    return RuleOut(kind=rule.kind, role=rule.role, outcome=rule.outcome.value,
                   assigned_outcome=rule.assigned_outcome.value if rule.assigned_outcome else None,
                   after_s=rule.after_s)


def _policy(db: Db, request: Request) -> PolicyOut:
    policy = load_policy(db)
    return PolicyOut(version=policy.version, kinds=list(KINDS), state_kinds=list(STATE_KINDS),
                     roles=list(DEVICE_ROLES), timed_kinds=list(TIMED_KINDS),
                     offline_after_s=request.app.state.settings.alert_offline_after_s,
                     rules=[_out(r) for r in policy.sorted_rules()])


@router.get("", response_model=PolicyOut, summary="The alert policy in force: a rule per kind, for any role or one")
def get_policy(request: Request, db: Db, who: Reader) -> PolicyOut:
    return _policy(db, request)


@router.put("/{kind}/{role}", response_model=PolicyOut,
            summary="Set what an alert kind does for a device role (* for any role)")
def put_rule(kind: Kind, role: DeviceRole, body: RuleIn, request: Request, db: Db, who: Admin) -> PolicyOut:
    rule = PolicyRule(kind, role, Outcome(body.outcome),
                      Outcome(body.assigned_outcome) if body.assigned_outcome else None, body.after_s)
    version = set_policy_rule(db, rule=rule, who=who)
    db.commit()  # then announce: the workers re-read what was committed
    request.app.state.hub.publish(ALERT_POLICY_TOPIC, policy_announcement(version))
    return _policy(db, request)


@router.delete("/{kind}/{role}", response_model=PolicyOut, responses={404: {"model": ErrorBody}},
               summary="Remove a role's own rule: the rule for any role applies to it again")
def delete_rule(kind: Kind, role: DeviceRole, request: Request, db: Db, who: Admin) -> PolicyOut:
    version = remove_rule(db, kind=kind, role=role, who=who)
    db.commit()
    request.app.state.hub.publish(ALERT_POLICY_TOPIC, policy_announcement(version))
    return _policy(db, request)
