"""The WHEP session caps' bookkeeping (services/viewer_slots.py), pure."""

from __future__ import annotations

from services.viewer_slots import SlotRefused, ViewerCaps, ViewerSlots


def test_caps_per_user_camera_and_process_and_slots_come_back() -> None:
    """The user's cap is checked first, then the camera's, then the process's; a slot given
    back (twice, harmlessly) frees each count it held."""
    slots = ViewerSlots(ViewerCaps(per_user=2, per_camera=3, per_process=4))
    a1, a2 = slots.take(username="a", device_id="cam-1"), slots.take(username="a", device_id="cam-1")
    assert isinstance(a1, int) and isinstance(a2, int)
    refused = slots.take(username="a", device_id="cam-2")
    assert isinstance(refused, SlotRefused) and refused.kind == "user"
    assert isinstance(slots.take(username="b", device_id="cam-1"), int)
    refused = slots.take(username="c", device_id="cam-1")
    assert isinstance(refused, SlotRefused) and refused.kind == "camera"
    assert isinstance(slots.take(username="c", device_id="cam-2"), int)
    refused = slots.take(username="d", device_id="cam-3")
    assert isinstance(refused, SlotRefused) and refused.kind == "process" and len(slots) == 4
    slots.give_back(a1)
    slots.give_back(a1)
    assert len(slots) == 3
    assert isinstance(slots.take(username="a", device_id="cam-1"), int)
