"""Waiting for a condition in the benchmarks.

Sleeps that pace a measured workload stay where they are; a wait for something to
happen (a server started, a job state, a tree gone) polls through ``poll_until`` and,
when it does not happen, says what it waited for. (The test suite has its own helper,
tests/waiting.py; the benchmarks do not import from tests/.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(
    predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05
) -> T:
    """Call ``predicate`` every ``interval`` s until it returns something truthy; return
    that. After ``timeout`` s: TimeoutError naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}; last: {value!r}")
        time.sleep(interval)
