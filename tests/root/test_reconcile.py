"""A control plane killed with SIGKILL (while a job executes, and in the middle of a move)
finds its jobs and instances again on restart: no job lost, none duplicated."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_pool, leftovers, make_settings, unique_prefix
from cp_server import ServerProcess, free_port
from outgrow.agentapi.client import AgentClient
from outgrow.agentapi.models import CheckpointRequest
from outgrow.controlplane.images import Images
from outgrow.controlplane.instances import Instances
from outgrow.providers.local.provider import LocalProvider
from outgrow.store import Store
from waiting import wait_for_value, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

COUNTER = (
    "import time\ni = 0\nwhile True:\n    i += 1\n    print(i, flush=True)\n    time.sleep(0.05)\n"
)


def _live(j: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in j["instances"] if i["ended_at"] is None]


# Where in a move (while Floating) the control plane is killed. Each run waits for the
# moment itself; a random sleep after Floating (which, timed, always landed while the
# target was being created) made the moment differ from run to run.
MOVE_MOMENTS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "creating the target": lambda j: j["status"] == "Floating" and len(_live(j)) == 1,
    "target recorded": lambda j: (
        j["status"] == "Floating" and any(i["status"] == "starting" for i in _live(j))
    ),
}


@pytest.mark.parametrize("moment", list(MOVE_MOMENTS))
def test_kill9_during_executing_and_floating(tmp_path: Path, moment: str) -> None:
    prefix = unique_prefix()
    srv = ServerProcess(tmp_path, prefix, free_port(), free_pool(prefix))
    srv.start()
    try:
        h = {"Authorization": f"Bearer {srv.token()}"}

        def job(ref: str) -> dict:
            r = httpx.get(f"{srv.api}/jobs/{ref}", headers=h, timeout=10)
            r.raise_for_status()
            return r.json()

        def wait(ref: str, st: set[str], timeout: float = 120) -> dict:
            return wait_for_value(
                lambda: job(ref),
                lambda j: j["status"] in st,
                timeout=timeout,
                interval=0.1,
                what=f"job {ref} to be {' or '.join(sorted(st))}",
            )

        def counter(ref: str) -> list[int]:
            r = httpx.get(f"{srv.api}/jobs/{ref}/logs", headers=h, timeout=10)
            return [int(x) for x in r.json()["data"].split()]

        r = httpx.post(
            f"{srv.api}/jobs",
            headers=h,
            timeout=30,
            json={
                "name": "survivor",
                "image": "python",
                "script": COUNTER,
                "mem": "0.25",
                "cpu": "0.25",
            },
        )
        ref = r.json()["id"]
        first = wait(ref, {"Executing"})["instance"]["id"]

        # 1. kill -9 while Executing: the job goes on meanwhile, and is found again.
        srv.kill9()
        stdout = tmp_path / "jobs" / ref / "logs" / "stdout.log"  # what the API serves
        down_at = len(stdout.read_text().split())
        wait_until(
            lambda: len(stdout.read_text().split()) >= down_at + 5,
            timeout=30,
            what="the job to print on while the control plane is down",
        )
        srv.start()
        j = wait(ref, {"Executing"})
        assert j["instance"]["id"] == first
        n = counter(ref)
        m = wait_for_value(
            lambda: counter(ref),
            lambda m: m[-1] > n[-1],
            timeout=30,
            what=f"the job to print past {n[-1]} after the restart",
        )
        assert m[-1] > n[-1] and m == list(range(1, len(m) + 1))

        # 2. kill -9 in the middle of a move (while Floating).
        r = httpx.post(f"{srv.api}/jobs/{ref}/migrate", headers=h, json={"mem": 1}, timeout=10)
        assert r.status_code == 202
        wait_for_value(
            lambda: job(ref),
            MOVE_MOMENTS[moment],
            timeout=30,
            interval=0.02,
            what=f"the move of {ref} to reach the moment: {moment}",
        )
        srv.kill9()
        srv.start()
        j = wait(ref, {"Executing"})
        live = [i for i in j["instances"] if i["ended_at"] is None]
        assert len(live) == 1 and live[0]["id"] == j["instance"]["id"]
        provider = LocalProvider(make_settings(tmp_path, prefix))
        assert [i.id for i in provider.list_instances()] == [j["instance"]["id"]]
        n = counter(ref)
        m = wait_for_value(
            lambda: counter(ref),
            lambda m: m[-1] > n[-1],
            timeout=30,
            what=f"the job to print past {n[-1]} after the restart",
        )
        assert m == list(range(1, len(m) + 1)), "the job was restarted or duplicated"
        wait_until(
            lambda: counter(ref)[-1] > m[-1],
            timeout=30,
            what=f"the job to run on (print past {m[-1]})",
        )
        httpx.post(f"{srv.api}/jobs/{ref}/cancel", headers=h, timeout=10)
        wait(ref, {"Cancelled"})
    finally:
        srv.stop()
        LocalProvider(make_settings(tmp_path, prefix)).teardown()
    assert leftovers(prefix) == []


def test_kill9_after_the_source_stopped_in_a_volume_move(tmp_path: Path) -> None:
    """The worst moment of a move whose storage moves: the source's tree has ended (its
    images kept) and the volume has left it, when the control plane dies. Driven to that
    exact point by hand with the real agents, provider and store (what the dead control
    plane had done), then restarted: the job is restored on the source from its kept
    checkpoint with its volume, the half-made target is deleted, nothing restarts."""
    prefix = unique_prefix()
    pool = free_pool(prefix)
    extra = {"OUTGROW_LOCAL_JOB_STORAGE": "volume", "OUTGROW_LOCAL_VOLUME_GIB": "0.25"}
    srv = ServerProcess(tmp_path, prefix, free_port(), pool, extra_env=extra)
    settings = make_settings(
        tmp_path, prefix, address_pool=pool, local_job_storage="volume", local_volume_gib=0.25
    )
    srv.start()
    try:
        h = {"Authorization": f"Bearer {srv.token()}"}
        r = httpx.post(
            f"{srv.api}/jobs",
            headers=h,
            timeout=30,
            json={"name": "cut", "image": "python", "script": COUNTER, "mem": "0.25"},
        )
        ref = r.json()["id"]
        j = _wait(srv, h, ref, {"Executing"})
        src_id = j["instance"]["id"]
        srv.kill9()

        provider = LocalProvider(settings)
        source = provider.describe_instance(src_id)
        assert source is not None
        target = provider.create_instance("lc.small", tags={"outgrow:job": ref})
        store = Store.open(f"sqlite:///{tmp_path}/outgrow.db")
        try:
            # What the dead control plane had recorded: the target, the Floating state.
            instances = Instances(store, provider, Images(store), threading.Event())
            instances.record(ref, target, "starting")
            store.set_status(ref, "Floating", "manual → lc.small")
        finally:
            store.close()
        storage = provider.attach_job_storage(ref, source)
        with (
            AgentClient(source.agent_url, source.agent_token) as a,
            AgentClient(target.agent_url, target.agent_token) as b,
        ):
            rx = b.prepare_receive(page_server=False)
            a.checkpoint(
                CheckpointRequest(
                    target_url=target.agent_url,
                    target_token=target.agent_token,
                    receive_id=rx.receive_id,
                )
            )
            a.commit(keep_images=True)
            a.release_storage(ref, storage)
            provider.detach_job_storage(ref, source)
            assert a.job().kept_checkpoint is True
        job_dir = tmp_path / "jobs" / ref
        assert not os.path.ismount(job_dir)

        srv.start()  # the control plane comes back
        j = _wait(srv, h, ref, {"Executing"})
        assert j["instance"]["id"] == src_id
        assert any("kept checkpoint" in e["reason"] for e in j["events"]), j["events"]
        assert [i.id for i in provider.list_instances()] == [src_id]
        assert os.path.ismount(job_dir)
        m = _counter(srv, h, ref)
        assert m == list(range(1, len(m) + 1)), "the job was restarted or duplicated"
        wait_until(  # and it runs on
            lambda: _counter(srv, h, ref)[-1] > m[-1],
            timeout=30,
            what=f"the restored job to run on (print past {m[-1]})",
        )
        httpx.post(f"{srv.api}/jobs/{ref}/cancel", headers=h, timeout=10)
        _wait(srv, h, ref, {"Cancelled"})
        assert not os.path.ismount(job_dir)
    finally:
        srv.stop()
        LocalProvider(settings).teardown()
    assert leftovers(prefix, str(tmp_path)) == []


def _wait(srv: ServerProcess, h: dict[str, str], ref: str, st: set[str]) -> dict[str, Any]:
    return wait_for_value(
        lambda: httpx.get(f"{srv.api}/jobs/{ref}", headers=h, timeout=10).json(),
        lambda j: j["status"] in st,
        timeout=120,
        interval=0.1,
        what=f"job {ref} to be {' or '.join(sorted(st))}",
    )


def _counter(srv: ServerProcess, h: dict[str, str], ref: str) -> list[int]:
    r = httpx.get(f"{srv.api}/jobs/{ref}/logs", headers=h, timeout=10)
    return [int(x) for x in r.json()["data"].split()]
