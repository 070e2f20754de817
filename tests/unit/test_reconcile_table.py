"""The reconciler's decision table (pure), and the reconciler carrying plans out against a
FAKE provider with FAKE agents (tests/fakes.py) over a real store (SQLite, and PostgreSQL
on a throwaway cluster). The same paths run for real, with a killed control plane, in
tests/root/test_reconcile.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes import FakeProvider
from outgrow.agentapi.models import AgentPhase, JobStatus
from outgrow.controlplane.reconcile import UNUSABLE, Observed, Plan, Step, decide
from outgrow.controlplane.service import ControlPlane
from outgrow.domain.jobs import JobSpec
from outgrow.domain.states import JobState as S
from outgrow.settings import Settings
from outgrow.store import Store

RUN = Observed(phase=AgentPhase.RUNNING)
RESTORED = Observed(phase=AgentPhase.RUNNING, restored=True)
FROZEN = Observed(phase=AgentPhase.CHECKPOINTED)
KEPT = Observed(phase=AgentPhase.STOPPED, kept_checkpoint=True)
STARTING = Observed(phase=AgentPhase.STARTING)
SILENT = Observed()  # the instance exists, its agent does not answer
FLOATING_BACK = "reconciled after a restart (was Floating)"

TABLE: list[tuple[str, S, dict[str, Observed], Plan]] = [
    # parked and ended jobs hold nothing: whatever is live is released
    ("ended", S.COMPLETED, {"a": RUN}, Plan(end={"a": "released"})),
    ("suspended", S.SUSPENDED, {"a": RUN}, Plan(end={"a": "released"})),
    ("submitted", S.SUBMITTED, {}, Plan()),
    # a start that never finished starts over, after the orphan sweep
    ("initializing", S.INITIALIZING, {"a": SILENT}, Plan(end={"a": "failed"}, steps=(Step.START,))),
    ("cancelling", S.CANCELLING, {"a": RUN}, Plan(steps=(Step.CANCEL,))),
    # executing: it runs where we think, or it is lost
    ("executing ok", S.EXECUTING, {"a": RUN}, Plan(keep="a")),
    (
        "executing gone",
        S.EXECUTING,
        {"a": UNUSABLE},
        Plan(end={"a": "failed"}, to=S.FAIL_TO_COMPLETE, reason="instance lost"),
    ),
    (
        "executing silent",
        S.EXECUTING,
        {"a": SILENT},
        Plan(end={"a": "failed"}, to=S.FAIL_TO_COMPLETE, reason="instance lost"),
    ),
    # floating: the move finished (a restored copy runs on the target) ...
    (
        "floating done",
        S.FLOATING,
        {"a": RUN, "b": RESTORED},
        Plan(
            "b",
            {"a": "migrated-from"},
            (),
            S.EXECUTING,
            FLOATING_BACK,
        ),
    ),
    # ... or it was cut before the restore: the source still runs, the target goes
    (
        "floating before dump",
        S.FLOATING,
        {"a": RUN, "b": SILENT},
        Plan("a", {"b": "failed"}, (), S.EXECUTING, FLOATING_BACK),
    ),
    # ... or after the dump: the frozen source is resumed
    (
        "floating frozen",
        S.FLOATING,
        {"a": FROZEN, "b": SILENT},
        Plan(
            "a",
            {"b": "failed"},
            (Step.ABORT,),
            S.EXECUTING,
            FLOATING_BACK,
        ),
    ),
    # ... or after the source's tree ended in a storage move: restored from its images
    (
        "floating kept",
        S.FLOATING,
        {"a": KEPT, "b": SILENT},
        Plan(
            "a",
            {"b": "failed"},
            (Step.RESTORE_KEPT,),
            S.EXECUTING,
            FLOATING_BACK,
        ),
    ),
    (
        "suspending frozen",
        S.SUSPENDING,
        {"a": FROZEN},
        Plan("a", {}, (Step.ABORT,), S.EXECUTING, "reconciled after a restart (was Suspending)"),
    ),
    (
        "resuming done",
        S.RESUMING,
        {"b": RESTORED},
        Plan("b", {}, (), S.EXECUTING, "reconciled after a restart (was Resuming)"),
    ),
    (
        "resuming cut",
        S.RESUMING,
        {"b": SILENT},
        Plan(end={"b": "failed"}, to=S.SUSPENDED, reason="control plane restarted mid-resume"),
    ),
    (
        "starting still",
        S.STARTING,
        {"a": STARTING},
        Plan(keep="a", steps=(Step.WAIT_START,), reason="job still starting"),
    ),
    (
        "starting lost",
        S.STARTING,
        {"a": UNUSABLE},
        Plan(end={"a": "failed"}, to=S.FAIL_TO_EXECUTE, reason="instance lost while starting"),
    ),
]


@pytest.mark.parametrize(("what", "status", "seen", "plan"), TABLE, ids=[t[0] for t in TABLE])
def test_decision_table(what: str, status: S, seen: dict[str, Observed], plan: Plan) -> None:
    assert decide(status, "a" if "a" in seen or not seen else None, seen) == plan


def test_a_restored_source_is_not_taken_for_a_finished_move() -> None:
    # Only a restored copy on *another* instance means the move finished.
    plan = decide(S.FLOATING, "a", {"a": RESTORED, "b": SILENT})
    assert plan.keep == "a" and plan.end == {"b": "failed"}


# ---- the reconciler with fakes -------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def plane(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[ControlPlane, FakeProvider]]:
    """The fakes over a real store: in-memory SQLite, or a database on the session's real
    PostgreSQL (tests/pg.py): the reconciler's reads and writes on both backends."""
    provider = FakeProvider()
    url = "sqlite://" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    store = Store.open(url)
    cp = ControlPlane(Settings(data_dir=tmp_path), store, provider, connect=provider.connect)
    try:
        yield cp, provider
    finally:
        cp.stop()
        store.close()


def _job(cp: ControlPlane, status: S, current: str | None, *instances: str) -> str:
    store = cp.store
    user = store.get_user("u") or store.create_user("u", "password")
    job_id = store.create_job(
        user.id, JobSpec(name=f"j{len(store.list_jobs(None))}", image="python", script="1"), "t"
    )
    for iid in instances:
        inst = cp.provider.describe_instance(iid)
        assert inst is not None
        cp.instances.record(job_id, inst)
    path = {
        S.EXECUTING: [S.INITIALIZING, S.STARTING, S.EXECUTING],
        S.FLOATING: [S.INITIALIZING, S.STARTING, S.EXECUTING, S.FLOATING],
    }[status]
    for st in path:
        store.set_status(job_id, st, "test")
    store.update_job(job_id, current_instance_id=current)
    return job_id


def _running(job_id: str, **kw: object) -> JobStatus:
    return JobStatus(phase=AgentPhase.RUNNING, job_id=job_id, **kw)  # type: ignore[arg-type]


def test_floating_frozen_source_is_resumed_and_target_deleted(
    plane: tuple[ControlPlane, FakeProvider],
) -> None:
    cp, p = plane
    src = p.add("lc.nano", JobStatus(phase=AgentPhase.CHECKPOINTED))
    dst = p.add("lc.small", JobStatus(phase=AgentPhase.NONE), reachable=False)
    job_id = _job(cp, S.FLOATING, src.id, src.id, dst.id)
    cp.reconciler.run()
    job = cp.actions.job(job_id)
    assert job.status == S.EXECUTING and job.current_instance_id == src.id
    assert "abort" in p.agents[src.id].calls
    assert [i.id for i in p.list_instances()] == [src.id]
    assert f"delete {dst.id}" in p.calls


def test_instance_lost_releases_storage_and_security_group(
    plane: tuple[ControlPlane, FakeProvider],
) -> None:
    """Regression: the reconciler's "instance lost" path used to set FailToComplete and
    leave the job's storage and security group behind (on AWS, until `outgrow cleanup`)."""
    cp, p = plane
    gone = p.add("lc.nano", JobStatus(phase=AgentPhase.RUNNING))
    job_id = _job(cp, S.EXECUTING, gone.id, gone.id)
    p.instances.pop(gone.id)  # the instance vanished while the control plane was down
    cp.reconciler.run()
    job = cp.actions.job(job_id)
    assert job.status == S.FAIL_TO_COMPLETE and job.status_reason == "instance lost"
    assert f"delete-storage {job_id}" in p.calls
    assert f"delete-sg {job_id}" in p.calls


def test_orphans_are_swept_but_not_known_instances(
    plane: tuple[ControlPlane, FakeProvider],
) -> None:
    cp, p = plane
    mine = p.add("lc.nano", _running("x"))
    orphan = p.add("lc.nano", _running("y"))
    _job(cp, S.EXECUTING, mine.id, mine.id)
    cp.reconciler.run()
    assert [i.id for i in p.list_instances()] == [mine.id]
    assert f"delete {orphan.id}" in p.calls


SNAP = "instance lost (host restart?): restoring the job from its last snapshot"
WITH_SNAPSHOT: list[tuple[str, S, dict[str, Observed], Plan]] = [
    # its instance is gone (a host restart): back from its last snapshot, after the sweep
    (
        "executing gone",
        S.EXECUTING,
        {"a": UNUSABLE},
        Plan(end={"a": "failed"}, steps=(Step.RESTORE_SNAPSHOT,), to=S.FLOATING, reason=SNAP),
    ),
    (
        "floating, both gone",
        S.FLOATING,
        {"a": UNUSABLE, "b": SILENT},
        Plan(end={"a": "failed", "b": "failed"}, steps=(Step.RESTORE_SNAPSHOT,), reason=SNAP),
    ),
    # a snapshot changes nothing while the job runs, or is found frozen mid-move
    ("executing ok", S.EXECUTING, {"a": RUN}, Plan(keep="a")),
    ("floating frozen", S.FLOATING, {"a": FROZEN}, Plan("a", {}, (Step.ABORT,), S.EXECUTING,
                                                       FLOATING_BACK)),
    # nor for a job that was resuming, starting or suspended
    ("resuming", S.RESUMING, {"b": UNUSABLE},
     Plan(end={"b": "failed"}, to=S.SUSPENDED, reason="control plane restarted mid-resume")),
    ("suspended", S.SUSPENDED, {}, Plan()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "status", "seen", "plan"), WITH_SNAPSHOT, ids=[t[0] for t in WITH_SNAPSHOT]
)
def test_decision_with_a_snapshot(
    what: str, status: S, seen: dict[str, Observed], plan: Plan
) -> None:
    assert decide(status, "a", seen, has_snapshot=True) == plan
