"""The viewing record as an auditor reads it, over HTTP on real parts (the API, PostgreSQL):
listed within the caller's areas, filtered by unit, viewer, time window and consent basis,
and exported as CSV with the same neutralised cells as the fleet export, the export itself
in the audit log. The records are written as the live view writes them (one row per
session or refusal), at chosen times, so that the windows are exact."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import pytest

from core.contract import Channel, topic_for
from services.accounts import Role, add_user
from simulator.video import VideoUplink
from tests.helpers.api import PASSWORD
from tests.helpers.db import Database
from tests.helpers.live_view import (
    FORMULA,
    RECORD_DAY,
    SIM_UNIT,
    WE1,
    AiortcViewer,
    Stack,
    _live,
    _relay_empty,
    seed_viewing_record,
    stack,
)
from tests.helpers.telemetry import event_payload, publish_all
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess

SINCE, UNTIL = f"{RECORD_DAY}T14:00:00Z", f"{RECORD_DAY}T16:00:00Z"


@pytest.fixture
def s(pg: Database, mosquitto: MosquittoProcess) -> Iterator[Stack]:
    with stack(pg, mosquitto) as running:
        with pg.connect() as conn:
            add_user(conn, username="audit-west", password=PASSWORD, role=Role.AUDITOR, areas=["Westminster"])
            seed_viewing_record(conn)
        yield running


def _listed(s: Stack, user: str, **query: str) -> set[str]:
    """The sessions listed (a refusal as "refused:<viewer>")."""
    with s.http(user) as http:
        response = http.get("/api/v1/live-view/sessions", params={"limit": "1000", **query})
    assert response.status_code == 200, response.text
    return {r["session_id"] or f"refused:{r['viewer']}" for r in response.json()}


def test_the_record_is_filtered_by_unit_viewer_window_and_basis(s: Stack) -> None:
    """A window holds the sessions that overlap it (begun before its end, not ended before its
    start, or still open), refusals too; the basis, the viewer and the unit narrow it."""
    window = {"device_id": WE1, "since": SINCE, "until": UNTIL}
    assert _listed(s, "audit", **window) == {"s-before-overlaps", "s-inside", "s-after-overlaps",
                                              "s-still-watching", "refused:op-west"}
    assert _listed(s, "audit", **window, basis="accepted_request") == {"s-inside", "s-after-overlaps",
                                                                        "s-still-watching"}
    assert _listed(s, "audit", **window, basis="officer_request") == {"s-before-overlaps"}
    assert _listed(s, "audit", viewer="op-west") == {"s-inside", "refused:op-west"}
    assert _listed(s, "audit", basis="policy_recording") == {"s-firearms"}
    assert _listed(s, "audit", since=f"{RECORD_DAY}T16:20:00Z") == {"s-after-overlaps", "s-still-watching",
                                                             "s-starts-at-until"}
    with s.http("audit") as http:
        (record,) = http.get("/api/v1/live-view/sessions", params={"device_id": "lv-we-afo"}).json()
        assert record["basis"] == "policy_recording" and record["borough"] == "Westminster"
        assert record["callsign"] == "WETRJ9" and record["reason"] == "reason of s-firearms"
        # Bad windows are refused with a reason, not answered with nothing.
        for bad in ({"since": UNTIL, "until": SINCE}, {"since": "2026-12-01T14:00:00"}, {"basis": "friendly"}):
            refused = http.get("/api/v1/live-view/sessions", params=bad)
            assert refused.status_code == 422 and "error" in refused.json(), bad


def test_an_area_limited_auditor_never_sees_other_areas_sessions(s: Stack) -> None:
    """Camden's session is in the whole record, and never in a Westminster auditor's list or
    CSV, whatever they filter on (even Camden's unit by name)."""
    assert "s-camden" in _listed(s, "audit")
    assert "s-camden" not in _listed(s, "audit-west")
    assert _listed(s, "audit-west", device_id="lv-ca-1") == set()
    with s.http("audit-west") as http:
        for query in ({}, {"device_id": "lv-ca-1"}, {"viewer": "op-all", "since": SINCE, "until": UNTIL}):
            text = http.get("/api/v1/live-view/sessions.csv", params=query).text
            assert "lv-ca-1" not in text and "s-camden" not in text, query


def _csv(s: Stack, user: str, **query: str) -> tuple[list[dict[str, str]], Any]:
    with s.http(user) as http:
        response = http.get("/api/v1/live-view/sessions.csv", params=query)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    return list(csv.DictReader(io.StringIO(response.text))), response


def test_the_csv_holds_exactly_the_units_sessions_in_the_window_and_is_audited(s: Stack) -> None:
    """"Who watched unit X between 14:00 and 16:00, and why": the CSV holds exactly those
    sessions (and the refusal), with the viewer, the reason, the basis and the times; a
    reason that looks like a formula is text; the export is in the audit log with its filters.
    Operators may not export the record."""
    rows, response = _csv(s, "audit", device_id=WE1, since=SINCE, until=UNTIL)
    assert {r["session_id"] or "refused" for r in rows} == {"s-before-overlaps", "s-inside", "s-after-overlaps",
                                                            "s-still-watching", "refused"}
    assert response.headers["x-row-count"] == "5" and {r["device_id"] for r in rows} == {WE1}
    by_id = {r["session_id"]: r for r in rows}
    inside = by_id["s-inside"]
    assert inside["reason"] == "'" + FORMULA  # the fleet export's neutralised cell
    assert (inside["viewer"], inside["basis"], inside["borough"]) == ("op-west", "accepted_request", "Westminster")
    assert (inside["started_at"], inside["ended_at"], inside["duration_s"]) == (
        f"{RECORD_DAY}T14:30:00Z", f"{RECORD_DAY}T15:00:00Z", "1800.0")
    assert by_id["s-still-watching"]["ended_at"] == "" and by_id["s-still-watching"]["duration_s"] == ""
    assert by_id[""]["refused"] == "no consent in force"
    with s.http("op-all") as http:
        assert http.get("/api/v1/live-view/sessions.csv").status_code == 403
    with s.db.connect() as conn:
        (entry,) = conn.execute("SELECT actor, device_id, details FROM audit_log WHERE action = 'export'").fetchall()
    assert entry[0] == "audit" and entry[1] == WE1
    assert entry[2]["report"] == "viewings.csv" and entry[2]["rows"] == 5
    assert entry[2]["since"].startswith(f"{RECORD_DAY}T14:00:00")
    assert entry[2]["until"].startswith(f"{RECORD_DAY}T16:00:00")


def test_an_officers_report_holds_only_the_viewings_of_the_camera_while_they_wore_it(s: Stack) -> None:
    """Who watched me, as a report an officer asks an auditor for: the record keeps the
    registry's officer as each viewing began. The attack: the unit changes hands, and the new
    wearer's report must not hold what was watched while the previous officer wore it (nor
    theirs the newcomer's); the name is matched exactly, never as a pattern."""
    first = SIM_UNIT.officer
    assert first
    uplink = VideoUplink(api_url=s.base, secrets=s.secrets).open()
    try:
        publish_all(s.mqtt_url, [(topic_for(WE1, Channel.EVENTS), event_payload(21, "watch_me"))])
        wait_for(lambda: s.rows("SELECT 1 FROM live_view_consents WHERE ended_at IS NULL"), what="consent")
        uplink.start(WE1)
        wait_for(lambda: _live(s, WE1), timeout=20, what="the stream")
        viewer = AiortcViewer(s.base, s.token("op-all"), WE1, "watching the first wearer")
        try:
            assert viewer.open() == 201, viewer.error
            assert viewer.leave() == 200
        finally:
            viewer.close()
    finally:
        uplink.close()
    wait_for(lambda: _relay_empty(s), timeout=15, what="the stream's end")
    with s.http("admin") as admin:  # the unit changes hands
        moved = admin.put(f"/api/v1/devices/{WE1}", json={"device_id": WE1, "callsign": SIM_UNIT.callsign,
                                                          "officer": "PC Newcomer", "borough": "Westminster",
                                                          "role": "response"})
        assert moved.status_code == 200, moved.text
    refused = AiortcViewer(s.base, s.token("op-west"), WE1, "watching the newcomer")
    try:
        assert refused.open() == 409  # no consent: refused, and recorded
    finally:
        refused.close()
    with s.http("audit") as http:
        theirs = http.get("/api/v1/live-view/sessions", params={"officer": first}).json()
        newcomers = http.get("/api/v1/live-view/sessions", params={"officer": "PC Newcomer"}).json()
        for pattern in ("%", "PC%", "_" * len(first)):
            assert http.get("/api/v1/live-view/sessions", params={"officer": pattern}).json() == [], pattern
        csv_rows = list(csv.DictReader(io.StringIO(http.get("/api/v1/live-view/sessions.csv",
                                                            params={"officer": "PC Newcomer"}).text)))
    assert [(r["viewer"], r["reason"], r["officer"]) for r in theirs] == [("op-all", "watching the first wearer",
                                                                           first)]
    assert [(r["viewer"], r["reason"], r["refused"] is not None) for r in newcomers] == [
        ("op-west", "watching the newcomer", True)]
    assert [(r["viewer"], r["officer"]) for r in csv_rows] == [("op-west", "PC Newcomer")]
