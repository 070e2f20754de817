"""Cancelling long actions.

Every long action of a job (start, migrate, resume, …) runs with a cancellation token, a
``threading.Event`` that ``controlplane/workers.py`` owns and ``ControlPlane.cancel``
sets. Everything that waits on the action's behalf — a provider's agent health wait or
image build, a vmPolicy retry pause, a move between its steps — takes it as ``cancel``
and raises :class:`~outgrow.errors.CancelledError` within moments of it being set.
"""

from __future__ import annotations

import threading
import time

from outgrow.errors import CancelledError

Cancel = threading.Event


def check(cancel: Cancel | None, what: str) -> None:
    """Raise CancelledError when ``cancel`` is set (``what``: what was going on)."""
    if cancel is not None and cancel.is_set():
        raise CancelledError(f"cancelled while {what}")


def pause(cancel: Cancel | None, seconds: float, what: str) -> None:
    """Sleep ``seconds``, cut short (CancelledError) by the cancel."""
    if cancel is None:
        time.sleep(max(seconds, 0.0))
    elif cancel.wait(max(seconds, 0.0)):
        raise CancelledError(f"cancelled while {what}")
