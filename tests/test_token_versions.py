"""The token-version cache of one API process (services/sessions.py) against the real
database: a sign-out ends the token in the process that took it at once, and a re-load that
read the users just before a sign-out never brings the revoked token back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from services.accounts import Principal, Role, add_user, disable_user, remove_user, revoke_tokens, token_version
from services.errors import NotAuthenticated
from services.sessions import TokenVersions
from tests.helpers.db import Database

PASSWORD = "correct horse battery staple"


def _user(db: Database, name: str) -> Principal:
    with db.connect() as conn:
        add_user(conn, username=name, password=PASSWORD, role=Role.OPERATOR, areas=())
        entry = token_version(conn, username=name)
    assert entry is not None
    return Principal(name, Role.OPERATOR, None, token_version=entry[0])


def _sessions(db: Database, reads: list[int] | None = None) -> TokenVersions:
    @contextmanager
    def connect() -> Iterator[psycopg.Connection]:
        if reads is not None:
            reads.append(1)
        with db.connect() as conn:
            yield conn

    sessions = TokenVersions(connect=connect)
    sessions.load()
    return sessions


def test_a_sign_out_ends_the_token_in_this_process_at_once(pg: Database) -> None:
    """The process that took the sign-out refuses the token straight after its commit, before
    any announcement reaches it (here none does)."""
    who = _user(pg, "tv-ada")
    sessions = _sessions(pg)
    sessions.check(who)  # valid, and cached
    with pg.connect() as conn:
        assert revoke_tokens(conn, username=who.username)
        sessions.refresh(conn, username=who.username)
    with pytest.raises(NotAuthenticated):
        sessions.check(who)


def test_a_load_that_read_before_the_sign_out_does_not_bring_the_token_back(pg: Database) -> None:
    """A re-load whose reading began before a sign-out (a REPEATABLE READ snapshot stands in
    for a slow load) finishes after it: the newer version stays, the token stays revoked."""
    who = _user(pg, "tv-ben")
    stale = pg.connect()
    stale.autocommit = False
    stale.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    stale.execute("SELECT 1 FROM users LIMIT 1")  # the snapshot is taken here, before the sign-out
    reading = {"stale": False}

    @contextmanager
    def connect() -> Iterator[psycopg.Connection]:
        if reading["stale"]:
            yield stale
        else:
            with pg.connect() as conn:
                yield conn

    sessions = TokenVersions(connect=connect)
    sessions.load()
    with pg.connect() as conn:
        revoke_tokens(conn, username=who.username)
        sessions.refresh(conn, username=who.username)
    reading["stale"] = True
    try:
        sessions.load()  # reads the version from before the sign-out
    finally:
        stale.close()
        reading["stale"] = False
    with pytest.raises(NotAuthenticated):
        sessions.check(who)


def test_disabled_and_removed_users_tokens_are_refused(pg: Database) -> None:
    """Disabling (a new version, not enabled) and removal (no row) both end the token, in the
    process that made the change and after a re-load."""
    ada, ben = _user(pg, "tv-cat"), _user(pg, "tv-dan")
    sessions = _sessions(pg)
    with pg.connect() as conn:
        assert disable_user(conn, username=ada.username)
        sessions.refresh(conn, username=ada.username)
        assert remove_user(conn, username=ben.username)
        sessions.refresh(conn, username=ben.username)
    for who in (ada, ben):
        with pytest.raises(NotAuthenticated):
            sessions.check(who)
    sessions.load()
    for who in (ada, ben):
        with pytest.raises(NotAuthenticated):
            sessions.check(who)


def test_a_removed_users_token_costs_one_read_not_one_per_request(pg: Database) -> None:
    """A still validly signed token of a user who is gone is refused from memory after one
    read of the database, until the next load."""
    who = _user(pg, "tv-eve")
    with pg.connect() as conn:
        assert remove_user(conn, username=who.username)
    reads: list[int] = []
    sessions = _sessions(pg, reads)
    before = len(reads)
    for _ in range(5):
        with pytest.raises(NotAuthenticated):
            sessions.check(who)
    assert len(reads) - before == 1
