"""The agent's HTTP API against a real instance: auth, validation, conflicts, lifecycle."""

from __future__ import annotations

from dataclasses import asdict

import httpx
import pytest

from outgrow.agent.client import AgentClient
from outgrow.agent.images import BUILTIN_IMAGES
from outgrow.errors import AgentError
from outgrow.orchestrator.migrate import agent, wait_job
from outgrow.providers.local.provider import LocalProvider
from waiting import wait_for_value, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]


def python_body(job_id: str, script: str) -> dict[str, object]:
    image = BUILTIN_IMAGES["python"]
    return {
        "job_id": job_id,
        "kind": "python",
        "script": script,
        "image": {**asdict(image), "pip": list(image.pip)},
    }


def test_agent_api_auth_validation_and_lifecycle(local_provider: LocalProvider) -> None:
    p = local_provider
    p.prepare_image(BUILTIN_IMAGES["python"])
    inst = p.create_instance("lc.nano")
    try:
        # Health answers without a token but tells nothing secret; everything else needs it.
        h = httpx.get(f"{inst.agent_url}/v1/health", timeout=5).json()
        assert h["instance_id"] == inst.id and "token" not in str(h)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            r = httpx.get(f"{inst.agent_url}/v1/job", headers=headers, timeout=5)
            assert r.status_code == 401
            assert r.json()["error"] == "unauthorized"
        with AgentClient(inst.agent_url, "wrong") as bad, pytest.raises(AgentError, match="token"):
            bad.job()

        with agent(inst) as a:
            assert a.job() == {"phase": "none"}
            with pytest.raises(AgentError, match="needs a job script"):
                a.start_job(python_body("j1", ""))
            with pytest.raises(AgentError, match="invalid job id"):
                a.start_job(python_body("../etc", "print(1)"))
            a.start_job(
                python_body("j1", "import time\nprint('hello', flush=True)\ntime.sleep(60)\n")
            )
            wait_job(inst)
            with pytest.raises(AgentError, match="already runs job j1"):
                a.start_job(python_body("j2", "print(2)"))
            wait_until(
                lambda: "hello" in a.logs("stdout")["data"],
                timeout=10,
                interval=0.1,
                what="'hello' in the job's stdout",
            )
            with pytest.raises(AgentError, match="no log stream"):
                a.logs("secrets")
            m = a.metrics()
            assert m["now"]["mem_limit_bytes"] == 256 * 1024**2
            assert m["now"]["cpu_quota_vcpus"] == 0.25
            st = a.stop_job(grace_s=2)
            assert st["phase"] == "stopped"
            # A finished job can be replaced by a new one on the same instance.
            a.start_job(python_body("j3", "import sys\nsys.exit(7)\n"))
            st = wait_for_value(
                a.job,
                lambda st: st["phase"] in ("failed", "exited"),
                timeout=30,
                interval=0.1,
                what="job j3 to end",
            )
            assert st["phase"] == "failed" and st["exit_code"] == 7
            assert st["message"] == "exited with code 7"
    finally:
        p.delete_instance(inst.id)
