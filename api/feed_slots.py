"""How many live feeds one API process holds open: per user, and before authentication.

A feed costs a socket, a task and a copy of every delta; without a cap, one user's script
(or anyone, before sending a token) could open feeds until the process runs out of file
descriptors or memory. Past a cap the socket is accepted and closed at once with a code the
client can act on: ``4429`` (too many feeds for this user; an application code, in the
4000-4999 range RFC 6455 leaves to applications, after HTTP's 429) or ``1013`` (try again
later: too many sockets waiting to authenticate), each with a reason.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["TOO_MANY_FEEDS", "TRY_AGAIN_LATER", "FeedSlots", "Refused"]

TOO_MANY_FEEDS = 4429
TRY_AGAIN_LATER = 1013


class Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class FeedSlots:
    """Counts open feeds. Used on the event loop only, so no lock. Each ``enter_*`` that
    returns is matched by its ``leave_*``; one that raises :class:`Refused` took nothing."""

    def __init__(self, *, per_user: int, unauthenticated: int) -> None:
        self.per_user, self.unauthenticated = per_user, unauthenticated
        self._users: Counter[str] = Counter()
        self._waiting = 0

    def enter_waiting(self) -> None:
        """A socket that has not authenticated yet."""
        if self._waiting >= self.unauthenticated:
            raise Refused(TRY_AGAIN_LATER, "too many connections waiting to authenticate; retry later")
        self._waiting += 1

    def leave_waiting(self) -> None:
        self._waiting -= 1

    def enter_feed(self, username: str) -> None:
        """One of ``username``'s feeds."""
        if self._users[username] >= self.per_user:
            raise Refused(TOO_MANY_FEEDS, f"too many live feeds for {username} ({self.per_user}); close one first")
        self._users[username] += 1

    def leave_feed(self, username: str) -> None:
        self._users[username] -= 1
        if self._users[username] <= 0:
            del self._users[username]
