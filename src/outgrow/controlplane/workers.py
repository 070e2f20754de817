"""The per-job serial executor: at most one long action (start, migrate, suspend, …) per
job at a time, on a shared thread pool.

Each running action has a cancellation token (``outgrow.cancel``): :meth:`Workers.token`
hands it to the action (and down to the provider calls that wait), :meth:`Workers.cancel`
sets it, so a cancel interrupts a start waiting for an agent or an image build instead of
queueing behind it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from outgrow.errors import StoreUnavailable
from outgrow.store import Store

log = logging.getLogger("outgrow.controlplane")


class Workers:
    def __init__(self, store: Store, stopping: threading.Event, max_workers: int = 16):
        self.store = store
        self.stopping = stopping
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="job")
        self._busy: set[str] = set()
        self._tokens: dict[str, threading.Event] = {}  # job → its running action's token
        self._guard = threading.Lock()

    def busy(self, job_id: str) -> bool:
        with self._guard:
            return job_id in self._busy

    def run(
        self,
        job_id: str,
        fn: Callable[..., None],
        *args: Any,
        wait: float = 0.0,
        still: Callable[[], bool] | None = None,
    ) -> bool:
        """Queue ``fn(job_id, *args)``; False when the job is busy with another action.
        With ``wait``, a user's action waits that long for the job's previous action to end
        (it is finishing its bookkeeping right after the status a client waited for).
        ``still``: while waiting, give up as soon as it turns false (the action in the way
        is not bookkeeping but a real change, e.g. a second move of a job already moving)."""
        deadline = time.monotonic() + wait
        while True:
            with self._guard:
                if job_id not in self._busy:
                    self._busy.add(job_id)
                    self._tokens[job_id] = threading.Event()  # fresh: a cancel ends one action
                    break
            if time.monotonic() >= deadline or self.stopping.wait(0.05):
                return False
            if still is not None and not still():
                return False

        def work() -> None:
            try:
                fn(job_id, *args)
            except StoreUnavailable as exc:
                # The database is away: the action is decided again once it is back (the
                # job's status did not move), and no error event can be written anyway.
                name = getattr(fn, "__name__", "action")
                log.warning("action %s on job %s: %s (%s)", name, job_id, exc, exc.detail or "")
            except Exception:
                name = getattr(fn, "__name__", "action")
                log.exception("action %s on job %s failed", name, job_id)
                try:
                    self.store.add_event(
                        job_id, "error", f"internal error in {name}; see server log"
                    )
                except Exception:
                    log.exception("cannot record the error event")
            finally:
                with self._guard:
                    self._busy.discard(job_id)
                    self._tokens.pop(job_id, None)

        self._pool.submit(work)
        return True

    def token(self, job_id: str) -> threading.Event | None:
        """The cancellation token of the job's running action (None: none runs)."""
        with self._guard:
            return self._tokens.get(job_id)

    def cancel(self, job_id: str) -> bool:
        """Cancel the job's running action (its waits raise CancelledError); False when
        no action runs."""
        with self._guard:
            token = self._tokens.get(job_id)
        if token is None:
            return False
        token.set()
        return True

    def run_when_free(self, job_id: str, fn: Callable[..., None], *args: Any) -> None:
        """Queue ``fn`` as soon as the job's current action ends (in the background)."""

        def later() -> None:
            while not self.run(job_id, fn, *args):
                if self.stopping.wait(0.2):
                    return

        self._pool.submit(later)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
