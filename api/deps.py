"""FastAPI dependencies shared by the routes: a database connection per request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import psycopg
from fastapi import Depends, Request

from api.auth import Principal, principal

__all__ = ["Caller", "Db"]


def _connection(request: Request) -> Iterator[psycopg.Connection]:
    """A pooled connection; the request is one transaction, committed when the route returns."""
    with request.app.state.pool.connection() as conn:
        yield conn


Db = Annotated[psycopg.Connection, Depends(_connection)]
Caller = Annotated[Principal, Depends(principal)]
