"""The post-copy protocol of orchestrator/migrate.py against scripted agents (FAKE:
tests/fakes.py; the real moves are tests/root/test_postcopy.py): which calls in which
order, what a failure at each point leaves, and the mode the result and steps report."""

from __future__ import annotations

import pytest

from fakes import FakeProvider
from outgrow.agentapi.models import AgentPhase, JobStatus
from outgrow.errors import JobLostError, MigrationError
from outgrow.orchestrator.migrate import Migrator
from outgrow.providers.base import InstanceInfo

GIB = 1024**3


def setup() -> tuple[FakeProvider, InstanceInfo, InstanceInfo]:
    p = FakeProvider()
    src = p.add("lc.small", JobStatus(phase=AgentPhase.RUNNING, job_id="j1"))
    dst = p.add("lc.medium", JobStatus(phase=AgentPhase.NONE))
    return p, src, dst


def test_postcopy_drains_before_the_source_ends() -> None:
    p, src, dst = setup()
    steps: list[str] = []
    r = Migrator(p, p.connect).migrate(
        src, target=dst, mode="postcopy", on_step=steps.append, delete_source=False
    )
    assert (r.mode, r.mode_reason) == ("postcopy", "post-copy: moveMode=postcopy")
    assert (r.drain_s, r.lazy_pages) == (1.5, 1000)
    a, b = p.agents[src.id].calls, p.agents[dst.id].calls
    assert "checkpoint-lazy" in a and a[-1] == "commit" and "abort" not in a
    assert b[-2:] == ["restore-lazy", "drain"]
    assert any(s.startswith("all memory on the target after 1.50 s") for s in steps), steps


def test_auto_picks_by_the_sources_memory() -> None:
    p, src, dst = setup()
    p.agents[src.id].mem_used_bytes = 2 * GIB
    r = Migrator(p, p.connect).migrate(src, target=dst, mode="auto", delete_source=False)
    assert r.mode == "postcopy" and r.mode_reason.startswith("post-copy: 2.00 GiB in use")
    p, src, dst = setup()
    p.agents[src.id].mem_used_bytes = GIB // 4
    r = Migrator(p, p.connect).migrate(src, target=dst, mode="auto", delete_source=False)
    assert r.mode == "plain" and r.mode_reason == "plain: 0.25 GiB in use < 1.00 GiB"
    assert "checkpoint" in p.agents[src.id].calls and "drain" not in p.agents[dst.id].calls


@pytest.mark.parametrize("failing", ["checkpoint-lazy", "restore-lazy"])
def test_a_failure_before_the_restore_ends_resumes_the_source(failing: str) -> None:
    p, src, dst = setup()
    side = p.agents[src.id] if failing.startswith("checkpoint") else p.agents[dst.id]
    side.fail.add(failing)
    with pytest.raises(MigrationError, match="keeps running on"):
        Migrator(p, p.connect).migrate(src, target=dst, mode="postcopy", delete_source=False)
    a = p.agents[src.id]
    # aborted, then asked whether it still answers (a dead one would be restarted)
    assert a.calls[-2:] == ["abort", "health"] and "commit" not in a.calls
    assert a.status.phase == AgentPhase.RUNNING
    assert "drain" not in p.agents[dst.id].calls


def test_a_broken_drain_loses_the_job_and_ends_the_stale_source() -> None:
    p, src, dst = setup()
    p.agents[dst.id].drain_ok = False
    with pytest.raises(JobLostError, match=r"failed after the restore .*the job is lost"):
        Migrator(p, p.connect).migrate(src, target=dst, mode="postcopy", delete_source=False)
    a = p.agents[src.id]
    assert a.calls[-1] == "commit" and "abort" not in a.calls


@pytest.mark.parametrize("mode", ["plain", "postcopy"])
def test_a_source_agent_that_died_during_the_move_is_restarted(mode: str) -> None:
    """The source agent froze the job for the dump and died: the move fails, and the
    control plane starts the agent again (which resumes the job it finds frozen)."""
    p, src, dst = setup()
    p.agents[src.id].die_on.add("checkpoint-lazy" if mode == "postcopy" else "checkpoint")
    with pytest.raises(MigrationError, match="keeps running on"):
        Migrator(p, p.connect).migrate(src, target=dst, mode=mode, delete_source=False)
    assert f"restart-agent {src.id}" in p.calls
    assert p.agents[src.id].reachable


def test_a_live_source_agent_is_not_restarted() -> None:
    p, src, dst = setup()
    p.agents[dst.id].fail.add("restore-lazy")
    with pytest.raises(MigrationError):
        Migrator(p, p.connect).migrate(src, target=dst, mode="postcopy", delete_source=False)
    assert not [c for c in p.calls if c.startswith("restart-agent")]
