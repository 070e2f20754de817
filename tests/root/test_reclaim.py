"""SpotSurfer, locally: a Jupyter job on a (local) spot instance gets a reclaim notice in
the middle of a cell; it is moved to on-demand capacity before the deadline and the cell
finishes there with its state."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from cp_server import Server, control_plane
from jupyter_ws import KernelSession, create_kernel
from waiting import wait_for_value

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with control_plane(tmp_path_factory.mktemp("reclaim")) as server:
        yield server


def test_reclaim_notice_moves_a_running_cell(cp: Server) -> None:
    r = cp.post(
        "/jobs",
        {"name": "spotty", "image": "jupyter-server", "mem": "1", "vm_policy": "[spotFirst=true]"},
    )
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    j = cp.wait(job, {"Executing"})
    src = j["instance"]
    assert src["spot"] is True
    token = cp.token  # through the stable URL, with the outgrow API token
    kid = create_kernel(j["url"], token)
    ks = KernelSession(j["url"], token, kid)
    assert ks.run("x = 41; x").result == "41"
    msg = ks.execute(
        "import time\ntotal = 0\nfor i in range(60):\n"
        "    total += i\n    print(f'tick {i}', flush=True)\n    time.sleep(0.1)\n"
        "print('TOTAL', total)\n"
    )
    # The cell runs, its output coming through the stable URL (whose websocket stays open
    # across the move); the rest is read after the move.
    out = ks.collect(msg, timeout=60, until=lambda out: "tick 5" in out.text)

    # Non-admins may not reclaim; bad input is a 4xx.
    cp.post("/users", {"name": "carol", "password": "carol-password-1"})
    import httpx

    carol = httpx.post(
        cp.api + "/login", json={"name": "carol", "password": "carol-password-1"}, timeout=10
    ).json()["token"]
    assert cp.post(f"/instances/{src['id']}/reclaim", {"in_s": 5}, token=carol).status_code == 401
    assert cp.post(f"/instances/{src['id']}/reclaim", {"in_s": -1}).status_code == 422
    assert cp.post("/instances/nope/reclaim", {"in_s": 5}).status_code == 404

    r = cp.post(f"/instances/{src['id']}/reclaim", {"in_s": 20})
    assert r.status_code == 202, r.text
    j = wait_for_value(
        lambda: cp.job(job),
        lambda j: j["status"] == "Executing" and any(e["type"] == "migration" for e in j["events"]),
        timeout=25,
        interval=0.2,
        what=f"job {job} to move away from the reclaimed instance",
    )
    moves = [e for e in j["events"] if e["type"] == "migration"]
    assert "spot reclaim" in moves[-1]["reason"]
    dst = j["instance"]
    assert dst["id"] != src["id"] and dst["spot"] is False
    old = next(i for i in j["instances"] if i["id"] == src["id"])
    assert old["status"] == "reclaimed" and old["ended_at"]

    out = ks.collect(msg, timeout=60, out=out)
    assert [int(n) for n in re.findall(r"tick (\d+)", out.text)] == list(range(60))
    assert f"TOTAL {sum(range(60))}" in out.text
    assert ks.run("x").result == "41"
    ks.close()
    cp.post(f"/jobs/{job}/cancel")
    cp.wait(job, {"Cancelled"})


def test_short_notice_checkpoints_at_once_and_restores_elsewhere(cp: Server) -> None:
    """A notice shorter than the provider needs to create a target (local: a few
    seconds; AWS's two-minute notice against an instance boot): the job is checkpointed
    at once, the spot instance released, and the job restored on on-demand capacity."""
    r = cp.post(
        "/jobs",
        {"name": "hurry", "image": "jupyter-server", "mem": "0.5", "vm_policy": "[spotFirst=true]"},
    )
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    j = cp.wait(job, {"Executing"})
    src = j["instance"]
    assert src["spot"] is True
    kid = create_kernel(j["url"], cp.token)
    ks = KernelSession(j["url"], cp.token, kid)
    assert ks.run("y = [i * i for i in range(1000)]; sum(y)").result == str(
        sum(i * i for i in range(1000))
    )
    short = cp.plane.provider.create_estimate_s / 2
    assert cp.post(f"/instances/{src['id']}/reclaim", {"in_s": short}).status_code == 202

    def job_view() -> dict[str, Any]:
        j = cp.job(job)
        assert j["status"] not in ("FailToComplete", "Cancelled"), j["status_reason"]
        return j

    j = wait_for_value(
        job_view,
        lambda j: j["status"] == "Executing" and j["instance"] and j["instance"]["id"] != src["id"],
        timeout=60,
        interval=0.1,
        what=f"job {job} restored on another instance",
    )
    reasons = [e["reason"] for e in j["events"]]
    assert any("checkpointing now" in r for r in reasons), reasons
    assert any(r.startswith("Suspended") or "checkpoint saved" in r for r in reasons), reasons
    assert j["instance"]["spot"] is False
    old = next(i for i in j["instances"] if i["id"] == src["id"])
    assert old["status"] == "reclaimed"
    ks.close()
    ks = KernelSession(j["url"], cp.token, kid)  # the same kernel, restored
    assert ks.run("len(y), y[-1]").result == "(1000, 998001)"
    ks.close()
    cp.post(f"/jobs/{job}/cancel")
    cp.wait(job, {"Cancelled"})
