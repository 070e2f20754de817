"""Snapshots (periodic checkpoints a job runs on from), as data and pure decisions.

A job's ``checkpoint_interval`` (seconds; ``0`` = off; ``None`` = the default for its
kind: on for Jupyter, off for batch) says how often the control plane snapshots it while
it is Executing. :func:`snapshot_due` decides, from the clock and the job's history alone,
whether one is due now and says why (unit-tested as a table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from outgrow.domain.policy_parse import parse_duration
from outgrow.domain.states import JobState
from outgrow.errors import ValidationError

OFF_WORDS = frozenset({"off", "none", "no", "false", "disabled"})
# After a failed snapshot, the next try waits this long (or the interval, if shorter).
RETRY_AFTER_FAILURE_S = 300.0


def parse_interval(value: str | float | None, field: str = "checkpoint_interval") -> float | None:
    """``"15m"``, ``"1h30m"``, ``"900"``, ``900`` → seconds; ``"off"``/``0`` → 0.0 (off);
    None or ``""`` → None (the default for the job's kind)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and value.strip().lower() in OFF_WORDS:
        return 0.0
    seconds = parse_duration(value, field)
    if 0 < seconds < 10:
        raise ValidationError(
            f"{field}: a snapshot at most every 10 s (got {seconds:g} s); 0 or off disables",
            field=field,
        )
    return seconds


def format_interval(seconds: float | None) -> str:
    """``900`` → ``"15m"``, ``0`` → ``"off"``, ``None`` → ``"default"``."""
    if seconds is None:
        return "default"
    if seconds <= 0:
        return "off"
    s = int(seconds) if float(seconds).is_integer() else seconds
    if isinstance(s, int):
        for unit, size in (("h", 3600), ("m", 60)):
            if s >= size and s % size == 0:
                return f"{s // size}{unit}"
    return f"{s:g}s"


def effective_interval(spec_value: float | None, is_jupyter: bool, default_s: float) -> float:
    """The interval that applies: the job's own, else ``default_s`` for Jupyter jobs and
    off (0) for batch jobs."""
    if spec_value is not None:
        return max(float(spec_value), 0.0)
    return float(default_s) if is_jupyter else 0.0


@dataclass(frozen=True)
class Due:
    due: bool
    reason: str


def snapshot_due(
    now: float,
    status: JobState,
    interval_s: float,
    last_snapshot_at: float | None,
    running_since: float,
    busy: bool = False,
    last_failure_at: float | None = None,
) -> Due:
    """Is a periodic snapshot of this job due at ``now``?

    ``last_snapshot_at``: the newest snapshot (None: none yet, counted from
    ``running_since``, when it began running where it runs); ``busy``: another action
    (a move, a suspend, a snapshot) holds the job; ``last_failure_at``: the last snapshot
    that failed (the next try waits RETRY_AFTER_FAILURE_S, or the interval if shorter)."""
    if interval_s <= 0 or not math.isfinite(interval_s):
        return Due(False, "snapshots are off for this job")
    if status != JobState.EXECUTING:
        return Due(False, f"the job is {status.value}, not Executing")
    if busy:
        return Due(False, "another action (a move, a suspend, a snapshot) holds the job")
    since = max(last_snapshot_at or 0.0, running_since)
    if last_failure_at is not None and last_failure_at > since:
        retry_at = last_failure_at + min(RETRY_AFTER_FAILURE_S, interval_s)
        if now < retry_at:
            return Due(False, f"the last snapshot failed; next try in {retry_at - now:.0f} s")
        return Due(True, "retrying after a failed snapshot")
    age = now - since
    if age < interval_s:
        return Due(False, f"next snapshot in {interval_s - age:.0f} s")
    fresh = last_snapshot_at is None or last_snapshot_at < running_since
    what = "the job began running here" if fresh else "the last snapshot"
    return Due(True, f"{age:.0f} s since {what} (interval {format_interval(interval_s)})")


class SnapshotView(BaseModel):
    """One stored snapshot of a job, as users see it."""

    model_config = ConfigDict(frozen=True)

    id: str
    job_id: str
    time: datetime
    size_bytes: int
    duration_s: float  # the whole snapshot: freeze, dump, write/upload
    frozen_s: float  # how long the job was frozen (freeze + dump)
    reason: str  # "periodic", "manual", "before restore"
    instance_id: str | None = None


class SnapshotResult(BaseModel):
    """A snapshot just taken."""

    model_config = ConfigDict(frozen=True)

    snapshot: SnapshotView
    deleted: list[str] = []  # older snapshots dropped by retention
