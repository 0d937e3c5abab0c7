"""How many WHEP sessions one API process holds: per user, per camera, in all.

Each viewing session costs the process a peer connection (two sockets, DTLS, a sender
task) from the moment its offer is answered, connected or not; without a bound, one
user posting the same offer in a loop exhausts the process's file descriptors. A slot
is taken before the relay answers (so that concurrent offers cannot all pass the check
at once) and given back when the session ends or its set-up fails. Pure bookkeeping:
the caller (:class:`services.live_view.LiveView`) turns a refusal into an HTTP error.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Literal

__all__ = ["SlotRefused", "ViewerCaps", "ViewerSlots"]


@dataclass(frozen=True)
class ViewerCaps:
    per_user: int
    per_camera: int
    per_process: int


@dataclass(frozen=True)
class SlotRefused:
    """Why no slot: ``kind`` says which cap, ``message`` says it to the caller."""

    kind: Literal["user", "camera", "process"]
    message: str


class ViewerSlots:
    """The slots held in this process (see the module's docstring). Not thread-safe: the
    event loop owns it."""

    def __init__(self, caps: ViewerCaps) -> None:
        self._caps = caps
        self._held: dict[int, tuple[str, str]] = {}  # slot -> (username, device id)
        self._users: Counter[str] = Counter()
        self._cameras: Counter[str] = Counter()
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._held)

    def take(self, *, username: str, device_id: str) -> int | SlotRefused:
        """A slot for ``username`` watching ``device_id``, or why not."""
        caps = self._caps
        if self._users[username] >= caps.per_user:
            return SlotRefused("user", f"you have {caps.per_user} viewing sessions open, the most allowed: "
                                       "end one (DELETE its Location) first")
        if self._cameras[device_id] >= caps.per_camera:
            return SlotRefused("camera", f"{device_id} has {caps.per_camera} viewers, the most allowed")
        if len(self._held) >= caps.per_process:
            return SlotRefused("process", f"this server holds {caps.per_process} viewing sessions, the most "
                                          "allowed: try again later")
        slot = next(self._ids)
        self._held[slot] = (username, device_id)
        self._users[username] += 1
        self._cameras[device_id] += 1
        return slot

    def give_back(self, slot: int) -> None:
        """Release ``slot``; releasing one twice (or an unknown one) does nothing."""
        held = self._held.pop(slot, None)
        if held is None:
            return
        username, device_id = held
        self._users[username] -= 1
        self._cameras[device_id] -= 1
        if not self._users[username]:
            del self._users[username]
        if not self._cameras[device_id]:
            del self._cameras[device_id]
