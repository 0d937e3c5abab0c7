"""Which tokens are still valid: every local user's token version, held in memory.

A local token carries the version of its user at issue (``ver``); sign-out, disabling and a
new role or areas bump the version in the database, which ends every earlier token. Each
API process checks every request against this cache, not the database: it is loaded at
start, re-loaded when an account change is announced on the broker (``ACCOUNTS_TOPIC``)
and every 30 s in any case (a change made while the broker was away).

Versions only grow, so a token older than the cached version is revoked for certain. A
token *newer* than the cache, or of a user the cache does not know, means the cache is
behind (a user added or changed since the last load): that one user is read from the
database, and remembered. Only a validly signed token gets that far, so the database is
asked once per change, not once per request.

An OIDC provider's token has no version (None): it ends at its own expiry, which the
provider sets; Watchfloor cannot revoke it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import psycopg

from services.accounts import Principal, token_version, token_versions
from services.errors import NotAuthenticated

__all__ = ["TokenVersions"]

Connect = Callable[[], AbstractContextManager[psycopg.Connection]]

#: A user the database does not have (deleted, or never was): remembered until the next load, so
#: that a still validly signed token of theirs costs one read, not one per request.
_GONE = (-1, False)


class TokenVersions:
    """The in-memory token versions of one API process. Thread-safe: requests check from
    the thread pool while the event loop re-loads."""

    def __init__(self, *, connect: Connect) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._versions: dict[str, tuple[int, bool]] = {}  # (version, enabled) per user

    def load(self) -> None:
        """Re-read every user's version (blocking: call from a thread).

        A user read on their own while this load was reading (:meth:`refresh`, or a token
        newer than the cache) may be newer than the load's reading: of the two, the higher
        version is kept, so a load that read just before a sign-out never brings a revoked
        token back. A user the load does not list is gone (or new: read again on demand)."""
        with self._connect() as conn:
            versions = token_versions(conn)
        with self._lock:
            for username, entry in versions.items():
                cached = self._versions.get(username)
                if cached is not None and cached[0] > entry[0]:
                    versions[username] = cached
            self._versions = versions

    def refresh(self, conn: psycopg.Connection, *, username: str) -> None:
        """Re-read one user now: called by the request that changed them, after its commit,
        so this process ends their tokens at once, not at the announcement's re-load."""
        self._remember(username, token_version(conn, username=username))

    def _remember(self, username: str, entry: tuple[int, bool] | None) -> None:
        entry = entry or _GONE
        with self._lock:
            cached = self._versions.get(username)
            if cached is None or entry[0] >= cached[0] or entry == _GONE:
                self._versions[username] = entry

    def _current(self, username: str, version: int) -> int | None:
        """The user's valid token version; None if they are disabled or gone."""
        with self._lock:
            cached = self._versions.get(username)
        # The cache is behind this token (a user new or changed since the last load): ask once,
        # remember. A user known to be gone waits for the next load instead of a read per request.
        if cached is None or (version > cached[0] and cached != _GONE):
            with self._connect() as conn:
                entry = token_version(conn, username=username)
            self._remember(username, entry)
            with self._lock:
                cached = self._versions.get(username)
        if cached is None or not cached[1]:
            return None
        return cached[0]

    def check(self, who: Principal) -> None:
        """:class:`NotAuthenticated` unless ``who``'s token is still valid (blocking when the
        cache is behind: call from a thread)."""
        if who.token_version is None:
            return
        if self._current(who.username, who.token_version) != who.token_version:
            raise NotAuthenticated("token revoked: sign in again")

    def ended(self, who: Principal) -> str | None:
        """Why ``who``'s session is over (expired, revoked); None while it is valid. For open
        websockets, checked after each re-load (blocking like :meth:`check`)."""
        if who.expires_at is not None and time.time() >= who.expires_at:
            return "token expired"
        try:
            self.check(who)
        except NotAuthenticated:
            return "token revoked"
        return None
