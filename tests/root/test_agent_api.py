"""The agent's HTTP API against a real instance: auth, validation, conflicts, lifecycle."""

from __future__ import annotations

import httpx
import pytest

from outgrow.agentapi.client import AgentClient
from outgrow.agentapi.models import AgentPhase, ImageBody, JobStatus, StartJob
from outgrow.domain.images import BUILTIN_IMAGES
from outgrow.errors import (
    AgentError,
    ConflictError,
    NotFoundError,
    OutgrowError,
    ValidationError,
)
from outgrow.orchestrator.migrate import agent, wait_job
from outgrow.providers.local.provider import LocalProvider
from waiting import wait_for_value, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]


def python_body(job_id: str, script: str) -> StartJob:
    image = ImageBody.of(BUILTIN_IMAGES["python"])
    return StartJob(job_id=job_id, kind="python", script=script, image=image)


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

        # A body the typed client would not even send: the agent answers with its own error.
        bad_body = python_body("j1", "print(1)").model_dump() | {"job_id": "../etc"}
        r = httpx.post(
            f"{inst.agent_url}/v1/job",
            json=bad_body,
            headers={"Authorization": f"Bearer {inst.agent_token}"},
            timeout=5,
        )
        assert r.status_code == 422 and r.json()["error"] == "invalid"
        assert r.json()["field"] == "job_id", r.json()

        with agent(inst) as a:
            assert a.job() == JobStatus(phase=AgentPhase.NONE)
            with pytest.raises(ValidationError, match="needs a job script"):
                a.start_job(python_body("j1", ""))
            a.start_job(
                python_body("j1", "import time\nprint('hello', flush=True)\ntime.sleep(60)\n")
            )
            wait_job(inst)
            with pytest.raises(ConflictError, match="already runs job j1"):
                a.start_job(python_body("j2", "print(2)"))
            wait_until(
                lambda: "hello" in a.logs("stdout").data,
                timeout=10,
                interval=0.1,
                what="'hello' in the job's stdout",
            )
            with pytest.raises(NotFoundError, match="no log stream"):
                a.logs("secrets")
            now = a.metrics().now
            assert now is not None and now.mem_limit_bytes == 256 * 1024**2
            assert now.cpu_quota_vcpus == 0.25
            st = a.stop_job(grace_s=2)
            assert st.phase == AgentPhase.STOPPED
            # A finished job can be replaced by a new one on the same instance.
            a.start_job(python_body("j3", "import sys\nsys.exit(7)\n"))
            st = wait_for_value(
                a.job,
                lambda st: st.phase.ended,
                timeout=30,
                interval=0.1,
                what="job j3 to end",
            )
            assert st.phase == AgentPhase.FAILED and st.exit_code == 7
            assert st.message == "exited with code 7"
    finally:
        p.delete_instance(inst.id)


def test_a_move_target_prepares_the_image_before_the_ticket(
    local_provider: LocalProvider,
) -> None:
    """prepare_receive(image=…) makes the moving job's image present before it answers —
    the source is not frozen yet, so fetching or unpacking it never counts as downtime,
    and an image the target cannot get stops the move before anything freezes. Here: an
    OCI image this host does not have, whose registry does not answer."""
    p = local_provider
    p.prepare_image(BUILTIN_IMAGES["python"])
    inst = p.create_instance("lc.nano")
    missing = ImageBody(
        name="gone",
        kind="python",
        oci={"digest": "sha256:" + "0" * 64, "reference": "127.0.0.1:9/none:latest"},
    )
    try:
        with agent(inst) as a:
            with pytest.raises(OutgrowError, match=r"127\.0\.0\.1:9/none"):
                a.prepare_receive(page_server=True, image=missing)
            rx = a.prepare_receive(page_server=True, image=ImageBody.of(BUILTIN_IMAGES["python"]))
            assert rx.page_server_port is not None
            a.drop_receive(rx.receive_id)
            assert a.job().image is None  # no job here yet
            a.start_job(python_body("j1", "import time\ntime.sleep(60)\n"))
            wait_job(inst)
            # what the control plane hands a move's target
            assert a.job().image == ImageBody.of(BUILTIN_IMAGES["python"])
            a.stop_job(grace_s=1)
    finally:
        p.delete_instance(inst.id)
