"""Authorisation holds for the whole viewing, and every API process converges (issue 14), on
real parts: PostgreSQL, Mosquitto, the API with its relay, a camera publishing over WHIP
(simulator.video) and aiortc viewers over WHEP.

* a camera retired through the API, or given a new secret (the command line, unannounced),
  ends its stream and its consent, and each viewing records why (device_retired,
  device_reprovisioned);
* a viewer whose user is disabled is cut off by the sweeper (authorisation_ended);
* a viewing ends at the force's maximum length (max_length);
* a consent ended in the database by another process whose announcement never came still
  closes the stream here (the sweeper reconciles), and the viewing says consent_ended.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services import viewings
from services.registry import provision_device
from simulator.video import VideoUplink
from tests.helpers.db import Database
from tests.helpers.live_view import (
    DEVICES,
    WE1,
    AiortcViewer,
    Stack,
    _ended,
    _relay_empty,
    _watched_stream,
    stack,
)
from tests.helpers.waiting import wait_for
from watchfloor.mosquitto import MosquittoProcess

# The sweeper runs every 2 s: each end below must come within a few sweeps.
_SWEEPS_S = 15


@pytest.fixture
def s(pg: Database, mosquitto: MosquittoProcess) -> Iterator[Stack]:
    with stack(pg, mosquitto, live_view_idle_stop_s=30, live_view_request_timeout_s=20) as running:
        yield running


def _watching(s: Stack, uplink: VideoUplink, user: str, seq: int) -> AiortcViewer:
    """``user`` watches WE1, streaming under the officer's watch_me, and sees frames."""
    _watched_stream(s, uplink, seq)
    viewer = AiortcViewer(s.base, s.token(user), WE1, "officer asked to be watched")
    assert viewer.open() == 201, viewer.error
    wait_for(lambda: viewer.frames >= 1, timeout=20, what="frames")
    return viewer


def _stream_closed(s: Stack, uplink: VideoUplink) -> bool:
    return _relay_empty(s) and not uplink.live


def test_retiring_a_device_ends_its_stream_its_viewings_and_its_consent(s: Stack) -> None:
    """An admin retires the camera over HTTP while it is watched: the stream closes, the
    viewing records device_retired, the consent ends device_retired (audited), and the camera
    cannot dial in again."""
    uplink = VideoUplink(api_url=s.base, secrets=s.secrets).open()
    try:
        viewer = _watching(s, uplink, "op-all", 21)
        try:
            with s.http("admin") as http:
                assert http.post(f"/api/v1/devices/{WE1}/retire").status_code == 200
            reason = wait_for(lambda: _ended(s, viewer), timeout=_SWEEPS_S, what="the viewing's end")
            assert reason == "device_retired"
        finally:
            viewer.close()
        wait_for(lambda: _stream_closed(s, uplink), timeout=_SWEEPS_S, what="the stream closed")
    finally:
        uplink.close()
    assert s.rows("SELECT end_reason FROM live_view_consents") == [("device_retired",)]
    (ended,) = [a for a in s.audit("live_view_ended")]
    assert ended[0] == "admin" and ended[2]["reason"] == "device_retired"
    (record,) = [a for a in s.audit("viewing_ended")]
    assert record[2]["reason"] == "device_retired"  # the stream's reason too: said once


def test_a_new_secret_ends_the_stream_even_unannounced(s: Stack) -> None:
    """The camera is provisioned again (as `watchfloor devices provision` does, here without
    a broker to announce it): its consent ends in that transaction, and the sweeper closes the
    stream, its viewing recorded device_reprovisioned."""
    uplink = VideoUplink(api_url=s.base, secrets=s.secrets).open()
    try:
        viewer = _watching(s, uplink, "op-all", 22)
        try:
            with s.db.connect() as conn:
                provision_device(conn, record=next(d for d in DEVICES if d.device_id == WE1))
                conn.commit()
            reason = wait_for(lambda: _ended(s, viewer), timeout=_SWEEPS_S, what="the viewing's end")
            assert reason == "device_reprovisioned"
        finally:
            viewer.close()
        wait_for(lambda: _stream_closed(s, uplink), timeout=_SWEEPS_S, what="the stream closed")
    finally:
        uplink.close()
    assert s.rows("SELECT end_reason FROM live_view_consents") == [("device_reprovisioned",)]


def test_a_viewer_whose_user_is_disabled_is_cut_off(s: Stack) -> None:
    """op-west watches; an admin disables op-west through the API. Within a few sweeps the
    viewing ends, recorded authorisation_ended; the other viewer (op-all) watches on."""
    uplink = VideoUplink(api_url=s.base, secrets=s.secrets).open()
    try:
        stays = _watching(s, uplink, "op-all", 23)
        cut = AiortcViewer(s.base, s.token("op-west"), WE1, "officer asked to be watched")
        try:
            assert cut.open() == 201, cut.error
            wait_for(lambda: cut.frames >= 1, timeout=20, what="frames at op-west")
            with s.http("admin") as http:
                assert http.post("/api/v1/users/op-west/disable").status_code == 200
            reason = wait_for(lambda: _ended(s, cut), timeout=_SWEEPS_S, what="op-west's viewing's end")
            assert reason == "authorisation_ended"
            # The stream and the other viewing go on: op-all still gets frames afterwards.
            seen = stays.frames
            wait_for(lambda: stays.frames > seen + 10, timeout=20, what="frames at op-all after the cut")
            assert _ended(s, stays) is None
        finally:
            cut.close()
            stays.close()
    finally:
        uplink.close()
    ended = {a[0]: a[2]["reason"] for a in s.audit("viewing_ended")}
    assert ended["op-west"] == "authorisation_ended"


def test_a_consent_ended_elsewhere_unannounced_closes_the_stream(s: Stack) -> None:
    """The announcement path is cut: another process ends the consent in the database and
    never publishes (its broker was away). The sweeper reconciles: the stream closes, and the
    viewing records consent_ended, with the consent's own reason as the stream's."""
    uplink = VideoUplink(api_url=s.base, secrets=s.secrets).open()
    try:
        viewer = _watching(s, uplink, "op-all", 24)
        try:
            with s.db.connect() as conn:
                assert viewings.end_consent(conn, device_id=WE1, reason="stopped_by_control_room") is not None
                conn.commit()
            reason = wait_for(lambda: _ended(s, viewer), timeout=_SWEEPS_S, what="the viewing's end")
            assert reason == "consent_ended"
        finally:
            viewer.close()
        wait_for(lambda: _stream_closed(s, uplink), timeout=_SWEEPS_S, what="the stream closed")
    finally:
        uplink.close()
    (record,) = [a for a in s.audit("viewing_ended")]
    assert record[2]["reason"] == "consent_ended" and record[2]["stream_end_reason"] == "stopped_by_control_room"


def test_a_viewing_ends_at_the_maximum_length(pg: Database, mosquitto: MosquittoProcess) -> None:
    """With WATCHFLOOR_LIVE_VIEW_MAX_VIEWING_S at 4 s, a viewing ends max_length; the viewer
    may ask again (a new WHEP session, with its reason) and watch on."""
    with stack(pg, mosquitto, live_view_idle_stop_s=30, live_view_max_viewing_s=4) as short:
        uplink = VideoUplink(api_url=short.base, secrets=short.secrets).open()
        try:
            viewer = _watching(short, uplink, "op-all", 25)
            try:
                reason = wait_for(lambda: _ended(short, viewer), timeout=_SWEEPS_S, what="the viewing's end")
                assert reason == "max_length"
            finally:
                viewer.close()
            again = AiortcViewer(short.base, short.token("op-all"), WE1, "still needed: renewed")
            try:
                assert again.open() == 201, again.error
                wait_for(lambda: again.frames >= 1, timeout=20, what="frames after renewing")
            finally:
                again.close()
        finally:
            uplink.close()
    ended = [a[2]["reason"] for a in short.audit("viewing_ended")]
    assert ended[0] == "max_length"
