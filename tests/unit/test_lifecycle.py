"""The Lifecycle: every state change through one place, its hooks after the commit; and the
terminal clean-up reached from every path that ends a job (a FAKE provider records what
was released; see tests/fakes.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes import FakeProvider
from outgrow.agentapi.models import AgentPhase, JobStatus
from outgrow.controlplane.lifecycle import Lifecycle
from outgrow.controlplane.service import ControlPlane
from outgrow.domain.jobs import JobSpec
from outgrow.domain.states import TERMINAL_STATES, Transition
from outgrow.domain.states import JobState as S
from outgrow.errors import ConflictError
from outgrow.settings import Settings
from outgrow.store import Store
from waiting import wait_until


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store.open("sqlite://")
    yield s
    s.close()


def _job(store: Store, name: str = "j") -> str:
    user = store.get_user("u") or store.create_user("u", "password")
    return store.create_job(user.id, JobSpec(name=name, image="python", script="1"), "t")


def test_hooks_run_after_the_commit_in_order(store: Store) -> None:
    life = Lifecycle(store)
    seen: list[str] = []

    def record(tag: str):  # type: ignore[no-untyped-def]
        def hook(job_id: str, t: Transition) -> None:
            # after the commit: the store already says so
            assert (job := store.get_job(job_id)) is not None and job.status == t.to_state
            seen.append(f"{tag}:{t.from_state}->{t.to_state}")

        return hook

    def broken(job_id: str, t: Transition) -> None:
        raise RuntimeError("a broken hook never undoes the change")

    life.after(record("any"), name="any")
    life.after(broken, name="broken")
    life.on_terminal(record("end"), name="end")
    life.after(record("left-initializing"), name="li", leaving=[S.INITIALIZING])
    job_id = _job(store)
    life.transition(job_id, S.INITIALIZING, "go")
    life.transition(job_id, S.FAIL_TO_EXECUTE, "no")
    assert seen == [
        "any:Submitted->Initializing",
        "any:Initializing->FailToExecute",
        "end:Initializing->FailToExecute",
        "left-initializing:Initializing->FailToExecute",
    ]
    with pytest.raises(ConflictError):  # an illegal transition runs no hook
        life.transition(job_id, S.EXECUTING, "again")
    assert len(seen) == 4


class _Hooks:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def before_checkpoint(self, job_id: str) -> None:
        self.calls.append(f"before {job_id}")

    def after_move(self, job_id: str) -> None:
        self.calls.append(f"after {job_id}")


def test_move_hooks_fire_when_a_move_ends_whatever_the_outcome(store: Store) -> None:
    life = Lifecycle(store)
    hooks = _Hooks()
    life.move_hooks.append(hooks)
    job_id = _job(store)
    for st in (S.INITIALIZING, S.STARTING, S.EXECUTING, S.FLOATING):
        life.transition(job_id, st, "x")
    assert hooks.calls == []
    life.transition(job_id, S.EXECUTING, "moved")  # leaving Floating
    life.transition(job_id, S.SUSPENDING, "idle")
    life.transition(job_id, S.EXECUTING, "suspend failed")  # leaving Suspending
    assert hooks.calls == [f"after {job_id}", f"after {job_id}"]


# ---- terminal clean-up from every path ----------------------------------------------------
@pytest.fixture
def plane(tmp_path: Path) -> Iterator[tuple[ControlPlane, FakeProvider]]:
    provider = FakeProvider()
    s = Store.open("sqlite://")
    cp = ControlPlane(Settings(data_dir=tmp_path), s, provider, connect=provider.connect)
    try:
        yield cp, provider
    finally:
        cp.stop()
        s.close()


def _executing(cp: ControlPlane, p: FakeProvider) -> tuple[str, str]:
    job_id = _job(cp.store, "nb")
    inst = p.add("lc.nano", JobStatus(phase=AgentPhase.RUNNING, job_id=job_id))
    cp.instances.record(job_id, inst)
    for st in (S.INITIALIZING, S.STARTING, S.EXECUTING):
        cp.store.set_status(job_id, st, "test")
    cp.store.update_job(job_id, current_instance_id=inst.id)
    return job_id, inst.id


def _released(p: FakeProvider, job_id: str) -> bool:
    return f"delete-storage {job_id}" in p.calls and f"delete-sg {job_id}" in p.calls


def test_a_reclaimed_instance_releases_the_jobs_storage_and_group(
    plane: tuple[ControlPlane, FakeProvider],
) -> None:
    """Regression: the scheduler's lost-instance path (a reclaim deadline passed with the
    job still on the instance) used to end the job without releasing its storage and
    security group."""
    cp, p = plane
    job_id, iid = _executing(cp, p)
    p.reclaimed = [iid]
    cp.scheduler.tick()
    wait_until(
        lambda: cp.actions.job(job_id).status in TERMINAL_STATES and not cp.workers.busy(job_id),
        timeout=10,
        what="the job to end after its instance was reclaimed",
    )
    job = cp.actions.job(job_id)
    assert job.status == S.FAIL_TO_COMPLETE and "reclaimed" in job.status_reason
    assert job.current_instance_id is None
    assert _released(p, job_id), p.calls
    assert [r.status for r in cp.store.instances(job_id)] == ["reclaimed"]


def test_every_ending_releases_once(plane: tuple[ControlPlane, FakeProvider]) -> None:
    cp, p = plane
    job_id, iid = _executing(cp, p)
    p.agents[iid].status = JobStatus(phase=AgentPhase.EXITED, job_id=job_id, exit_code=0)
    cp.actions.finish(job_id, AgentPhase.EXITED, 0, "completed")
    assert cp.actions.job(job_id).status == S.COMPLETED
    assert p.calls.count(f"delete-storage {job_id}") == 1
    assert p.calls.count(f"delete-sg {job_id}") == 1
    assert f"delete {iid}" in p.calls


def test_cancelling_a_suspended_job_drops_its_checkpoint(
    plane: tuple[ControlPlane, FakeProvider],
) -> None:
    cp, p = plane
    job_id, _ = _executing(cp, p)
    cp.actions.suspend(job_id, "test")
    job = cp.actions.job(job_id)
    assert job.status == S.SUSPENDED and job.checkpoint_dir
    cp.actions.cancel(job_id, "user")
    assert cp.actions.job(job_id).status == S.CANCELLED
    assert f"delete-checkpoint {job.checkpoint_dir}" in p.calls
    assert _released(p, job_id)
