"""The one way a test says that a real part of the machine is missing.

Locally a missing PostgreSQL, Mosquitto or Chromium skips the test, so a laptop without them
can still run the rest. Under ``CI=true`` the same absence fails the test: a CI job whose
tests all skipped would otherwise report green while testing nothing.

TimescaleDB is the one exception: CI cannot install the extension, so its absence skips even
there, and the run's summary says what that leaves untested (see conftest's
``pytest_terminal_summary``)."""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest

__all__ = ["TIMESCALE_ABSENT", "in_ci", "missing", "require_executable", "require_module", "timescale_absent"]

# The reason of every TimescaleDB skip; the terminal summary counts skips by it.
TIMESCALE_ABSENT = "TimescaleDB not installed: the Timescale path is not tested here"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(what: str, *, allow_module_level: bool = False) -> NoReturn:
    """Skip (locally) or fail (CI=true) because ``what`` is not available on this machine."""
    if in_ci():
        pytest.fail(f"{what}; CI=true requires every real part, so this is a failure, not a skip",
                    pytrace=False)
    pytest.skip(what, allow_module_level=allow_module_level)


def require_executable(name: str, *, what: str | None = None) -> str:
    """The path of executable ``name`` (or absolute path), or :func:`missing`."""
    path = shutil.which(name)
    if path is None:
        missing(f"{what or name} is not installed")
    return path


def require_module(name: str, *, allow_module_level: bool = False) -> ModuleType:
    """``importlib.import_module(name)``, or :func:`missing` (pytest.importorskip that fails in CI)."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        missing(f"Python module {name} is not importable ({error})", allow_module_level=allow_module_level)


def timescale_absent() -> NoReturn:
    """Skip even under CI: the extension cannot be installed there; the summary says so."""
    pytest.skip(TIMESCALE_ABSENT)
