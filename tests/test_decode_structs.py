"""The hot decoder (msgspec into :mod:`core.reports`) against the contract's pydantic models.

decode() validates with msgspec and asks pydantic only about what msgspec refuses, so the
contract's behaviour must stay pydantic's exactly. Checked three ways: a table of lax
spellings a device might send, each accepted or rejected as main did before msgspec
(recorded at 6be523f9048d72f0a9c12012d70829986e21d41a); generated and mutated payloads, for
which decode() and the pydantic-only decoder agree on the outcome, the reason and the
values; and the hot path on its own: whatever msgspec accepts, pydantic accepts with the
same values.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from core.contract import Channel, Event, Telemetry, topic_for
from core.reports import EventReport, TelemetryReport
from telemetry.decode import Decoded, PayloadLimits, Rejection, StatusChange, _reason_for, decode

SAMPLES = Path(__file__).parent / "samples"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
LIMITS = PayloadLimits(max_payload_bytes=4096, max_future_skew=timedelta(minutes=5), max_age=timedelta(days=30))
MODELS: dict[Channel, type[Telemetry] | type[Event]] = {Channel.TELEMETRY: Telemetry, Channel.EVENTS: Event}
REPORTS: dict[Channel, type[TelemetryReport] | type[EventReport]] = {
    Channel.TELEMETRY: TelemetryReport, Channel.EVENTS: EventReport}


def _canonical(value: Any) -> Any:
    """Values in a form that tells apart what == does not: -0.0 from 0.0, offsets, types."""
    if isinstance(value, BaseModel):
        return _canonical(value.model_dump())
    if isinstance(value, msgspec.Struct):
        return _canonical(msgspec.structs.asdict(value))
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else value.hex())
    if isinstance(value, datetime):
        return ("datetime", value.isoformat(), value.utcoffset())
    return (type(value).__name__, value)


def _by_pydantic(channel: Channel, payload: bytes) -> str | Any:
    """What decode() returned before msgspec: the rejection's reason, or the values."""
    if b"\\u0000" in payload:
        return "wrong_type"
    try:
        model = MODELS[channel].model_validate_json(payload)
    except ValidationError as error:
        return _reason_for(error)[0].value
    ts = model.ts.astimezone(timezone.utc)
    if ts > NOW + LIMITS.max_future_skew:
        return "future_timestamp"
    if ts < NOW - LIMITS.max_age:
        return "too_old"
    return _canonical(model)


def _by_decode(channel: Channel, payload: bytes) -> str | Any:
    result = decode(topic_for("bwv-1", channel), payload, now=NOW, limits=LIMITS)
    if isinstance(result, Rejection):
        return result.reason.value
    assert isinstance(result, Decoded), result
    assert isinstance(result.message, REPORTS[channel])
    return _canonical(result.message)


def _dumps(body: Any) -> bytes:
    # json, not orjson: it writes integers past 64 bits, and Infinity, as a device might
    return json.dumps(body, ensure_ascii=False).encode()


def _telemetry(**changes: Any) -> bytes:
    body: dict[str, Any] = {"seq": 7, "ts": "2026-12-01T11:59:00Z", "battery": {"pct": 80, "charging": False},
                            "gps": None, "recording": "off"}
    for key, value in changes.items():
        if key.startswith("gps__"):
            body["gps"] = {"lat": 51.5, "lon": -0.1, "accuracy_m": 5, key.removeprefix("gps__"): value}
        else:
            body[key] = value
    return _dumps(body)


def _event(**changes: Any) -> bytes:
    return _dumps({"seq": 7, "ts": "2026-12-01T11:59:00Z", "type": "docked", **changes})


def _raw(fields: str) -> bytes:
    return ('{"seq":7,"ts":"2026-12-01T11:59:00Z","battery":{"pct":80,"charging":false},"gps":null,'
            '"recording":"off"' + fields + "}").encode()


T, E = Channel.TELEMETRY, Channel.EVENTS
# (what, channel, payload, outcome on main before msgspec: "accepted" or the rejection's reason)
LAX_INPUT: list[tuple[str, Channel, bytes, str]] = [
    ("seq as a numeric string", T, _telemetry(seq="12"), "wrong_type"),
    ("seq as a whole float", T, _telemetry(seq=12.0), "wrong_type"),
    ("seq as a boolean", T, _telemetry(seq=True), "wrong_type"),
    ("seq past int64", T, _telemetry(seq=2**63), "out_of_range"),
    ("pct as a numeric string", T, _telemetry(battery={"pct": "50", "charging": False}), "wrong_type"),
    ("pct as false", T, _telemetry(battery={"pct": False, "charging": False}), "wrong_type"),
    ("pct as null", T, _telemetry(battery={"pct": None, "charging": False}), "wrong_type"),
    ("charging as 1", T, _telemetry(battery={"pct": 50, "charging": 1}), "wrong_type"),
    ("charging as a string", T, _telemetry(battery={"pct": 50, "charging": "true"}), "wrong_type"),
    ("recording in capitals", T, _telemetry(recording="OFF"), "wrong_type"),
    ("recording padded", T, _telemetry(recording=" off"), "wrong_type"),
    ("recording as a number", T, _telemetry(recording=0), "wrong_type"),
    ("ts as epoch seconds", T, _telemetry(ts=1764590340), "wrong_type"),
    ("ts as epoch seconds in a string", T, _telemetry(ts="1764590340"), "too_old"),  # pydantic reads it
    ("ts without an offset", T, _telemetry(ts="2026-12-01T11:59:00"), "wrong_type"),
    ("ts a date only", T, _telemetry(ts="2026-12-01"), "wrong_type"),
    ("ts without seconds", T, _telemetry(ts="2026-12-01T11:59Z"), "accepted"),
    ("ts with a space", T, _telemetry(ts="2026-12-01 11:59:00Z"), "accepted"),
    ("ts in lower case", T, _telemetry(ts="2026-12-01t11:59:00z"), "accepted"),
    ("ts with a decimal comma", T, _telemetry(ts="2026-12-01T11:59:00,5Z"), "accepted"),
    ("ts in nanoseconds", T, _telemetry(ts="2026-12-01T11:59:00.123456789Z"), "accepted"),
    ("ts in 100 ns, truncated not rounded", T, _telemetry(ts="2026-12-01T11:59:00.9999999Z"), "accepted"),
    ("ts with a compact offset", T, _telemetry(ts="2026-12-01T12:59:00+0100"), "accepted"),
    ("ts with an hour-only offset", T, _telemetry(ts="2026-12-01T12:59:00+01"), "wrong_type"),
    ("ts offset of a day", T, _telemetry(ts="2026-12-01T11:59:00+24:00"), "wrong_type"),
    ("ts hour 24", T, _telemetry(ts="2026-12-01T24:00:00Z"), "wrong_type"),
    ("ts 30 February", T, _telemetry(ts="2026-02-30T11:59:00Z"), "wrong_type"),
    ("gps empty", T, _telemetry(gps={}), "missing_field"),
    ("gps as a string", T, _telemetry(gps="none"), "wrong_type"),
    ("lat as a string", T, _telemetry(gps__lat="51.5"), "wrong_type"),
    ("heading 360", T, _telemetry(gps__heading_deg=360), "out_of_range"),
    ("docked as 0", T, _telemetry(docked=0), "wrong_type"),
    ("firmware as a number", T, _telemetry(firmware=4.2), "wrong_type"),
    ("firmware empty", T, _telemetry(firmware=""), "wrong_type"),
    ("firmware of 32 emoji", T, _telemetry(firmware="\U0001f600" * 32), "accepted"),
    ("firmware of 33 characters", T, _telemetry(firmware="x" * 33), "wrong_type"),
    ("viewers as a whole float", T, _telemetry(viewers=1.0), "wrong_type"),
    ("viewers as a string", T, _telemetry(viewers="3"), "wrong_type"),
    ("live as null", T, _telemetry(live=None), "wrong_type"),
    ("storage as a percent string", T, _telemetry(storage_pct="30%"), "wrong_type"),
    ("a key in another case", T, _telemetry(Seq=7), "unknown_field"),
    ("pct 1e400", T, _raw("").replace(b'"pct":80', b'"pct":1e400'), "out_of_range"),
    ("pct NaN", T, _raw("").replace(b'"pct":80', b'"pct":NaN'), "out_of_range"),
    ("pct Infinity", T, _raw("").replace(b'"pct":80', b'"pct":Infinity'), "out_of_range"),
    ("a key twice, the last one counts", T, _raw(',"seq":8'), "accepted"),
    ("a byte-order mark", T, b"\xef\xbb\xbf" + _telemetry(), "malformed_json"),
    ("a trailing comma", T, _raw(","), "malformed_json"),
    ("a leading zero", T, _raw("").replace(b'"seq":7', b'"seq":07'), "malformed_json"),
    ("a top-level array", T, b"[" + _telemetry() + b"]", "wrong_type"),
    ("a lone surrogate", T, _raw(',"firmware":"\\ud800"'), "malformed_json"),
    ("event type in capitals", E, _event(type="Docked"), "wrong_type"),
    ("event details as a list", E, _event(details=[]), "wrong_type"),
    ("event details of 17 keys", E, _event(details={str(i): i for i in range(17)}), "out_of_range"),
    ("event details holding 1e400", E, _event().replace(b"}", b',"details":{"x":1e400}}'), "accepted"),
    ("event details holding a huge integer", E, _event(details={"x": 12345678901234567890123456789}), "accepted"),
]


@pytest.mark.parametrize(("channel", "payload", "outcome"), [case[1:] for case in LAX_INPUT],
                         ids=[case[0] for case in LAX_INPUT])
def test_lax_input_is_decided_as_before(channel: Channel, payload: bytes, outcome: str) -> None:
    """Each lax spelling is accepted or rejected (for the same reason) as before msgspec,
    and what is accepted has pydantic's values (a timestamp's nanoseconds truncated)."""
    result = _by_decode(channel, payload)
    assert (result if isinstance(result, str) else "accepted") == outcome
    assert result == _by_pydantic(channel, payload)


@pytest.mark.parametrize("path", sorted([*(SAMPLES / "good").iterdir(), *(SAMPLES / "bad").iterdir()]),
                         ids=lambda p: p.name)
def test_recorded_samples_agree_with_pydantic(path: Path) -> None:
    """Every recorded sample: the same outcome and values as the pydantic-only decoder."""
    channel = Channel(path.name.split(".")[-2])
    if channel is Channel.STATUS:
        pytest.skip("status payloads are two words, not JSON")
    payload = path.read_bytes()
    if len(payload) > LIMITS.max_payload_bytes:
        pytest.skip("refused by size before any validation")
    assert _by_decode(channel, payload) == _by_pydantic(channel, payload)


_TELEMETRY_SAMPLE = orjson.loads((SAMPLES / "good" / "foot-patrol.telemetry.json").read_bytes())
_EVENT_SAMPLE = {"seq": 5, "ts": "2026-12-01T11:58:00Z", "type": "recording_started",
                 "details": {"trigger": "holster"}}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats(allow_nan=False)
    | st.floats(min_value=-200, max_value=400) | st.text(max_size=12)
    | st.sampled_from(["off", "recording", "buffering", "docked", "emergency", "", "1"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
timestamps = st.from_regex(
    # mostly within the 30 days the limits accept, so that values are compared, not only "too old"
    r"\A(2026-11|2026-1[0-3]|[0-9]{4}-[01][0-9])-[0-3][0-9][Tt ][0-2][0-9]:[0-6][0-9](:[0-6][0-9]([.,][0-9]{0,12})?)?"
    r"([Zz]|[+-][0-2][0-9](:?[0-5][0-9])?)?\Z")
near_now = st.datetimes(min_value=datetime(2026, 10, 1), max_value=datetime(2026, 12, 2),
                        timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=1)),
                                                   timezone(timedelta(hours=-5, minutes=-30))]))


@st.composite
def mutated(draw: st.DrawFn) -> tuple[Channel, bytes]:
    """A good payload with a few keys replaced, removed or added, at any depth."""
    channel = draw(st.sampled_from([Channel.TELEMETRY, Channel.EVENTS]))
    body = json.loads(json.dumps(_TELEMETRY_SAMPLE if channel is Channel.TELEMETRY else _EVENT_SAMPLE))
    body["ts"] = draw(st.one_of(
        timestamps,
        near_now.map(lambda d: d.isoformat(timespec=draw(st.sampled_from(["seconds", "milliseconds"])))),
        # past microseconds: "YYYY-MM-DDTHH:MM:SS.ffffff" is 26 characters, then more digits
        st.tuples(near_now, st.from_regex(r"\A[0-9]{0,6}\Z")).map(
            lambda p: (lambda iso: iso[:26] + p[1] + iso[26:])(p[0].isoformat(timespec="microseconds"))),
    ))
    for _ in range(draw(st.integers(0, 3))):
        target = body
        nested = [k for k, v in body.items() if isinstance(v, dict)]
        if nested and draw(st.booleans()):
            target = body[draw(st.sampled_from(nested))]
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        keys = sorted(target)
        if action == "add" or not keys:
            target[draw(st.text(max_size=10))] = draw(json_values)
        elif action == "remove":
            del target[draw(st.sampled_from(keys))]
        else:
            target[draw(st.sampled_from(keys))] = draw(json_values)
    payload = _dumps(body)
    if draw(st.integers(0, 9)) == 0:  # now and then break the JSON itself
        at = draw(st.integers(0, len(payload) - 1))
        payload = payload[:at] + draw(st.binary(min_size=0, max_size=2)) + payload[at + 1:]
    return channel, payload


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated())
def test_decode_agrees_with_pydantic_on_mutated_payloads(case: tuple[Channel, bytes]) -> None:
    """Generated payloads: decode() and the pydantic-only decoder agree on accept or reject,
    on the reason, and on every decoded value."""
    channel, payload = case
    assert _by_decode(channel, payload) == _by_pydantic(channel, payload)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated())
def test_what_msgspec_accepts_pydantic_accepts_alike(case: tuple[Channel, bytes]) -> None:
    """The hot path alone, without the referee: a payload msgspec validates into a struct is
    one the model accepts, with the same values (save sub-microsecond timestamps, which
    decode() leaves to pydantic)."""
    channel, payload = case
    try:
        report = msgspec.json.decode(payload, type=REPORTS[channel])
    except msgspec.MsgspecError:
        return
    text = str(json.loads(payload)["ts"])
    if any(len(part) > 6 and part[:7].isdigit() for part in text.replace(",", ".").split(".")[1:]):
        return
    assert _canonical(report) == _canonical(MODELS[channel].model_validate_json(payload))


def test_a_status_and_a_command_are_not_structs() -> None:
    """The two non-JSON channels are decided before either validator."""
    assert isinstance(decode(topic_for("bwv-1", Channel.STATUS), b"online", now=NOW, limits=LIMITS), StatusChange)
    result = decode(topic_for("bwv-1", Channel.COMMANDS), _telemetry(), now=NOW, limits=LIMITS)
    assert isinstance(result, Rejection) and result.reason.value == "bad_topic"
