"""The live-view workflow's pure core (:mod:`services.live_view.workflow`): which effects each
event produces, with no broker and no database. The end-to-end behaviour (the same decisions
through a real broker, relay and PostgreSQL) is in test_live_view.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from core.commands import CommandType, ReplyStatus
from services.accounts import Principal, Role
from services.consent import Basis, UnitFacts
from services.live_view.effects import (
    Announce,
    ArmIdle,
    Audit,
    CancelIdle,
    CloseStream,
    Effect,
    SendCommand,
    announcement,
)
from services.live_view.viewers import (
    Watcher,
    WearerView,
    after_viewer_joined,
    after_viewer_left,
    check_viewing,
    on_idle_timeout,
    status_params,
    viewer_end_reason,
    viewing_end_for_stream,
    viewing_over,
)
from services.live_view.workflow import (
    EndConsent,
    GrantConsent,
    IgnoreEvent,
    after_change,
    after_consent_ended,
    after_consent_started,
    after_publisher_gone,
    after_reconcile,
    after_request_answered,
    after_stream_started,
    after_sweep,
    audit_publisher_ended,
    audit_request_answered,
    audit_sweep,
    change_for_event,
    covered_detail,
    reply_answer,
)

WE1 = "we-1"
FRESH = {"age_s": 1.0, "max_age_s": 30.0}
T0 = datetime(2026, 12, 6, 14, 0, tzinfo=timezone.utc)
ANNA = Watcher("op-a", "Anna Page", "operator", T0, "officer needs support")
BEN = Watcher("op-b", None, "firearms_commander", T0 + timedelta(seconds=65), "incident 4")


def _view(*watchers: Watcher) -> WearerView:
    return WearerView(watchers, "accepted_request", "officer needs support")


def _consent(basis: Basis = Basis.ACCEPTED_REQUEST, end_reason: str | None = None) -> dict[str, Any]:
    return {"consent_id": 7, "device_id": WE1, "basis": basis.value, "end_reason": end_reason}


def _request(status: str, detail: str | None = None) -> dict[str, Any]:
    return {"request_id": "lv-1", "device_id": WE1, "status": status, "detail": detail, "requested_by": "op"}


def _events(effects: list[Effect]) -> list[str]:
    return [e.event for e in effects if isinstance(e, Announce)]


# the camera answers a request


def test_an_accepted_request_grants_and_is_announced() -> None:
    """The camera's "accepted" accepts the request (no detail needed); the answer is announced
    with the consent it granted, flat as well as nested (what a client matches on)."""
    answer = reply_answer(ReplyStatus.ACCEPTED, None)
    assert answer is not None and answer.accepted and answer.status == "accepted" and answer.detail is None
    row, consent = _request("accepted"), _consent()
    [effect] = after_request_answered(WE1, row, consent)
    assert isinstance(effect, Announce) and effect.event == "accepted" and effect.fields["consent"] == consent
    body = announcement(effect)
    assert body["request_id"] == "lv-1" and body["status"] == "accepted" and body["type"] == "live_view"
    audit = audit_request_answered(WE1, "lv-1", row, accepted=True)
    assert audit.action == "live_view_accepted" and audit.details["basis"] == "accepted_request"
    assert audit.actor == f"device:{WE1}"


def test_a_declined_failed_or_expired_reply_declines_and_says_why() -> None:
    """Anything but acceptance declines the request; with no words of the camera's, the
    reply's status is the reason. Its audit row has no basis (no consent was granted)."""
    for status in (ReplyStatus.DECLINED, ReplyStatus.FAILED, ReplyStatus.EXPIRED):
        answer = reply_answer(status, None)
        assert answer is not None and not answer.accepted and answer.detail == status.value
    answer = reply_answer(ReplyStatus.DECLINED, "officer busy")
    assert answer is not None and answer.detail == "officer busy"
    audit = audit_request_answered(WE1, "lv-1", _request("declined", "officer busy"), accepted=False)
    assert audit.action == "live_view_declined" and audit.details["basis"] is None


def test_a_done_reply_answers_no_request_and_camera_words_are_made_printable() -> None:
    """"done" answers a status or stop command: nothing to record. A camera's detail loses its
    control characters (it is stored and shown to people)."""
    assert reply_answer(ReplyStatus.DONE, "ok") is None
    answer = reply_answer(ReplyStatus.DECLINED, "no\x00\x1b[31m thanks")
    assert answer is not None and answer.detail == "no[31m thanks"


def test_a_reply_to_no_pending_request_does_nothing() -> None:
    """Another process was first, or the id was not this camera's: no announcement."""
    assert after_request_answered(WE1, None, None) == []


# the camera's events


def test_watch_me_asks_for_an_officer_consent() -> None:
    """watch_me grants an officer_request consent (the records grant none when one is in
    force already), and a granted consent is announced."""
    assert change_for_event("watch_me", None, **FRESH) == GrantConsent(Basis.OFFICER_REQUEST)
    assert change_for_event("watch_me", Basis.POLICY_RECORDING, **FRESH) == GrantConsent(Basis.OFFICER_REQUEST)
    assert _events(after_consent_started(WE1, _consent(Basis.OFFICER_REQUEST))) == ["consent_started"]


def test_the_camera_is_told_to_dial_in_only_once_its_watch_me_consent_is_on_record() -> None:
    """The watch-me race: after the consent is granted (and only then: this is the effect of a
    committed grant) the camera gets a live_view_request with basis officer_request, under an
    id that is no request's (a reply to it answers nothing), before the announcement."""
    effects = after_consent_started(WE1, _consent(Basis.OFFICER_REQUEST))
    command = effects[0]
    assert isinstance(command, SendCommand) and command.kind is CommandType.LIVE_VIEW_REQUEST
    assert command.params["basis"] == "officer_request" and command.command_id == "wm-7"
    assert _events(effects) == ["consent_started"]


def test_a_watch_me_from_the_cameras_buffer_grants_nothing_but_an_old_stop_still_stops() -> None:
    """A watch_me older than the bound (sent late from the camera's buffer) is ignored, and
    says why; an event that ends consent ends it however old it is (ending is always safe)."""
    assert change_for_event("watch_me", None, age_s=31.0, max_age_s=30.0) == IgnoreEvent("stale")
    assert change_for_event("watch_me", None, age_s=30 * 86400.0, max_age_s=30.0) == IgnoreEvent("stale")
    assert change_for_event("watch_me", None, age_s=-2.0, max_age_s=30.0) == GrantConsent(Basis.OFFICER_REQUEST)
    assert change_for_event("docked", Basis.OFFICER_REQUEST, age_s=86400.0, max_age_s=30.0) == EndConsent("docked")


def test_recording_stopped_ends_only_a_policy_consent_and_docked_ends_any() -> None:
    """A policy consent rests on the recording; a consent the officer gave does not. Docking
    ends every consent. With no consent in force, nothing changes."""
    assert change_for_event("recording_stopped", Basis.POLICY_RECORDING, **FRESH) == EndConsent("recording_stopped")
    assert change_for_event("recording_stopped", Basis.ACCEPTED_REQUEST, **FRESH) is None
    assert change_for_event("recording_stopped", Basis.OFFICER_REQUEST, **FRESH) is None
    for basis in Basis:
        assert change_for_event("docked", basis, **FRESH) == EndConsent("docked")
    assert change_for_event("docked", None, **FRESH) is None
    assert change_for_event("sos", Basis.OFFICER_REQUEST, **FRESH) is None


def test_an_ended_consent_stops_the_camera_tells_everyone_and_closes_the_stream() -> None:
    """In that order: live_view_stop to the camera, consent_ended to everyone, the stream closed."""
    ended = _consent(end_reason="docked")
    assert after_consent_ended(WE1, ended, "docked") == [
        SendCommand(WE1, CommandType.LIVE_VIEW_STOP, {"reason": "docked"}),
        Announce("consent_ended", WE1, {"consent": ended, "reason": "docked"}),
        CloseStream(WE1, "docked")]


def test_a_consent_ended_elsewhere_closes_the_stream_here_only_if_it_runs_here() -> None:
    """Another process's consent_ended closes this process's stream; other changes do not."""
    change = {"event": "consent_ended", "device_id": WE1, "reason": "stopped_by_control_room"}
    assert after_change(change, publishing_here=True) == [CloseStream(WE1, "stopped_by_control_room")]
    assert after_change(change, publishing_here=False) == []
    assert after_change({"event": "consent_ended", "device_id": WE1}, publishing_here=True) == [
        CloseStream(WE1, "consent_ended")]
    assert after_change({"event": "viewer_joined", "device_id": WE1}, publishing_here=True) == []


# the stream and its viewers


def test_a_stream_starts_with_its_idle_timer_running() -> None:
    """No viewer yet: the stream is announced with 0 viewers and the idle timer starts."""
    effects = after_stream_started(WE1, _consent())
    assert _events(effects) == ["stream_started"] and effects[-1] == ArmIdle(WE1)


def test_a_viewer_joining_stops_the_idle_timer_and_tells_the_camera_who_watches_and_why() -> None:
    """The camera is told every viewer (named as the force chose, with role, since when and
    why) and why the stream is allowed; the control room is told the count."""
    effects = after_viewer_joined(WE1, "op-b", _view(ANNA, BEN), sees="name")
    assert effects == [
        CancelIdle(WE1),
        SendCommand(WE1, CommandType.LIVE_VIEW_STATUS, {
            "viewers": 2,
            "watching": [{"name": "Anna Page", "role": "operator", "since": "2026-12-06T14:00:00Z",
                          "reason": "officer needs support"},
                         {"name": "op-b", "role": "firearms_commander", "since": "2026-12-06T14:01:05Z",
                          "reason": "incident 4"}],
            "basis": "accepted_request", "reason": "officer needs support"}),
        Announce("viewer_joined", WE1, {"viewer": "op-b", "viewers": 2})]


def test_the_force_chooses_how_a_viewer_is_named_to_the_wearer() -> None:
    """name: the display name (else the username); callsign: the username; role: the role only."""
    def names(sees: str) -> list[str]:
        return [w["name"] for w in status_params(_view(ANNA, BEN), sees=sees)["watching"]]
    assert names("name") == ["Anna Page", "op-b"]
    assert names("callsign") == ["op-a", "op-b"]
    assert names("role") == ["operator", "firearms_commander"]


def test_the_last_viewer_leaving_starts_the_idle_timer() -> None:
    """With viewers left the timer stays off and the camera gets who is left; with none it
    gets an empty list and the timer starts; when the stream has gone (or runs elsewhere) the
    camera is not told and no timer starts."""
    some = after_viewer_left(WE1, "op-a", "viewer_left", view=_view(BEN), sees="callsign")
    assert ArmIdle(WE1) not in some
    (told,) = [e for e in some if isinstance(e, SendCommand)]
    assert told.params["viewers"] == 1 and [w["name"] for w in told.params["watching"]] == ["op-b"]
    last = after_viewer_left(WE1, "op-b", "viewer_left", view=_view(), sees="name")
    assert last[-1] == ArmIdle(WE1)
    assert SendCommand(WE1, CommandType.LIVE_VIEW_STATUS, {"viewers": 0, "watching": [],
                                                           "basis": "accepted_request",
                                                           "reason": "officer needs support"}) in last
    gone = after_viewer_left(WE1, "op", "stream_ended", view=None, sees="name")
    assert gone == [Announce("viewer_left", WE1, {"viewer": "op", "viewers": 0, "reason": "stream_ended"})]


def test_a_covered_request_says_whose_consent_and_which_rule() -> None:
    """The record tells a request the force's rule covered from one the officer accepted."""
    consent = {**_consent(), "request_id": "lv-1"}
    assert covered_detail(consent, "same_requester") == "covered by consent 7 of request lv-1 (rule: same requester)"
    watch_me = {**_consent(Basis.OFFICER_REQUEST), "request_id": None}
    assert covered_detail(watch_me, "officer_asked") == "covered by consent 7 (officer_request) (rule: officer asked)"


def test_the_idle_timeout_stops_only_a_stream_nobody_watches() -> None:
    """no_viewers closes the stream when it runs here without a viewer; otherwise nothing."""
    for basis in (*Basis, None):
        assert on_idle_timeout(WE1, publishing=True, viewers=0, basis=basis,
                               watch_me_open=False) == [CloseStream(WE1, "no_viewers")]
        assert on_idle_timeout(WE1, publishing=True, viewers=1, basis=basis, watch_me_open=True) == []
        assert on_idle_timeout(WE1, publishing=False, viewers=0, basis=basis, watch_me_open=True) == []


def test_a_stream_the_officer_asked_for_waits_for_a_viewer_while_the_alert_is_open() -> None:
    """A watch_me stream with nobody watching is kept while its watch_me alert is unresolved:
    the timer runs again instead. Any other basis stops as usual, alert or not."""
    assert on_idle_timeout(WE1, publishing=True, viewers=0, basis=Basis.OFFICER_REQUEST,
                           watch_me_open=True) == [ArmIdle(WE1)]
    for basis in (Basis.ACCEPTED_REQUEST, Basis.POLICY_RECORDING, None):
        assert on_idle_timeout(WE1, publishing=True, viewers=0, basis=basis,
                               watch_me_open=True) == [CloseStream(WE1, "no_viewers")]


def test_a_stream_that_ends_ends_its_consent_and_the_officer_is_not_told_to_stop() -> None:
    """The consent it ended is announced; the camera is told to stop unless its officer
    stopped it; stream_ended is announced only when the stream was the unit's. The audit
    names the device as actor when the camera ended it."""
    ended = _consent(end_reason="camera_lost")
    lost = after_publisher_gone(WE1, "camera_lost", ended=ended, current=True)
    assert SendCommand(WE1, CommandType.LIVE_VIEW_STOP, {"reason": "camera_lost"}) in lost
    assert _events(lost) == ["consent_ended", "stream_ended"]
    stopped = after_publisher_gone(WE1, "officer_stopped", ended=ended, current=True)
    assert not any(isinstance(e, SendCommand) for e in stopped)
    taken_over = after_publisher_gone(WE1, "camera_lost", ended=None, current=False)
    assert taken_over == []
    assert audit_publisher_ended(WE1, ended, "camera_lost").actor == f"device:{WE1}"
    assert audit_publisher_ended(WE1, ended, "no_viewers").actor == "system"


def test_relay_reasons_become_the_records_words() -> None:
    """How the relay says a viewer's session ended, in the viewing record's words."""
    assert viewer_end_reason("setup_timeout") == "never_connected"
    assert viewer_end_reason("connection_failed") == "connection_lost"
    assert viewer_end_reason("publisher_ended") == "stream_ended"
    assert viewer_end_reason("something_new") == "something_new"
    assert viewer_end_reason(None) == "closed"


def test_a_viewing_ended_by_its_stream_says_how_the_stream_ended() -> None:
    """The officer's WHIP DELETE, the camera vanishing, idleness and shutdown keep their own
    words; anything else that ended the stream ended its consent."""
    assert viewing_end_for_stream("officer_stopped") == "officer_stopped"
    assert viewing_end_for_stream("camera_lost") == "camera_gone"
    assert viewing_end_for_stream("no_viewers") == "idle"
    assert viewing_end_for_stream("server_stopping") == "server_stopping"
    assert viewing_end_for_stream("device_retired") == "device_retired"
    assert viewing_end_for_stream("device_reprovisioned") == "device_reprovisioned"
    for reason in ("stopped_by_control_room", "recording_stopped", "docked", "no_stream", "consent_ended"):
        assert viewing_end_for_stream(reason) == "consent_ended"


# the sweeper


def test_the_sweeper_expires_requests_and_ends_stale_consents() -> None:
    """An unanswered request is announced as expired and audited as declined by the system; a
    consent that never became a stream (or a policy consent whose recording stopped) ends like
    any other (camera told, everyone told, stream closed); an orphaned viewing is audited."""
    expired = _request("expired", "the camera did not answer in time")
    stale = _consent(end_reason="no_stream")
    effects = after_sweep([expired], [stale])
    assert effects[0] == Announce("expired", WE1, {"request": expired})
    assert effects[1:] == after_consent_ended(WE1, stale, "no_stream")
    orphan = {"viewer": "op", "device_id": WE1, "session_id": "s-1"}
    audits = audit_sweep([expired], [stale], [orphan])
    assert [a.action for a in audits] == ["live_view_declined", "live_view_ended", "viewing_ended"]
    assert audits[0] == Audit("system", "live_view_declined", WE1,
                              {"request_id": "lv-1", "detail": "the camera did not answer in time", "expired": True})
    assert audits[2].actor == "op" and audits[2].details["reason"] == "consent_ended"
    assert after_sweep([], []) == [] and audit_sweep([], [], []) == []


# a property over any sequence of events


@dataclass
class _Unit:
    """One camera as the records and this process see it; effects are applied as LiveView does."""

    consent: Basis | None = None
    stream: bool = False
    viewers: int = 0
    idle_armed: bool = False
    watch_me_open: bool = False  # the unit's watch_me alert is not resolved
    announced: list[str] = field(default_factory=list)

    def apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Announce):
                self.announced.append(effect.event)
            elif isinstance(effect, ArmIdle):
                self.idle_armed = True
            elif isinstance(effect, CancelIdle):
                self.idle_armed = False
            elif isinstance(effect, CloseStream):
                self.stream_gone(effect.reason)

    def stream_gone(self, reason: str) -> None:
        if not self.stream:
            return
        self.stream, self.idle_armed = False, False
        for _ in range(self.viewers):
            self.apply(after_viewer_left(WE1, "op", "stream_ended", view=None, sees="name"))
        self.viewers = 0
        ended = None
        if self.consent is not None:
            ended, self.consent = _consent(self.consent, reason), None
        self.apply(after_publisher_gone(WE1, reason, ended=ended, current=True))

    def end_consent(self, effects: list[Effect]) -> None:
        self.consent = None
        self.apply(effects)

    def on(self, event: str) -> None:
        if event in ("watch_me", "recording_stopped", "docked", "sos"):
            change = change_for_event(event, self.consent, **FRESH)
            if isinstance(change, GrantConsent) and self.consent is None:
                self.consent = change.basis
                self.apply(after_consent_started(WE1, _consent(change.basis)))
            elif isinstance(change, EndConsent):
                self.end_consent(after_consent_ended(WE1, _consent(end_reason=change.reason), change.reason))
        elif event in ("accepted", "policy") and self.consent is None:
            self.consent = Basis.ACCEPTED_REQUEST if event == "accepted" else Basis.POLICY_RECORDING
            self.apply(after_request_answered(WE1, _request("accepted"), _consent(self.consent)))
        elif event == "control_room_stop" and self.consent is not None:
            self.end_consent(after_consent_ended(WE1, _consent(), "stopped_by_control_room"))
        elif event == "sweep" and self.consent is not None and not self.stream:
            self.end_consent(after_sweep([], [_consent(self.consent, "no_stream")]))
        elif event == "publish" and self.consent is not None and not self.stream:
            self.stream = True
            self.apply(after_stream_started(WE1, _consent(self.consent)))
        elif event == "camera_lost":
            self.stream_gone("camera_lost")
        elif event == "viewer_joined" and self.stream:
            self.viewers += 1
            self.apply(after_viewer_joined(WE1, "op", _view(*[ANNA] * self.viewers), sees="name"))
        elif event == "viewer_left" and self.viewers:
            self.viewers -= 1
            view = _view(*[ANNA] * self.viewers) if self.stream else None
            self.apply(after_viewer_left(WE1, "op", "viewer_left", view=view, sees="name"))
        elif event in ("alert_open", "alert_resolved"):
            self.watch_me_open = event == "alert_open"
        elif event == "idle_timeout" and self.idle_armed:
            self.idle_armed = False
            self.apply(on_idle_timeout(WE1, publishing=self.stream, viewers=self.viewers, basis=self.consent,
                                       watch_me_open=self.watch_me_open))


_EVENTS = st.sampled_from(["watch_me", "recording_stopped", "docked", "sos", "accepted", "policy",
                           "control_room_stop", "sweep", "publish", "camera_lost", "viewer_joined",
                           "viewer_left", "idle_timeout", "alert_open", "alert_resolved"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_EVENTS, max_size=40))
def test_no_sequence_of_events_leaves_a_stream_without_consent_or_a_forgotten_idle_stream(events: list[str]) -> None:
    """Whatever happens, in any order: a stream runs only under a consent in force; a stream
    nobody watches always has its idle timer running (so it stops); every consent that ended
    was announced."""
    unit = _Unit()
    granted = 0
    for event in events:
        before = unit.consent
        unit.on(event)
        granted += before is None and unit.consent is not None
        assert not unit.stream or unit.consent is not None, f"stream without consent after {event}"
        assert not unit.stream or unit.viewers > 0 or unit.idle_armed, f"unwatched stream not timed after {event}"
        assert unit.stream or unit.viewers == 0
    ended = unit.announced.count("consent_ended")
    assert ended == granted - (unit.consent is not None)


def test_a_viewer_needs_a_reason_a_consent_and_the_stream_in_this_process() -> None:
    """In order: may the caller watch the unit at all (else 403/404); a reason (403); a consent
    in force (409) that covers the caller (403); a camera that has started streaming (wait,
    then 409 on the final check); the stream in this process (409)."""
    op = Principal("op", Role.OPERATOR, frozenset({"Westminster"}))
    unit = UnitFacts(device_id=WE1, borough="Westminster", role="response", recording="buffering", online=True,
                     retired=False, incident_owners=frozenset(), incident_boroughs=frozenset())
    streaming = {**_consent(), "publisher_session": "p-1"}
    dialling = {**_consent(), "publisher_session": None}

    def check(who: Principal = op, reason: str | None = "incident 4", consent: dict[str, Any] | None = streaming,
              final: bool = False, here: bool = True, covered: bool = True) -> tuple[str | None, bool]:
        verdict = check_viewing(who, WE1, unit, reason, consent, covered=covered, final=final, publishing_here=here)
        return (verdict.denied.kind if verdict.denied else None), verdict.waiting

    assert check() == (None, False)
    assert check(who=Principal("a", Role.AUDITOR, None)) == ("forbidden", False)
    assert check(who=Principal("o", Role.OPERATOR, frozenset({"Camden"}))) == ("not_found", False)
    assert check(reason=None) == ("forbidden", False)
    assert check(consent=None) == ("conflict", False)
    assert check(consent=dialling) == (None, True)
    assert check(consent=dialling, final=True) == ("conflict", False)
    assert check(here=False) == ("conflict", False)
    assert check(covered=False) == ("forbidden", False)
    assert check(covered=False, consent=dialling) == ("forbidden", False)  # not even waiting


# authorisation holds for the whole viewing


def test_a_viewing_ends_when_authorisation_ends_or_it_reaches_the_maximum_length() -> None:
    """A token that expired or was revoked, a role or areas that no longer cover the unit (or
    the unit moved, or was retired): authorisation_ended. Otherwise, at the maximum length:
    max_length. Authorisation is checked first: a revoked viewer's long viewing says so."""
    op = Principal("op", Role.OPERATOR, frozenset({"Westminster"}))
    unit = UnitFacts(device_id=WE1, borough="Westminster", role="response", recording="buffering", online=True,
                     retired=False, incident_owners=frozenset(), incident_boroughs=frozenset())
    moved = UnitFacts(**{**unit.__dict__, "borough": "Camden"})
    retired = UnitFacts(**{**unit.__dict__, "retired": True})

    def over(who: Principal = op, facts: UnitFacts | None = unit, token: str | None = None,
             watched_s: float = 10.0) -> str | None:
        return viewing_over(who, facts, token_ended=token, watched_s=watched_s, max_s=3600.0)

    assert over() is None
    assert over(watched_s=3599.9) is None
    assert over(watched_s=3600.0) == "max_length"
    assert over(token="token expired") == "authorisation_ended"
    assert over(token="token revoked", watched_s=5000) == "authorisation_ended"
    assert over(facts=moved) == "authorisation_ended"
    assert over(facts=retired) == "authorisation_ended"
    assert over(facts=None) == "authorisation_ended"
    assert over(who=Principal("op", Role.AUDITOR, None)) == "authorisation_ended"  # role changed
    assert over(who=Principal("op", Role.OPERATOR, frozenset({"Camden"}))) == "authorisation_ended"
    # A firearms commander covers an incident's unit outside their areas while it is assigned.
    afo = Principal("cmd", Role.FIREARMS_COMMANDER, frozenset({"Camden"}))
    assigned = UnitFacts(**{**unit.__dict__, "incident_owners": frozenset({"cmd"})})
    assert over(who=afo, facts=assigned) is None
    assert over(who=afo, facts=unit) == "authorisation_ended"


def test_a_stream_whose_consent_ended_unannounced_closes_with_the_consents_reason() -> None:
    """The sweeper found consents ended in the database while this process streams under them:
    each camera is told to stop and its stream closes with the consent's own reason."""
    retired = {**_consent(), "end_reason": "device_retired"}
    stopped = {**_consent(), "device_id": "we-2", "end_reason": "stopped_by_control_room"}
    assert after_reconcile([]) == []
    assert after_reconcile([retired, stopped]) == [
        SendCommand(WE1, CommandType.LIVE_VIEW_STOP, {"reason": "device_retired"}),
        CloseStream(WE1, "device_retired"),
        SendCommand("we-2", CommandType.LIVE_VIEW_STOP, {"reason": "stopped_by_control_room"}),
        CloseStream("we-2", "stopped_by_control_room")]
    # ... and its viewings say why.
    assert viewing_end_for_stream("stopped_by_control_room") == "consent_ended"
