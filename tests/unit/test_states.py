from datetime import UTC, datetime

import pytest

from outgrow.domain.states import (
    ACTIONS,
    ACTIVE_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    JobState,
    Transition,
    can_transition,
    check_action,
    check_restart,
    check_transition,
    is_active,
    is_terminal,
)
from outgrow.errors import ConflictError, ValidationError

S = JobState
AT = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)

LEGAL = {
    (S.SUBMITTED, S.INITIALIZING),
    (S.SUBMITTED, S.CANCELLING),
    (S.SUBMITTED, S.CANCELLED),
    (S.SUBMITTED, S.NO_AVAILABLE_HOST),
    (S.INITIALIZING, S.STARTING),
    (S.INITIALIZING, S.FAIL_TO_EXECUTE),
    (S.INITIALIZING, S.NO_AVAILABLE_HOST),
    (S.INITIALIZING, S.CANCELLING),
    (S.STARTING, S.EXECUTING),
    (S.STARTING, S.FAIL_TO_EXECUTE),
    (S.STARTING, S.CANCELLING),
    (S.EXECUTING, S.FLOATING),
    (S.EXECUTING, S.SUSPENDING),
    (S.EXECUTING, S.COMPLETED),
    (S.EXECUTING, S.FAIL_TO_COMPLETE),
    (S.EXECUTING, S.CANCELLING),
    (S.FLOATING, S.EXECUTING),
    (S.FLOATING, S.FAIL_TO_COMPLETE),
    (S.FLOATING, S.CANCELLING),
    (S.SUSPENDING, S.SUSPENDED),
    (S.SUSPENDING, S.EXECUTING),
    (S.SUSPENDING, S.CANCELLING),
    (S.SUSPENDED, S.RESUMING),
    (S.SUSPENDED, S.CANCELLING),
    (S.SUSPENDED, S.CANCELLED),
    (S.RESUMING, S.EXECUTING),
    (S.RESUMING, S.SUSPENDED),
    (S.RESUMING, S.FAIL_TO_EXECUTE),
    (S.RESUMING, S.CANCELLING),
    (S.CANCELLING, S.CANCELLED),
    (S.NO_AVAILABLE_HOST, S.INITIALIZING),
    (S.NO_AVAILABLE_HOST, S.CANCELLED),
}


def test_state_values_are_the_seed_names() -> None:
    assert [s.value for s in JobState] == [
        "Submitted",
        "Initializing",
        "Starting",
        "Executing",
        "Floating",
        "Suspending",
        "Suspended",
        "Resuming",
        "Completed",
        "Cancelling",
        "Cancelled",
        "FailToComplete",
        "FailToExecute",
        "NoAvailableHost",
    ]
    assert str(S.FLOATING) == "Floating"
    assert JobState("Floating") is S.FLOATING
    assert f"{S.NO_AVAILABLE_HOST}" == "NoAvailableHost"


def test_table_is_exactly_the_legal_set() -> None:
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == LEGAL
    assert set(TRANSITIONS) == set(JobState)


@pytest.mark.parametrize(("current", "new"), sorted(LEGAL))
def test_legal_moves_pass(current: JobState, new: JobState) -> None:
    check_transition(current, new)
    assert can_transition(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    sorted((a, b) for a in JobState for b in JobState if (a, b) not in LEGAL),
)
def test_every_other_move_is_a_conflict(current: JobState, new: JobState) -> None:
    assert not can_transition(current, new)
    with pytest.raises(ConflictError, match=f"^cannot go from {current} to {new}"):
        check_transition(current, new)


def test_messages_are_precise() -> None:
    with pytest.raises(ConflictError) as exc:
        check_transition(S.COMPLETED, S.FLOATING)
    assert str(exc.value) == "cannot go from Completed to Floating"
    with pytest.raises(ConflictError) as exc:
        check_transition(S.EXECUTING, S.EXECUTING)
    assert str(exc.value) == "cannot go from Executing to Executing (already Executing)"
    with pytest.raises(ConflictError) as exc:
        check_transition(S.CANCELLED, S.SUBMITTED)
    assert str(exc.value) == "cannot go from Cancelled to Submitted (use restart)"


def test_strings_are_accepted_and_unknown_states_rejected() -> None:
    check_transition("Executing", "Floating")
    assert is_terminal("Completed")
    with pytest.raises(ValidationError, match="unknown job state 'Running'") as exc:
        check_transition("Running", "Executing")
    assert exc.value.field == "state"
    with pytest.raises(ValidationError) as exc:
        check_transition("Executing", "Done")
    assert exc.value.field == "new_state"


def test_terminal_and_active() -> None:
    assert {S.COMPLETED, S.CANCELLED, S.FAIL_TO_COMPLETE, S.FAIL_TO_EXECUTE} == TERMINAL_STATES
    for s in TERMINAL_STATES:
        assert is_terminal(s)
        assert not TRANSITIONS[s]
        assert not is_active(s)
    for s in (S.SUBMITTED, S.SUSPENDED, S.NO_AVAILABLE_HOST):
        assert not is_terminal(s)
        assert not is_active(s)
    for s in (S.INITIALIZING, S.STARTING, S.EXECUTING, S.FLOATING, S.SUSPENDING, S.RESUMING):
        assert is_active(s)
    assert is_active(S.CANCELLING)
    assert ACTIVE_STATES.isdisjoint(TERMINAL_STATES)


def test_every_non_terminal_state_can_reach_a_terminal_state() -> None:
    for start in JobState:
        seen, todo = {start}, [start]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert seen & TERMINAL_STATES, start


def test_action_sets() -> None:
    assert set(ACTIONS) == {
        *("migrate", "modify", "suspend", "resume", "cancel", "restart", "open"),
        *("snapshot", "restore"),
    }
    assert ACTIONS["snapshot"] == ACTIONS["restore"] == {S.EXECUTING}
    assert ACTIONS["migrate"] == {S.EXECUTING}
    assert ACTIONS["suspend"] == {S.EXECUTING}
    assert ACTIONS["resume"] == {S.SUSPENDED}
    assert ACTIONS["open"] == {S.EXECUTING}
    assert ACTIONS["restart"] == TERMINAL_STATES
    assert ACTIONS["modify"] == {S.SUBMITTED, S.NO_AVAILABLE_HOST, S.EXECUTING, S.SUSPENDED}
    assert ACTIONS["cancel"] == set(JobState) - TERMINAL_STATES - {S.CANCELLING}


def test_action_sets_agree_with_the_table() -> None:
    for s in ACTIONS["cancel"]:
        assert {S.CANCELLING, S.CANCELLED} & TRANSITIONS[s], s
    for s in ACTIONS["migrate"]:
        assert S.FLOATING in TRANSITIONS[s]
    for s in ACTIONS["suspend"]:
        assert S.SUSPENDING in TRANSITIONS[s]
    for s in ACTIONS["resume"]:
        assert S.RESUMING in TRANSITIONS[s]


def test_check_action() -> None:
    check_action("suspend", S.EXECUTING)
    check_action("cancel", "NoAvailableHost")
    with pytest.raises(ConflictError) as exc:
        check_action("suspend", S.COMPLETED)
    assert str(exc.value) == "cannot suspend a job that is Completed (only when Executing)"
    with pytest.raises(ConflictError, match="cannot migrate a job that is Floating"):
        check_action("migrate", S.FLOATING)
    with pytest.raises(ConflictError, match="cannot cancel a job that is Cancelling"):
        check_action("cancel", S.CANCELLING)
    with pytest.raises(ValidationError, match="unknown action 'float'") as vexc:
        check_action("float", S.EXECUTING)
    assert vexc.value.field == "action"


def test_restart_only_from_terminal() -> None:
    for s in TERMINAL_STATES:
        check_restart(s)
        t = Transition.restart(s, AT)
        assert (t.from_state, t.to_state, t.cause) == (s, S.SUBMITTED, "restart")
    with pytest.raises(ConflictError) as exc:
        check_restart(S.EXECUTING)
    assert str(exc.value) == "cannot restart a job that is Executing (it has not finished)"
    with pytest.raises(ConflictError):
        Transition.restart(S.SUSPENDED, AT)


def test_transition_record() -> None:
    t = Transition.make("Executing", S.FLOATING, AT, "mem 93% ≥ 90% for 30 s")
    assert t == Transition(S.EXECUTING, S.FLOATING, AT, "mem 93% ≥ 90% for 30 s")
    assert isinstance(t.from_state, JobState)
    with pytest.raises(AttributeError):
        t.cause = "x"  # type: ignore[misc]
    with pytest.raises(ConflictError, match="cannot go from Completed to Executing"):
        Transition.make(S.COMPLETED, S.EXECUTING, AT, "oops")
