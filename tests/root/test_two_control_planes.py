"""Two control planes on one host and one resource prefix (two data dirs): each keeps its
jobs, metrics and instances; a restart of one sweeps only its own orphans; `outgrow
cleanup` of one data dir never touches the other's instances; a second control plane on
the same data dir refuses to start, naming the first (issue 10: both handed out
198.18.0.2 and the first reached the second's agent)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_pool, leftovers, make_settings, unique_prefix
from cp_server import ServerProcess, free_port
from outgrow.providers.local.provider import LocalProvider
from waiting import wait_for_value, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

TICKER = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.2)\n"
POLICY = "[mem.upperBoundRatio=90,mem.upperBoundDuration=600s]"
OUTGROW = Path(sys.executable).parent / "outgrow"


class Api:
    def __init__(self, srv: ServerProcess):
        self.srv = srv
        self.h = {"Authorization": f"Bearer {srv.token()}"}

    def get(self, path: str) -> Any:
        r = httpx.get(self.srv.api + path, headers=self.h, timeout=30)
        r.raise_for_status()
        return r.json()

    def submit(self, name: str) -> str:
        body = {
            "name": name,
            "image": "python",
            "script": TICKER,
            "mem": "0.25",
            "cpu": "0.25",
            "migrate_policy": POLICY,
        }
        r = httpx.post(self.srv.api + "/jobs", headers=self.h, json=body, timeout=30)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def wait(self, job: str, statuses: set[str], timeout: float = 180) -> dict[str, Any]:
        view: dict[str, Any] = wait_for_value(
            lambda: self.get(f"/jobs/{job}"),
            lambda j: j["status"] in statuses,
            timeout=timeout,
            interval=0.2,
            what=f"job {job} to be {' or '.join(sorted(statuses))}",
            context=self.log,
        )
        return view

    def metrics_after(self, job: str, t: float) -> list[dict[str, Any]]:
        points: list[dict[str, Any]] = self.get(f"/jobs/{job}/metrics")["points"]
        return [p for p in points if p["t"] > t]

    def log(self) -> str:
        return (self.srv.tmp / "server.log").read_text(errors="replace")[-3000:]


def cleanup_cli(data_dir: Path, prefix: str, pool: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "OUTGROW_DATA_DIR": str(data_dir),
        "OUTGROW_RESOURCE_PREFIX": prefix,
        "OUTGROW_ADDRESS_POOL": pool,
    }
    return subprocess.run(
        [str(OUTGROW), "cleanup", "--json"], env=env, capture_output=True, text=True, timeout=120
    )


def test_two_control_planes_share_a_prefix_not_instances(tmp_path: Path) -> None:
    prefix = unique_prefix()
    pool = free_pool(prefix)
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    a, b = (ServerProcess(d, prefix, free_port(), pool) for d in dirs)
    sa, sb = (make_settings(d, prefix) for d in dirs)
    try:
        a.start()
        api_a = Api(a)
        job_a = api_a.submit("ticker-a")
        inst_a = api_a.wait(job_a, {"Executing"})["instance"]
        b.start()
        api_b = Api(b)
        job_b = api_b.submit("ticker-b")
        inst_b = api_b.wait(job_b, {"Executing"})["instance"]
        assert inst_a["address"] != inst_b["address"]  # one host-wide address table

        # Both keep their jobs, metrics and policies with both running.
        t0 = time.time()
        for api, job in ((api_a, job_a), (api_b, job_b)):
            wait_until(
                lambda api=api, job=job: api.metrics_after(job, t0),
                timeout=30,
                what=f"fresh metrics of {job}",
                context=api.log,
            )
        for api, job, inst in ((api_a, job_a, inst_a), (api_b, job_b, inst_b)):
            view = api.get(f"/jobs/{job}")
            assert view["status"] == "Executing" and view["instance"]["id"] == inst["id"]
            assert "upperBoundDuration=600s" in view["spec"]["migrate_policy"], view["spec"]
            assert {p["instance_id"] for p in api.metrics_after(job, t0)} == {inst["id"]}
            assert "invalid agent token" not in api.log()

        # An orphan of each: an instance its data dir has, its store does not.
        orphan_a = LocalProvider(sa).create_instance("lc.nano")
        orphan_b = LocalProvider(sb).create_instance("lc.nano")
        assert len({orphan_a.address, orphan_b.address, inst_a["address"]}) == 3

        # A restart of A sweeps A's orphan only.
        a.kill9()
        a.start()
        wait_until(
            lambda: LocalProvider(sa).describe_instance(orphan_a.id) is None,
            timeout=60,
            what="A's restart to delete A's orphan",
            context=api_a.log,
        )
        assert LocalProvider(sb).describe_instance(orphan_b.id) is not None
        assert api_a.wait(job_a, {"Executing"})["instance"]["id"] == inst_a["id"]
        t1 = time.time()
        wait_until(lambda: api_a.metrics_after(job_a, t1), timeout=30, what="A's metrics again")
        assert api_b.get(f"/jobs/{job_b}")["status"] == "Executing"

        # A second control plane on A's data dir refuses, naming the first.
        dup = ServerProcess(dirs[0], prefix, free_port(), pool)
        with pytest.raises(AssertionError):
            dup.start()
        assert dup.proc.wait(10) != 0
        assert (
            f"another control plane (pid {a.proc.pid}) already runs on data dir {dirs[0]}"
            in api_a.log()
        )

        # `outgrow cleanup` refuses on a data dir whose control plane runs ...
        refused = cleanup_cli(dirs[1], prefix, pool)
        assert refused.returncode == 1
        assert f"a control plane (pid {b.proc.pid}) runs on data dir {dirs[1]}" in refused.stderr
        # ... and once B is stopped removes B's instances, never A's.
        b.stop()
        done = cleanup_cli(dirs[1], prefix, pool)
        assert done.returncode == 0, done.stderr
        assert LocalProvider(sb).list_instances() == []
        assert [i.id for i in LocalProvider(sa).list_instances()] == [inst_a["id"]]
        view = api_a.get(f"/jobs/{job_a}")
        assert view["status"] == "Executing" and view["instance"]["id"] == inst_a["id"]
        t2 = time.time()
        wait_until(lambda: api_a.metrics_after(job_a, t2), timeout=30, what="A's job lives on")
    finally:
        a.stop()
        b.stop()
        for s in (sa, sb):
            LocalProvider(s).teardown()
        assert leftovers(prefix) == [], leftovers(prefix)
