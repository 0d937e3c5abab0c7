"""The force's areas at the HTTP edge: the list read at start-up, and the check that turns an
unknown name into a 422 naming it (before any area or role check, so a typo is never
mistaken for someone else's borough)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Request

from core.areas import unknown_areas
from services.errors import InvalidRequest

__all__ = ["ForceAreas", "check_known"]


def _force_areas(request: Request) -> frozenset[str]:
    areas: frozenset[str] = request.app.state.areas
    return areas


ForceAreas = Annotated[frozenset[str], Depends(_force_areas)]


def check_known(names: Iterable[str | None], known: frozenset[str]) -> None:
    """422 if any name is not one of the force's areas (None, no borough, passes)."""
    unknown = unknown_areas(names, known)
    if unknown:
        raise InvalidRequest(f"unknown area {', '.join(map(repr, unknown))}: not one of the force's areas")
