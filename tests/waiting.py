"""Waiting for conditions in tests.

House rule: a test waits for the condition it needs, never for a fixed time, and when
the condition does not come it fails saying what did not happen (and what it saw last).

This module is the only place under tests/ that may sleep to poll; anywhere else a sleep
is allowed only where the sleep itself is what a test measures, marked on its line with
``# the sleep is what is tested: <why>`` (tests/unit/test_no_fixed_sleeps.py enforces
both).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

SHOWN = 1500  # characters of the last value a failure message shows


def wait_for_value(
    fn: Callable[[], T],
    pred: Callable[[T], object],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    ignore: tuple[type[Exception], ...] = (),
    context: Callable[[], str] | None = None,
) -> T:
    """Call ``fn`` every ``interval`` s until ``pred`` holds for its value; return that value.

    An exception of one of the ``ignore`` types (e.g. ``httpx.HTTPError`` of a server
    not listening yet) counts as "not yet"; any other propagates at once, so ``fn`` may
    fail early when waiting is hopeless (a process died). On timeout: an AssertionError
    naming ``what``, the last value (or exception) and ``context()`` (e.g. a log tail).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
        except ignore as exc:
            last: object = exc
        else:
            if pred(value):
                return value
            last = value
        if time.monotonic() >= deadline:
            msg = f"timed out after {timeout:g}s waiting for {what}; last value: {_show(last)}"
            raise AssertionError(f"{msg}\n{context()}" if context else msg)
        time.sleep(interval)


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    ignore: tuple[type[Exception], ...] = (),
    context: Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` every ``interval`` s until it returns something truthy; return
    that. See :func:`wait_for_value` for ``ignore``, ``context`` and the failure."""
    return wait_for_value(
        predicate,
        bool,
        timeout=timeout,
        what=what,
        interval=interval,
        ignore=ignore,
        context=context,
    )


def holds_for(
    predicate: Callable[[], object], *, duration: float, what: str, interval: float = 0.05
) -> None:
    """Check that ``predicate`` stays truthy for ``duration`` s (something must NOT happen,
    e.g. a frozen counter must not move): fails as soon as it does not hold, saying when
    and with what value. The duration is the observation window, not a guess at how long
    something takes."""
    start = time.monotonic()
    while True:
        value = predicate()
        elapsed = time.monotonic() - start
        if not value:
            raise AssertionError(
                f"{what} stopped holding after {elapsed:.2f}s of {duration:g}s; "
                f"value: {_show(value)}"
            )
        if elapsed >= duration:
            return
        time.sleep(min(interval, duration - elapsed))


def _show(value: object) -> str:
    text = repr(value)
    if len(text) <= SHOWN:
        return text
    half = SHOWN // 2
    return f"{text[:half]} … ({len(text) - SHOWN} characters) … {text[-half:]}"
