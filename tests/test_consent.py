"""The pure live-view decisions: who may watch, what a request does, when consent ends, how
a simulated camera answers, and the command envelope. No I/O."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from core.commands import Command, CommandReply, CommandType, ReplyStatus, command, reply
from services.accounts import Principal, Role
from services.consent import (
    Basis,
    CoverRule,
    IncidentFacts,
    UnitFacts,
    clean_reason,
    covering_rule,
    incident_denied,
    may_watch,
    plan_request,
    stop_reason_for_event,
    viewer_covered,
)
from simulator.camera import CameraPolicy, answer_live_view_request
from simulator.fleet import FleetProfile, build_fleet
from simulator.geo import load_boroughs

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def _unit(**changes: object) -> UnitFacts:
    base: dict[str, object] = {"device_id": "we-1", "borough": "Westminster", "role": "response",
                               "recording": "buffering", "online": True, "retired": False,
                               "incident_owners": frozenset(), "incident_boroughs": frozenset(),
                               "reading_age_s": 5.0}
    base.update(changes)
    return UnitFacts(**base)  # type: ignore[arg-type]


def _who(role: Role, areas: frozenset[str] | None = None, name: str = "someone") -> Principal:
    return Principal(name, role, areas)


def test_only_operators_and_firearms_commanders_watch_within_their_areas() -> None:
    """Fleet managers, auditors and admins are refused (403); an operator outside the unit's
    area gets 404, as for any device they may not see."""
    for role in (Role.FLEET_MANAGER, Role.AUDITOR, Role.ADMIN):
        denied = may_watch(_who(role), _unit())
        assert denied is not None and denied.kind == "forbidden"
    assert may_watch(_who(Role.OPERATOR), _unit()) is None
    assert may_watch(_who(Role.OPERATOR, frozenset({"Westminster"})), _unit()) is None
    outside = may_watch(_who(Role.OPERATOR, frozenset({"Camden"})), _unit())
    assert outside is not None and outside.kind == "not_found"
    missing = may_watch(_who(Role.OPERATOR), None)
    assert missing is not None and missing.kind == "not_found"
    retired = may_watch(_who(Role.OPERATOR), _unit(retired=True))
    assert retired is not None and retired.kind == "not_found"


def test_a_firearms_commander_watches_the_units_of_their_incidents() -> None:
    """Outside their areas, a firearms commander may watch units assigned to an open incident
    they created or whose borough they cover; an operator may not."""
    camden = frozenset({"Camden"})
    assigned = _unit(incident_owners=frozenset({"gold"}), incident_boroughs=frozenset({"Camden"}))
    assert may_watch(_who(Role.FIREARMS_COMMANDER, frozenset({"Hackney"}), "gold"), assigned) is None
    assert may_watch(_who(Role.FIREARMS_COMMANDER, camden, "silver"), assigned) is None
    assert may_watch(_who(Role.FIREARMS_COMMANDER, frozenset({"Hackney"}), "silver"), assigned) is not None
    assert may_watch(_who(Role.OPERATOR, camden, "gold"), assigned) is not None


def test_policy_grants_only_for_a_recording_firearms_unit_when_enabled() -> None:
    """The force policy grants consent without asking only for a firearms unit that is
    recording, and only when the setting is on; everything else asks the camera."""
    recording_afo = _unit(role="firearms", recording="recording")
    assert plan_request(recording_afo, policy_firearms_recording=True, max_reading_age_s=60).basis \
        is Basis.POLICY_RECORDING
    assert plan_request(recording_afo, policy_firearms_recording=False, max_reading_age_s=60).ask
    assert plan_request(_unit(role="firearms", recording="buffering"), policy_firearms_recording=True,
                        max_reading_age_s=60).ask
    assert plan_request(_unit(recording="recording"), policy_firearms_recording=True, max_reading_age_s=60).ask


def test_policy_looks_at_the_unit_as_it_is_now() -> None:
    """A firearms unit whose last reading says recording no longer qualifies once it is
    offline, or its reading is older than the bound, or it never reported: the camera is asked."""
    for stale in (_unit(role="firearms", recording="recording", online=False),
                  _unit(role="firearms", recording="recording", reading_age_s=3 * 3600.0),
                  _unit(role="firearms", recording="recording", reading_age_s=None)):
        plan = plan_request(stale, policy_firearms_recording=True, max_reading_age_s=60)
        assert plan.ask and plan.basis is None, stale
    fresh = _unit(role="firearms", recording="recording", reading_age_s=59.0)
    assert plan_request(fresh, policy_firearms_recording=True, max_reading_age_s=60).basis is Basis.POLICY_RECORDING


def test_a_consent_covers_only_whom_a_rule_of_the_force_says() -> None:
    """A consent the officer gave to one requester covers that requester again (when the force
    says so) and nobody else; a watch_me consent covers the control room (the officer asked it);
    a policy consent covers by the policy. Joining the stream follows the same rules."""
    given = Basis.ACCEPTED_REQUEST
    assert covering_rule(given, "op-a", "op-a", same_requester=True) is CoverRule.SAME_REQUESTER
    assert covering_rule(given, "op-a", "op-a", same_requester=False) is None
    assert covering_rule(given, "op-a", "op-b", same_requester=True) is None
    assert covering_rule(given, None, "op-b", same_requester=True) is None
    assert covering_rule(Basis.OFFICER_REQUEST, None, "op-b", same_requester=False) is CoverRule.OFFICER_ASKED
    assert covering_rule(Basis.POLICY_RECORDING, "op-a", "op-b", same_requester=False) is CoverRule.POLICY_RECORDING
    assert viewer_covered(given, frozenset({"op-a"}), "op-a")
    assert not viewer_covered(given, frozenset({"op-a"}), "op-b")
    assert viewer_covered(Basis.OFFICER_REQUEST, frozenset(), "op-b")
    assert viewer_covered(Basis.POLICY_RECORDING, frozenset(), "op-b")


def test_a_consent_covers_a_request_naming_the_incident_its_request_named() -> None:
    """Rule same_incident: a later request naming the incident that the accepted request named
    is covered, when the force says so; another incident, none, or a consent whose request
    named none is put to the camera. The same requester is covered by their own rule first."""
    given = Basis.ACCEPTED_REQUEST

    def rule(consent_incident: int | None, incident: int | None, *, same_incident: bool = True,
             username: str = "op-b") -> CoverRule | None:
        return covering_rule(given, "op-a", username, same_requester=True, consent_incident=consent_incident,
                             incident=incident, same_incident=same_incident)

    assert rule(7, 7) is CoverRule.SAME_INCIDENT
    assert rule(7, 7, same_incident=False) is None
    assert rule(7, 8) is None
    assert rule(7, None) is None
    assert rule(None, None) is None
    assert rule(None, 7) is None
    assert rule(7, 7, username="op-a") is CoverRule.SAME_REQUESTER
    # The incident rule never narrows what the officer's own ask or the policy covers.
    assert covering_rule(Basis.OFFICER_REQUEST, None, "op-b", same_requester=False, consent_incident=7,
                         incident=8, same_incident=True) is CoverRule.OFFICER_ASKED


def test_a_request_may_name_only_an_open_incident_in_the_callers_area_with_the_unit_on_it() -> None:
    """An incident the caller does not see (another borough, or none such) is 404 like a unit
    outside their area; a closed incident, or one the unit is not assigned to, is 409."""
    west = Principal("op-w", Role.OPERATOR, frozenset({"Westminster"}))
    anywhere = Principal("op-all", Role.OPERATOR, None)
    incident = IncidentFacts(incident_id=7, borough="Westminster", open=True, unit_assigned=True)
    assert incident_denied(west, 7, incident) is None
    assert incident_denied(anywhere, 7, incident) is None
    for unseen in (None, IncidentFacts(incident_id=7, borough="Camden", open=True, unit_assigned=True)):
        denied = incident_denied(west, 7, unseen)
        assert denied is not None and denied.kind == "not_found", unseen
    for unusable in (IncidentFacts(incident_id=7, borough="Westminster", open=False, unit_assigned=True),
                     IncidentFacts(incident_id=7, borough="Westminster", open=True, unit_assigned=False)):
        denied = incident_denied(west, 7, unusable)
        assert denied is not None and denied.kind == "conflict", unusable


def test_consent_ends_with_the_recording_only_when_that_was_its_basis() -> None:
    """recording_stopped ends a policy consent, not one the officer gave; docking ends any."""
    assert stop_reason_for_event("recording_stopped", Basis.POLICY_RECORDING) == "recording_stopped"
    assert stop_reason_for_event("recording_stopped", Basis.OFFICER_REQUEST) is None
    assert stop_reason_for_event("recording_stopped", Basis.ACCEPTED_REQUEST) is None
    for basis in Basis:
        assert stop_reason_for_event("docked", basis) == "docked"
    assert stop_reason_for_event("emergency", Basis.POLICY_RECORDING) is None


def test_reasons_are_required_and_bounded() -> None:
    """A reason is 3 to 200 characters once whitespace is folded."""
    assert clean_reason("  suspect   vehicle ") == "suspect vehicle"
    assert clean_reason(None) is None and clean_reason("  ") is None and clean_reason("ok") is None
    assert clean_reason("x" * 201) is None
    assert clean_reason("nul\x00 inside") is None and clean_reason("bell\x07 rings") is None


def test_commands_and_replies_follow_the_contract() -> None:
    """Watchfloor's commands validate against the strict envelope; replies parse; unknown
    fields and bad ids are refused."""
    raw = command(command_id="lv-1", kind=CommandType.LIVE_VIEW_REQUEST, expires_s=60, now=NOW,
                  params={"requested_by": "op", "reason": "check", "basis": "ask"})
    parsed = Command.model_validate_json(raw)
    assert parsed.type is CommandType.LIVE_VIEW_REQUEST and not parsed.expired(NOW + timedelta(seconds=60))
    assert parsed.expired(NOW + timedelta(seconds=61))
    answer = CommandReply.model_validate_json(reply(command_id="lv-1", status=ReplyStatus.DECLINED, detail="busy"))
    assert answer.status is ReplyStatus.DECLINED and answer.detail == "busy"
    with pytest.raises(ValidationError):
        CommandReply.model_validate_json(b'{"id": "lv-1", "ts": "2026-12-01T12:00:00Z", "status": "ok"}')
    with pytest.raises(ValidationError):
        Command.model_validate_json(b'{"id": "a b", "ts": "2026-12-01T12:00:00Z", "type": "config", "expires_s": 5}')


def test_simulated_officers_answer_by_policy_and_seed() -> None:
    """Simulated cameras accept unless busy, docked or without video, decline a seeded share,
    comply with a policy request, and the same seed gives the same answers."""
    def answers(seed: int) -> list[ReplyStatus]:
        units = build_fleet(load_boroughs(), 200, seed=seed, profile=FleetProfile())
        request = Command(id="c1", ts=NOW, type=CommandType.LIVE_VIEW_REQUEST, expires_s=60, params={})
        return [answer_live_view_request(u, request, now=NOW, policy=CameraPolicy(decline_share=0.2),
                                         can_stream=True)[0] for u in units]

    first = answers(5)
    assert first == answers(5)
    declined = first.count(ReplyStatus.DECLINED) / len(first)
    assert 0.1 < declined < 0.3
    unit = build_fleet(load_boroughs(), 1, seed=1, profile=FleetProfile())[0]
    unit.rng = random.Random(0)
    ask = Command(id="c2", ts=NOW, type=CommandType.LIVE_VIEW_REQUEST, expires_s=60, params={})
    policy = Command(id="c3", ts=NOW, type=CommandType.LIVE_VIEW_REQUEST, expires_s=60,
                     params={"basis": "policy_recording"})
    never = CameraPolicy(decline_share=0.0)
    assert answer_live_view_request(unit, ask, now=NOW, policy=never, can_stream=False)[0] is ReplyStatus.DECLINED
    assert answer_live_view_request(unit, ask, now=NOW + timedelta(minutes=5), policy=never,
                                    can_stream=True)[0] is ReplyStatus.EXPIRED
    unit.emergency_s = 30
    assert answer_live_view_request(unit, ask, now=NOW, policy=never, can_stream=True)[0] is ReplyStatus.DECLINED
    assert answer_live_view_request(unit, policy, now=NOW, policy=never, can_stream=True)[0] is ReplyStatus.ACCEPTED
    unit.docked = True
    assert answer_live_view_request(unit, policy, now=NOW, policy=never, can_stream=True)[0] is ReplyStatus.DECLINED


def test_relay_ice_servers_come_from_settings_and_default_to_none() -> None:
    """No ICE server unless configured (never a public STUN server by default); configured
    ones, as RTCIceServer JSON in the environment, reach the relay as given."""
    from core.settings import Settings
    from services.live_view import ice_servers

    assert ice_servers(Settings()) == ()
    configured = Settings(relay_ice_servers=[{"urls": "stun:stun.force.example:3478"},
                                             {"urls": ["turn:turn.force.example:3478?transport=udp"],
                                              "username": "relay", "credential": "s3cret"}])
    first, second = ice_servers(configured)
    assert first.urls == ("stun:stun.force.example:3478",) and first.username is None
    assert second.urls == ("turn:turn.force.example:3478?transport=udp",)
    assert (second.username, second.credential) == ("relay", "s3cret")
