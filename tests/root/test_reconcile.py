"""A control plane killed with SIGKILL (while a job executes, and in the middle of a move)
finds its jobs and instances again on restart: no job lost, none duplicated."""

from __future__ import annotations

import random
import time
from pathlib import Path

import httpx
import pytest

from conftest import leftovers, make_settings, unique_prefix
from cp_server import ServerProcess, free_port
from outgrow.providers.local.provider import LocalProvider

pytestmark = [pytest.mark.root, pytest.mark.slow]

COUNTER = (
    "import time\ni = 0\nwhile True:\n    i += 1\n    print(i, flush=True)\n    time.sleep(0.05)\n"
)


def test_kill9_during_executing_and_floating(tmp_path: Path) -> None:
    prefix = unique_prefix()
    srv = ServerProcess(tmp_path, prefix, free_port(), f"198.19.{random.randint(1, 250)}.0/24")
    srv.start()
    try:
        h = {"Authorization": f"Bearer {srv.token()}"}

        def job(ref: str) -> dict:
            r = httpx.get(f"{srv.api}/jobs/{ref}", headers=h, timeout=10)
            r.raise_for_status()
            return r.json()

        def wait(ref: str, st: set[str], timeout: float = 120) -> dict:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                j = job(ref)
                if j["status"] in st:
                    return j
                time.sleep(0.1)
            raise AssertionError(f"{ref}: {j['status']} {j['status_reason']}")

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
        time.sleep(1.0)
        srv.start()
        j = wait(ref, {"Executing"})
        assert j["instance"]["id"] == first
        n = counter(ref)
        time.sleep(0.5)
        m = counter(ref)
        assert m[-1] > n[-1] and m == list(range(1, len(m) + 1))

        # 2. kill -9 in the middle of a move (while Floating).
        r = httpx.post(f"{srv.api}/jobs/{ref}/migrate", headers=h, json={"mem": 1}, timeout=10)
        assert r.status_code == 202
        deadline = time.monotonic() + 30
        while job(ref)["status"] != "Floating":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(random.choice([0.05, 0.4, 0.8]))
        srv.kill9()
        time.sleep(1.0)
        srv.start()
        j = wait(ref, {"Executing"})
        live = [i for i in j["instances"] if i["ended_at"] is None]
        assert len(live) == 1 and live[0]["id"] == j["instance"]["id"]
        provider = LocalProvider(make_settings(tmp_path, prefix))
        assert [i.id for i in provider.list_instances()] == [j["instance"]["id"]]
        time.sleep(0.5)
        m = counter(ref)
        assert m == list(range(1, len(m) + 1)), "the job was restarted or duplicated"
        time.sleep(0.5)
        assert counter(ref)[-1] > m[-1]
        httpx.post(f"{srv.api}/jobs/{ref}/cancel", headers=h, timeout=10)
        wait(ref, {"Cancelled"})
    finally:
        srv.stop()
        LocalProvider(make_settings(tmp_path, prefix)).teardown()
    assert leftovers(prefix) == []
