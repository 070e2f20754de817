"""The per-job executor: one action per job; a user's action waits for the previous
action's bookkeeping, but not for a real change (``still`` turning false)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from outgrow.controlplane.workers import Workers
from outgrow.store import Store
from waiting import wait_until


@pytest.fixture
def workers() -> Iterator[Workers]:
    w = Workers(Store.open("sqlite://"), threading.Event(), max_workers=4)
    yield w
    w.shutdown()


def _blocking(release: threading.Event, started: threading.Event) -> Callable[[str], None]:
    def action(job_id: str) -> None:
        started.set()
        release.wait(10)

    return action


def test_a_second_action_is_refused_while_one_runs(workers: Workers) -> None:
    release, started = threading.Event(), threading.Event()
    assert workers.run("j1", _blocking(release, started))
    assert started.wait(5)
    assert not workers.run("j1", lambda _j: None), "a busy job took a second action"
    assert workers.run("j2", lambda _j: None), "another job was held up by j1's action"
    release.set()


def test_a_user_action_waits_for_the_previous_actions_tail(workers: Workers) -> None:
    release, started = threading.Event(), threading.Event()
    ran = threading.Event()
    assert workers.run("j1", _blocking(release, started))
    assert started.wait(5)
    threading.Timer(0.3, release.set).start()
    assert workers.run("j1", lambda _j: ran.set(), wait=5.0), "did not wait for the tail"
    wait_until(ran.is_set, timeout=5, what="the queued action to run")


def test_waiting_gives_up_as_soon_as_still_turns_false(workers: Workers) -> None:
    release, started = threading.Event(), threading.Event()
    moving = threading.Event()
    assert workers.run("j1", _blocking(release, started))
    assert started.wait(5)
    threading.Timer(0.2, moving.set).start()  # the action in the way changes the job
    try:
        ok = workers.run("j1", lambda _j: None, wait=8.0, still=lambda: not moving.is_set())
        assert not ok, "a second move was queued behind the first instead of refused"
        assert workers.busy("j1"), "the first action should still be running"
    finally:
        release.set()
