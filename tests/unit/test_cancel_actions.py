"""A cancel interrupts a job action while its provider waits — for a migration's target,
for a resume's instance — and the job ends Cancelled with nothing left. A FAKE provider
(tests/fakes.py) whose instances "boot" until cancelled stands in for the wait; the real
waits are tested in tests/root/test_cancel.py and against moto in
tests/integration/test_aws_control_plane.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from fakes import FakeProvider
from outgrow.agentapi.models import AgentPhase, JobStatus
from outgrow.cancel import check
from outgrow.controlplane.service import ControlPlane
from outgrow.domain.jobs import JobSpec
from outgrow.domain.security import SecurityGroup
from outgrow.domain.states import JobState as S
from outgrow.providers.base import InstanceInfo
from outgrow.settings import Settings
from outgrow.store import Store
from waiting import wait_until


class BootingFakeProvider(FakeProvider):
    """FAKE: once ``booting`` is set, a new instance's agent never answers; the wait ends
    only when the action is cancelled (CancelledError, nothing made)."""

    def __init__(self) -> None:
        super().__init__()
        self.booting = False
        self.waiting = threading.Event()

    def create_instance(
        self,
        type_name: str,
        *,
        spot: bool = False,
        tags: Mapping[str, str] | None = None,
        security_group: SecurityGroup | None = None,
        cancel: threading.Event | None = None,
    ) -> InstanceInfo:
        if self.booting:
            assert cancel is not None, "the control plane must pass its cancel token"
            self.waiting.set()
            cancel.wait(30)
            check(cancel, "waiting for the agent (fake)")
            raise AssertionError("not cancelled within 30 s")
        return super().create_instance(
            type_name, spot=spot, tags=tags, security_group=security_group
        )


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[tuple[ControlPlane, BootingFakeProvider]]:
    provider = BootingFakeProvider()
    s = Store.open("sqlite://")
    cp = ControlPlane(Settings(data_dir=tmp_path), s, provider, connect=provider.connect)
    try:
        yield cp, provider
    finally:
        cp.stop()
        s.close()


def _executing(cp: ControlPlane, p: FakeProvider) -> tuple[str, str]:
    user = cp.store.create_user("admin", "password", is_admin=True)
    job_id = cp.store.create_job(user.id, JobSpec(name="nb", image="python", script="1"), "t")
    inst = p.add("lc.nano", JobStatus(phase=AgentPhase.RUNNING, job_id=job_id))
    cp.instances.record(job_id, inst)
    for st in (S.INITIALIZING, S.STARTING, S.EXECUTING):
        cp.store.set_status(job_id, st, "test")
    cp.store.update_job(job_id, current_instance_id=inst.id)
    return job_id, inst.id


def _cancel_when_waiting(cp: ControlPlane, p: BootingFakeProvider, job_id: str) -> None:
    wait_until(p.waiting.is_set, timeout=10, what="the action to wait for an instance")
    admin = cp.store.get_user("admin")
    assert admin is not None
    cp.cancel(admin, job_id)
    wait_until(
        lambda: cp.actions.job(job_id).status == S.CANCELLED and not cp.workers.busy(job_id),
        timeout=10,
        what="the job to be Cancelled",
    )


def test_cancel_during_a_migrations_target_creation(
    plane: tuple[ControlPlane, BootingFakeProvider],
) -> None:
    cp, p = plane
    job_id, source = _executing(cp, p)
    p.booting = True
    assert cp.workers.run(job_id, cp.actions.migrate, cp.catalog.get("lc.small"), "test")
    _cancel_when_waiting(cp, p, job_id)
    job = cp.actions.job(job_id)
    assert job.status_reason == "cancelled by admin" and job.current_instance_id is None
    assert [(r.id, r.ended_at is not None) for r in cp.store.instances(job_id)] == [(source, True)]
    assert p.instances == {}  # the source deleted, no target made
    states = [e.to_state for e in cp.store.events(job_id) if e.type == "state"]
    assert states[-3:] == ["Floating", "Cancelling", "Cancelled"]


def test_cancel_during_a_resumes_instance_creation(
    plane: tuple[ControlPlane, BootingFakeProvider],
) -> None:
    cp, p = plane
    job_id, _ = _executing(cp, p)
    cp.actions.suspend(job_id, "test")
    checkpoint = cp.actions.job(job_id).checkpoint_dir
    assert checkpoint
    p.booting = True
    assert cp.workers.run(job_id, cp.actions.resume, "test")
    _cancel_when_waiting(cp, p, job_id)
    assert f"delete-checkpoint {checkpoint}" in p.calls  # the job ended: nothing kept
    assert p.instances == {}
