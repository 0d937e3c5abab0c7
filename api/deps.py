"""FastAPI dependencies shared by the routes: a database connection per request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import psycopg
from fastapi import Depends, Request

from api.auth import principal
from services.accounts import Principal

__all__ = ["Caller", "Db"]


def _connection(request: Request) -> Iterator[psycopg.Connection]:
    """A pooled connection; the request is one transaction, committed when the route returns."""
    with request.app.state.pool.connection() as conn:
        yield conn


# scope="function": commit when the route returns, *before* the response is sent. With
# FastAPI's default ("request") the commit runs after the response has left, so a client
# could be told 201 for a write that then fails to commit, and its next request (on another
# pooled connection) may not see the write yet.
Db = Annotated[psycopg.Connection, Depends(_connection, scope="function")]
Caller = Annotated[Principal, Depends(principal)]
