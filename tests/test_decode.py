"""The decoder against recorded payloads: every good sample decodes, every bad one is
rejected with the reason its file name gives, and nothing a device sends makes it raise."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.contract import Channel, topic_for
from core.reports import EventReport, TelemetryReport
from telemetry.decode import Decoded, PayloadLimits, Reason, Rejection, StatusChange, decode, parse_topic

SAMPLES = Path(__file__).parent / "samples"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
LIMITS = PayloadLimits(max_payload_bytes=4096, max_future_skew=timedelta(minutes=5), max_age=timedelta(days=30))


def _channel(path: Path) -> Channel:
    return Channel(path.name.split(".")[-2])


def _decode(path: Path, device_id: str = "bwv-00001") -> Decoded | StatusChange | Rejection:
    return decode(topic_for(device_id, _channel(path)), path.read_bytes(), now=NOW, limits=LIMITS)


@pytest.mark.parametrize("path", sorted((SAMPLES / "good").iterdir()), ids=lambda p: p.name)
def test_good_sample_decodes(path: Path) -> None:
    """A recorded good payload decodes to the model of its channel, timestamps in UTC."""
    result = _decode(path)
    assert not isinstance(result, Rejection), result
    if _channel(path) is Channel.STATUS:
        assert isinstance(result, StatusChange)
        assert result.online is (path.read_bytes() == b"online")
    else:
        assert isinstance(result, Decoded)
        assert result.device_id == "bwv-00001"
        expected = TelemetryReport if _channel(path) is Channel.TELEMETRY else EventReport
        assert isinstance(result.message, expected)
        assert result.message.ts.utcoffset() is not None


@pytest.mark.parametrize("path", sorted((SAMPLES / "bad").iterdir()), ids=lambda p: p.name)
def test_bad_sample_rejected_with_its_reason(path: Path) -> None:
    """A recorded bad payload is rejected, for the reason named before ``--`` in its file name."""
    result = _decode(path)
    assert isinstance(result, Rejection), result
    assert result.reason == Reason(path.name.split("--")[0])
    assert result.device_id == "bwv-00001"
    assert result.detail


@pytest.mark.parametrize("topic", [
    "watchfloor/v1/devices/bad id/telemetry",
    "watchfloor/v1/devices/" + "x" * 65 + "/telemetry",
    "watchfloor/v1/devices/bwv-1/unknown",
    "watchfloor/v1/devices/bwv-1/extra/telemetry",
    "watchfloor/v2/devices/bwv-1/telemetry",
    "watchfloor/v1/devices//telemetry",
    "watchfloor/v1/devices/bwv.1/telemetry",
])
def test_topic_that_the_contract_does_not_allow(topic: str) -> None:
    """The device id comes from the topic and must match [A-Za-z0-9_-]{1,64}."""
    payload = (SAMPLES / "good" / "foot-patrol.telemetry.json").read_bytes()
    result = decode(topic, payload, now=NOW, limits=LIMITS)
    assert isinstance(result, Rejection)
    assert result.reason is Reason.BAD_TOPIC


def test_commands_are_not_ingested() -> None:
    """Commands flow to devices; a message on that channel is not stored as telemetry."""
    result = decode(topic_for("bwv-1", Channel.COMMANDS), b"{}", now=NOW, limits=LIMITS)
    assert isinstance(result, Rejection) and result.reason is Reason.BAD_TOPIC


def test_parse_topic() -> None:
    assert parse_topic("watchfloor/v1/devices/Unit_7-a/events") == ("Unit_7-a", Channel.EVENTS)
    assert parse_topic("watchfloor/v1/devices/" + "a" * 64 + "/status") == ("a" * 64, Channel.STATUS)


def test_timezone_is_normalised_by_the_store_not_lost() -> None:
    """An offset timestamp is the same instant as its UTC form."""
    result = _decode(SAMPLES / "good" / "recording-live-offset.telemetry.json")
    assert isinstance(result, Decoded)
    assert result.message.ts == datetime(2026, 12, 1, 11, 59, 59, tzinfo=timezone.utc)


@settings(max_examples=400, deadline=None)
@given(topic=st.one_of(st.text(max_size=120),
                       st.sampled_from([topic_for("bwv-1", c) for c in Channel])),
       payload=st.binary(max_size=600))
def test_decoder_never_raises_on_arbitrary_input(topic: str, payload: bytes) -> None:
    """Whatever arrives, decode returns a result; it never raises."""
    result = decode(topic, payload, now=NOW, limits=LIMITS)
    assert isinstance(result, (Decoded, StatusChange, Rejection))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(body=st.fixed_dictionaries({
    "seq": st.one_of(st.integers(-(2**63), 2**64 - 1), json_values),
    "ts": st.one_of(st.just("2026-12-01T11:59:00Z"), json_values),
    "battery": st.one_of(st.fixed_dictionaries({"pct": json_values, "charging": json_values}), json_values),
    "gps": json_values,
    "recording": st.one_of(st.sampled_from(["off", "buffering", "recording"]), json_values),
}))
def test_structured_garbage_is_rejected_or_valid(body: dict[str, object]) -> None:
    """Near-valid JSON either decodes to a model whose values are in range or is rejected."""
    import orjson

    payload = orjson.dumps(body)
    result = decode(topic_for("bwv-1", Channel.TELEMETRY), payload, now=NOW, limits=LIMITS)
    if isinstance(result, Decoded):
        assert isinstance(result.message, TelemetryReport)
        assert 0 <= result.message.battery.pct <= 100
    else:
        assert isinstance(result, Rejection)
