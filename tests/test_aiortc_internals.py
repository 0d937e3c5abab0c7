"""The start-up check of the internals the relay touches (streaming/aiortc_internals.py)."""

from __future__ import annotations

import pytest

from streaming import aiortc_internals
from streaming.aiortc_internals import AiortcChanged, check_aiortc


def test_the_pinned_dependencies_pass_the_check() -> None:
    """aiortc 1.16 and this Python's asyncio have every internal the hooks use."""
    check_aiortc()


def test_a_missing_selector_datagram_transport_stops_the_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    """An asyncio without the selector datagram transport whose socket the writer sends on
    fails the check, instead of the first frame."""
    monkeypatch.setattr(aiortc_internals, "_SELECTOR_DATAGRAM_TRANSPORT", None)
    with pytest.raises(AiortcChanged, match="_SelectorDatagramTransport"):
        check_aiortc()
