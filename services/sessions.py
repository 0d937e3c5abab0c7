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


class TokenVersions:
    """The in-memory token versions of one API process. Thread-safe: requests check from
    the thread pool while the event loop re-loads."""

    def __init__(self, *, connect: Connect) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._versions: dict[str, int | None] = {}  # None: disabled, or no such user

    def load(self) -> None:
        """Re-read every user's version (blocking: call from a thread)."""
        with self._connect() as conn:
            versions = token_versions(conn)
        with self._lock:
            self._versions = versions

    def _current(self, username: str, version: int) -> int | None:
        with self._lock:
            known = username in self._versions
            current = self._versions.get(username)
        if known and (current is None or version <= current):
            return current
        with self._connect() as conn:  # the cache is behind this token: ask once, remember
            current = token_version(conn, username=username)
        with self._lock:
            self._versions[username] = current
        return current

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
