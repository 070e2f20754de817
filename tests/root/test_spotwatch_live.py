"""spotwatch end to end on this host: the watcher runs exactly as the ``outgrow-spotwatch``
unit runs it (``python -m outgrow.providers.aws.spotwatch``), polls FakeImds (a fake of
EC2's metadata service, which cannot exist here) and relays to the REAL agent of a local
(spot) instance running a job, whose job status then carries the reclaim deadline."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import leftovers
from fake_imds import ACTION, FakeImds
from outgrow.agentapi.client import AgentClient
from outgrow.agentapi.models import ImageBody, StartJob
from outgrow.domain.images import BUILTIN_IMAGES
from outgrow.orchestrator.migrate import agent, wait_job
from outgrow.providers.local.provider import LocalProvider
from waiting import wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]


def spotwatch(
    imds: FakeImds, agent_url: str, token_file: Path, *extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "outgrow.providers.aws.spotwatch",
            "--imds-url",
            imds.url,
            "--agent-url",
            agent_url,
            "--token-file",
            str(token_file),
            "--interval",
            "0.3",
            *extra,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen[str]) -> str:
    proc.kill()
    return proc.communicate(timeout=10)[1]


def wait_for(
    cond: Callable[[], Any], timeout: float, what: str, proc: subprocess.Popen[str]
) -> Any:
    """``cond()`` once truthy; fails at once if the watcher exits meanwhile."""

    def check() -> Any:
        got = cond()
        if not got and proc.poll() is not None:
            raise AssertionError(f"spotwatch exited (rc={proc.poll()}) before {what}")
        return got

    try:
        return wait_until(check, timeout=timeout, interval=0.1, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nspotwatch stderr:\n{stop(proc)[-3000:]}") from None


def test_spotwatch_relays_imds_signals_to_a_real_agent(
    local_provider: LocalProvider, tmp_path: Path
) -> None:
    p = local_provider
    image = BUILTIN_IMAGES["python"]
    p.prepare_image(image)
    inst = p.create_instance("lc.nano", spot=True)
    log_file = p.root / inst.id / "agent.log"
    token_file = tmp_path / "agent.token"
    token_file.write_text(inst.agent_token + "\n")
    procs: list[subprocess.Popen[str]] = []
    imds = FakeImds().start()
    try:
        with agent(inst) as a:
            a.start_job(
                StartJob(
                    job_id="spotty",
                    kind="python",
                    script="import time\ntime.sleep(300)\n",
                    image=ImageBody.of(image),
                )
            )
            wait_job(inst)
            assert a.job().reclaim_at is None

            # 1. No signal yet: the watcher polls (IMDSv2) and tells the agent nothing.
            w = spotwatch(imds, inst.agent_url, token_file)
            procs.append(w)
            wait_for(lambda: len(imds.seen("GET", 404)) >= 6, 15, "6 IMDS polls", w)
            assert a.job().reclaim_at is None

            # 2. AWS decides to take the instance in 90 s.
            t0 = time.time()
            imds.set_instance_action("terminate", t0 + 90)
            at = wait_for(lambda: a.job().reclaim_at, 5, "a reclaim deadline", w)
            assert at == pytest.approx(t0 + 90, abs=3)
            st = a.job()
            assert st.phase == "running" and st.job_id == "spotty"
            assert st.reclaim_source == "aws spot instance-action"
            assert "reclaim notice (aws spot instance-action)" in log_file.read_text()
            assert a.health().instance_id == inst.id
            # Polled on with its one cached token; the same deadline is not posted again.
            n = len(imds.seen("GET"))
            wait_for(lambda: len(imds.seen("GET")) >= n + 6, 10, "6 more IMDS polls", w)
            assert a.job().reclaim_at == at
            assert log_file.read_text().count("reclaim notice (") == 1
            assert len(imds.seen("PUT")) == 1 and not imds.seen(status=401)
            stop(w)

            # 3. Another run: a rebalance recommendation only, relayed with the lead time
            # (shorter than what is left of the 90 s, so the agent's deadline moves up).
            imds.clear(ACTION)
            t1 = time.time()
            imds.set_rebalance(t1)
            w = spotwatch(imds, inst.agent_url, token_file, "--rebalance-lead-s", "30")
            procs.append(w)
            at2 = wait_for(
                lambda: (v := a.job().reclaim_at) != at and v, 10, "a rebalance deadline", w
            )
            assert at2 == pytest.approx(time.time() + 30, abs=4)
            assert at2 < at
            assert a.job().reclaim_source == "aws rebalance recommendation"
            assert "reclaim notice (aws rebalance recommendation)" in log_file.read_text()
            stop(w)

        # 4. A wrong agent token: the agent refuses, the watcher keeps polling.
        token_file.write_text("not-the-token\n")
        w = spotwatch(imds, inst.agent_url, token_file, "--rebalance-lead-s", "1")
        procs.append(w)
        n = len(imds.seen("GET"))
        wait_for(lambda: len(imds.seen("GET")) >= n + 6, 10, "6 more IMDS polls", w)
        with AgentClient(inst.agent_url, inst.agent_token) as a:
            assert a.job().reclaim_at == at2
        err = stop(w)
        assert "missing or invalid agent token" in err
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop(proc)
        imds.stop()
        p.delete_instance(inst.id)
    assert [x for x in leftovers(p.prefix) if inst.id in x] == []
    assert not (p.root / inst.id).exists()
