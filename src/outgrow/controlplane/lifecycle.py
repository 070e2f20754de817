"""Every job state change goes through :meth:`Lifecycle.transition`, and so do its effects.

``transition(job, to, reason)`` is the only caller of ``Store.set_status`` (the state and
its event in one transaction). After the commit, the hooks that match the change run, in
the order they were registered; a failing hook is logged and never undoes the change (as
Prefect's orchestration rules run "after transition" hooks). The control plane registers:

* on entering a terminal state: drop the job's warm instance, delete its storage, its
  security group and any kept checkpoint — on every path that ends a job, including a
  reclaimed or lost instance;
* on leaving Floating, Suspending or Resuming: tell the move hooks (the stable-URL proxy
  re-attaches its connections or closes them).

:meth:`before_checkpoint` is the other move hook: the proxy closes its upstream
connections before a job is frozen (held, for websockets), and :meth:`after_checkpoint`
re-attaches them after a snapshot, which leaves the job Executing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from outgrow.domain.states import MOVING_STATES, TERMINAL_STATES, JobState, Transition
from outgrow.store import Store

log = logging.getLogger("outgrow.controlplane")

Hook = Callable[[str, Transition], None]  # (job id, the committed transition)


class MoveHooks(Protocol):
    def before_checkpoint(self, job_id: str) -> None:
        """Called (from a worker thread) just before a job is checkpointed; returns once
        every connection to the job from outside its instance is closed."""

    def after_move(self, job_id: str) -> None:
        """Called after the move ended (success or not) and the job status is final."""


@dataclass(frozen=True)
class _Rule:
    name: str
    entering: frozenset[JobState] | None
    leaving: frozenset[JobState] | None
    hook: Hook

    def matches(self, t: Transition) -> bool:
        if self.entering is not None and t.to_state not in self.entering:
            return False
        return self.leaving is None or (t.from_state in self.leaving and t.to_state != t.from_state)


class Lifecycle:
    def __init__(self, store: Store):
        self.store = store
        self._rules: list[_Rule] = []
        self.move_hooks: list[MoveHooks] = []
        self.after(self._after_move, name="move hooks", leaving=MOVING_STATES)

    def after(
        self,
        hook: Hook,
        *,
        name: str,
        entering: Collection[JobState] | None = None,
        leaving: Collection[JobState] | None = None,
    ) -> None:
        """Run ``hook`` after each committed transition into one of ``entering`` and/or
        out of one of ``leaving`` (None: any)."""
        self._rules.append(
            _Rule(
                name,
                frozenset(entering) if entering is not None else None,
                frozenset(leaving) if leaving is not None else None,
                hook,
            )
        )

    def on_terminal(self, hook: Hook, *, name: str) -> None:
        self.after(hook, name=name, entering=TERMINAL_STATES)

    def transition(self, job_id: str, to: JobState, reason: str) -> Transition:
        left = self.store.set_status(job_id, to, reason)
        t = Transition(left, to, datetime.now(UTC), reason)
        for rule in self._rules:
            if rule.matches(t):
                try:
                    rule.hook(job_id, t)
                except Exception:
                    log.exception("%s after %s → %s of job %s failed", rule.name, left, to, job_id)
        return t

    # ---- move hooks (the stable-URL proxy) ---------------------------------------------
    def before_checkpoint(self, job_id: str) -> None:
        for h in self.move_hooks:
            try:
                h.before_checkpoint(job_id)
            except Exception:
                log.exception("before_checkpoint hook failed for %s", job_id)

    def _after_move(self, job_id: str, t: Transition) -> None:
        self.after_checkpoint(job_id)

    def after_checkpoint(self, job_id: str) -> None:
        """A checkpoint the job ran on from (a snapshot) is done, or a move ended: the
        proxy re-attaches the connections it held (or closes them)."""
        for h in self.move_hooks:
            try:
                h.after_move(job_id)
            except Exception:
                log.exception("after_move hook failed for %s", job_id)
