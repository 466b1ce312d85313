"""Waiting for a condition with a deadline (never for a fixed time)."""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_for(predicate: Callable[[], Any], timeout: float = 10, what: str = "",
             interval: float = 0.05) -> Any:
    """Return the first truthy value of ``predicate()``; fail after ``timeout`` seconds.

    The condition is checked once more at the deadline, so a slow machine that meets it just
    then does not fail.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)
