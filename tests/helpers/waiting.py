"""Waiting for a condition, polled and bounded: the one way tests wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["run", "wait_for"]

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run ``coro`` on a fresh event loop; fail after ``timeout`` seconds instead of hanging."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def wait_for(condition: Callable[[], object], *, timeout: float = 30.0, interval: float = 0.1,
             what: str = "condition") -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
