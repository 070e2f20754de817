"""A snapshot (a checkpoint the job runs on from): the job pauses only for the dump; after
its instance is lost, the job comes back from the snapshot on a new instance."""

from __future__ import annotations

import pytest
from test_migration import COUNTER, counter_lines, start_job

from outgrow.agentapi.models import CheckpointRequest, RestoreRequest
from outgrow.orchestrator.migrate import agent
from outgrow.providers.local.provider import LocalProvider
from waiting import wait_for_value, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_the_job_runs_on_after_a_snapshot_and_comes_back_from_it(
    local_provider: LocalProvider,
) -> None:
    p = local_provider
    src, body = start_job(p, "lc.micro", "python", script=COUNTER)
    wait_until(lambda: len(counter_lines(src)) >= 10, timeout=30, what="the job to count to 10")
    dest = p.settings.data_dir / "snapshots" / body.job_id / "s1"
    with agent(src) as a:
        r = a.snapshot(CheckpointRequest(dest_dir=str(dest)))
        at = counter_lines(src)[-1][0]
        assert a.job().phase == "running"
    assert r.freeze_s + r.dump_s < 10 and r.local_bytes > 0
    wait_until(lambda: counter_lines(src)[-1][0] >= at + 10, timeout=30, what="counting on")
    p.delete_instance(src.id)  # the host lost it: the snapshot is all that is left

    again = p.create_instance("lc.micro")
    with agent(again) as a:
        a.restore(RestoreRequest(source_dir=str(dest)))
    lines = wait_for_value(
        lambda: counter_lines(again),
        lambda ls: ls[-1][0] > at + 20,
        timeout=60,
        what="the job restored from its snapshot to count on",
    )
    numbers = [n for n, _ in lines]
    # The log file kept the lines written after the snapshot; the restored process
    # counts on from the snapshot's number: a repeat, never a gap.
    assert numbers[-1] > at
    assert set(range(1, numbers[-1] + 1)) <= set(numbers)
    p.delete_instance(again.id)
