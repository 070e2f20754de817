"""The job state machine.

State names are the seed product's (MemVerge Memory Machine Cloud) job states, verbatim, so
that they read the same in the CLI, the API and the console. Every state change goes through
:func:`check_transition` (or :func:`check_restart` for the one way out of a terminal state) and
is recorded as a :class:`Transition`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType

from outgrow.errors import ConflictError, ValidationError


class JobState(StrEnum):
    SUBMITTED = "Submitted"  # accepted, waiting to be scheduled
    INITIALIZING = "Initializing"  # choosing an instance type, creating the instance
    STARTING = "Starting"  # instance up; preparing the image and starting the job
    EXECUTING = "Executing"  # running
    FLOATING = "Floating"  # live-migrating to another instance (CRIU dump/transfer/restore)
    SUSPENDING = "Suspending"  # checkpointing before releasing the instance
    SUSPENDED = "Suspended"  # checkpoint stored, no instance
    RESUMING = "Resuming"  # new instance, restoring the checkpoint
    COMPLETED = "Completed"  # the job's process exited 0
    CANCELLING = "Cancelling"  # user cancel in progress: stopping, releasing the instance
    CANCELLED = "Cancelled"  # cancelled by the user
    FAIL_TO_COMPLETE = "FailToComplete"  # the job ran and failed (non-zero exit, lost instance)
    FAIL_TO_EXECUTE = "FailToExecute"  # the job never ran (instance/image/start failure)
    NO_AVAILABLE_HOST = "NoAvailableHost"  # no instance type/capacity fits; may be retried


S = JobState

TERMINAL_STATES: frozenset[JobState] = frozenset(
    {S.COMPLETED, S.CANCELLED, S.FAIL_TO_COMPLETE, S.FAIL_TO_EXECUTE}
)

# States in which the job holds (or is acquiring, or is releasing) an instance: these are
# the states a reconciler must clean up after and that accrue instance cost.
ACTIVE_STATES: frozenset[JobState] = frozenset(
    {
        S.INITIALIZING,
        S.STARTING,
        S.EXECUTING,
        S.FLOATING,
        S.SUSPENDING,
        S.RESUMING,
        S.CANCELLING,
    }
)

# States of a job on the move: its connections are cut and its requests held meanwhile.
MOVING_STATES: frozenset[JobState] = frozenset({S.FLOATING, S.SUSPENDING, S.RESUMING})

_T = frozenset

# The legal moves. Terminal states have no way out here: a restart creates a new run and
# goes through check_restart() (terminal → Submitted).
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = MappingProxyType(
    {
        S.SUBMITTED: _T(
            {
                S.INITIALIZING,  # the scheduler picked it up
                S.CANCELLING,  # cancel while the scheduler holds it
                S.CANCELLED,  # cancel before anything was created
                S.NO_AVAILABLE_HOST,  # nothing in the catalog fits the request
            }
        ),
        S.INITIALIZING: _T(
            {
                S.STARTING,  # the instance is up
                S.FAIL_TO_EXECUTE,  # creating the instance failed for good
                S.NO_AVAILABLE_HOST,  # no capacity for any fitting type
                S.CANCELLING,  # cancel while the instance is being created
            }
        ),
        S.STARTING: _T(
            {
                S.EXECUTING,  # the job's process is running
                S.FAIL_TO_EXECUTE,  # image or start failure
                S.CANCELLING,  # cancel while starting
            }
        ),
        S.EXECUTING: _T(
            {
                S.FLOATING,  # a migration (manual, policy, evadeOOM, spot reclaim) began
                S.SUSPENDING,  # user suspend or idle timeout
                S.COMPLETED,  # the process exited 0
                S.FAIL_TO_COMPLETE,  # the process failed or the instance was lost
                S.CANCELLING,  # user cancel
            }
        ),
        S.FLOATING: _T(
            {
                S.EXECUTING,  # migrated (or the migration failed and it runs on the source)
                S.FAIL_TO_COMPLETE,  # the migration lost the job
                S.CANCELLING,  # user cancel during the migration
            }
        ),
        S.SUSPENDING: _T(
            {
                S.SUSPENDED,  # checkpoint stored, instance released
                S.EXECUTING,  # the suspend failed: the job keeps running
                S.CANCELLING,  # user cancel during the suspend
            }
        ),
        S.SUSPENDED: _T(
            {
                S.RESUMING,  # user resume
                S.CANCELLING,  # cancel, with a checkpoint to delete
                S.CANCELLED,  # cancel with nothing left to release
            }
        ),
        S.RESUMING: _T(
            {
                S.EXECUTING,  # restored
                S.SUSPENDED,  # the resume failed: the checkpoint is kept
                S.FAIL_TO_EXECUTE,  # the checkpoint cannot be restored
                S.CANCELLING,  # user cancel during the resume
            }
        ),
        S.CANCELLING: _T({S.CANCELLED}),  # everything released
        S.NO_AVAILABLE_HOST: _T(
            {
                S.INITIALIZING,  # retry (capacity came back, or the request was modified)
                S.CANCELLED,  # cancel, nothing to release
            }
        ),
        S.COMPLETED: _T(),
        S.CANCELLED: _T(),
        S.FAIL_TO_COMPLETE: _T(),
        S.FAIL_TO_EXECUTE: _T(),
    }
)

# The states in which each user action is legal.
ACTIONS: Mapping[str, frozenset[JobState]] = MappingProxyType(
    {
        # move the running job to another instance type now
        "migrate": _T({S.EXECUTING}),
        # change the policies / requested size (a running job may migrate as a result);
        # not while a migration, suspend or resume is in flight
        "modify": _T({S.SUBMITTED, S.NO_AVAILABLE_HOST, S.EXECUTING, S.SUSPENDED}),
        "suspend": _T({S.EXECUTING}),
        "resume": _T({S.SUSPENDED}),
        # every non-terminal state except Cancelling (already cancelling)
        "cancel": _T(
            {
                S.SUBMITTED,
                S.INITIALIZING,
                S.STARTING,
                S.EXECUTING,
                S.FLOATING,
                S.SUSPENDING,
                S.SUSPENDED,
                S.RESUMING,
                S.NO_AVAILABLE_HOST,
            }
        ),
        # a new run from the same spec
        "restart": TERMINAL_STATES,
        # open the job's web UI (Jupyter): only while it runs and is reachable
        "open": _T({S.EXECUTING}),
        # take a snapshot now / roll the running job back to one
        "snapshot": _T({S.EXECUTING}),
        "restore": _T({S.EXECUTING}),
    }
)


def parse_state(value: JobState | str, field: str = "state") -> JobState:
    """The state named ``value`` (ValidationError listing the known ones otherwise)."""
    if isinstance(value, JobState):
        return value
    try:
        return JobState(value)
    except ValueError:
        known = ", ".join(s.value for s in JobState)
        raise ValidationError(
            f"unknown job state {value!r} (known: {known})", field=field
        ) from None


def is_terminal(state: JobState | str) -> bool:
    return parse_state(state) in TERMINAL_STATES


def is_active(state: JobState | str) -> bool:
    """True when the job holds, acquires or releases an instance in this state."""
    return parse_state(state) in ACTIVE_STATES


def can_transition(current: JobState | str, new: JobState | str) -> bool:
    return parse_state(new, "new_state") in TRANSITIONS[parse_state(current)]


def check_transition(current: JobState | str, new: JobState | str) -> None:
    """Raise ConflictError unless ``current → new`` is a legal move."""
    cur, nxt = parse_state(current), parse_state(new, "new_state")
    if nxt in TRANSITIONS[cur]:
        return
    msg = f"cannot go from {cur} to {nxt}"
    if cur == nxt:
        msg += f" (already {cur})"
    elif cur in TERMINAL_STATES and nxt == S.SUBMITTED:
        msg += " (use restart)"
    raise ConflictError(msg)


def check_action(action: str, state: JobState | str) -> None:
    """Raise ConflictError unless the user action is legal in ``state``."""
    allowed = ACTIONS.get(action)
    if allowed is None:
        raise ValidationError(
            f"unknown action {action!r} (known: {', '.join(ACTIONS)})", field="action"
        )
    cur = parse_state(state)
    if cur not in allowed:
        legal = ", ".join(sorted(s.value for s in allowed))
        raise ConflictError(f"cannot {action} a job that is {cur} (only when {legal})")


def check_restart(state: JobState | str) -> None:
    """A restart (terminal → Submitted, as a new run) is legal only from a terminal state."""
    cur = parse_state(state)
    if cur not in TERMINAL_STATES:
        raise ConflictError(f"cannot restart a job that is {cur} (it has not finished)")


@dataclass(frozen=True)
class Transition:
    """One recorded state change. ``cause`` says why (user action, rule reason, error)."""

    from_state: JobState
    to_state: JobState
    at: datetime
    cause: str

    @classmethod
    def make(
        cls, from_state: JobState | str, to_state: JobState | str, at: datetime, cause: str
    ) -> Transition:
        """A checked transition (raises ConflictError for an illegal move)."""
        check_transition(from_state, to_state)
        return cls(parse_state(from_state), parse_state(to_state, "new_state"), at, cause)

    @classmethod
    def restart(
        cls, from_state: JobState | str, at: datetime, cause: str = "restart"
    ) -> Transition:
        """The checked terminal → Submitted transition of a restart."""
        check_restart(from_state)
        return cls(parse_state(from_state), S.SUBMITTED, at, cause)
