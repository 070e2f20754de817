"""Jobs from an OCI image, for real: the test image (a Debian rootfs with python3 and a
jupyter_server venv, built without any registry: tests/oci_image.py) imported through the
API, a batch job moved mid-run with its writes into its root and its job directory kept,
the image's own Jupyter server moved and suspended/resumed with a kernel's state intact."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cp_server import Server, control_plane
from jupyter_ws import KernelSession, create_kernel
from waiting import wait_for_value, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

IMAGE = "oci-jobs"
COUNTER = (
    "import os, time\n"
    "i = 0\n"
    "while True:\n"
    "    i += 1\n"
    "    print(i, flush=True)\n"
    "    open('in-the-root', 'w').write(str(i))\n"  # the cwd: the image's WorkingDir
    "    open(os.environ['OUTGROW_WORKSPACE'] + '/in-the-job-dir', 'w').write(str(i))\n"
    "    time.sleep(0.1)\n"
)


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory, jupyter_oci_archive: Path) -> Iterator[Server]:
    with control_plane(tmp_path_factory.mktemp("ocijobs")) as server:
        t0 = time.monotonic()
        with open(jupyter_oci_archive, "rb") as f:
            r = httpx.post(
                server.api + "/images/import",
                params={"name": IMAGE},
                content=iter(lambda: f.read(1 << 20), b""),
                headers=server.headers(),
                timeout=900,
            )
        assert r.status_code == 201, r.text
        print(f"\nimported and unpacked the test image in {time.monotonic() - t0:.1f} s")
        yield server


def counter(cp: Server, job: str) -> list[int]:
    r = cp.get(f"/jobs/{job}/logs")
    return [int(x) for x in r.json()["data"].split()]


def test_a_batch_job_moves_with_its_root_and_its_directory(cp: Server) -> None:
    r = cp.post("/jobs", {"name": "count", "image": IMAGE, "script": COUNTER, "mem": "0.5"})
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    j = cp.wait(job, {"Executing"})
    wait_until(lambda: len(counter(cp, job)) >= 10, timeout=60, what="the job to count to 10")
    assert cp.post(f"/jobs/{job}/migrate", {"mem": 1}).status_code == 202
    moved = wait_for_value(
        lambda: cp.job(job),
        lambda j2: j2["status"] == "Executing" and j2["instance"]["id"] != j["instance"]["id"],
        timeout=180,
        what="the job to move",
    )
    n = counter(cp, job)[-1]
    numbers = wait_for_value(
        lambda: counter(cp, job), lambda c: c[-1] >= n + 10, timeout=60, what="counting on"
    )
    assert numbers == list(range(1, len(numbers) + 1)), "restarted or duplicated"
    migrations = [e for e in moved["events"] if e["type"] == "migration"]
    assert migrations and migrations[-1]["downtime_s"] < 30
    # Both files are written by the same process on the target: its root's own layer
    # moved (the job directory holds it), and so did the job directory.
    data = cp.plane.settings.data_dir / "jobs" / job
    wait_until(
        lambda: (
            int((data / "rootfs" / "upper" / "root" / "in-the-root").read_text() or 0) > numbers[-1]
        ),
        timeout=30,
        what="the write into the root to go on after the move",
    )
    assert int((data / "workspace" / "in-the-job-dir").read_text() or 0) >= numbers[-1]
    print(f"\nOCI batch job moved: downtime {migrations[-1]['downtime_s']:.2f} s")
    cp.post(f"/jobs/{job}/cancel")
    cp.wait(job, {"Cancelled"})


def _kernel(j: dict[str, Any], token: str) -> KernelSession:
    kid = create_kernel(j["url"], token)
    return KernelSession(j["url"], token, kid)


def test_the_images_own_jupyter_moves_and_sleeps(cp: Server) -> None:
    r = cp.post("/jobs", {"name": "nb", "image": IMAGE, "jupyter": "server", "mem": "0.5"})
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    j = cp.wait(job, {"Executing"})
    ks = _kernel(j, cp.token)
    assert ks.run("import sys, os; x = 41; sys.prefix").result == "'/opt/jupyter'"
    assert ks.run("os.environ['OUTGROW_TEST_IMAGE']").result == "'1'"  # the image's Env
    first = j["instance"]["id"]
    ks.close()
    assert cp.post(f"/jobs/{job}/migrate", {"mem": 1}).status_code == 202
    wait_for_value(
        lambda: cp.job(job),
        lambda j2: j2["status"] == "Executing" and j2["instance"]["id"] != first,
        timeout=180,
        what="the Jupyter job to move",
    )
    ks.connect(j["url"])  # the stable URL, now reaching the target
    assert ks.run("x + 1").result == "42"
    ks.close()

    assert cp.post(f"/jobs/{job}/suspend").status_code == 202
    cp.wait(job, {"Suspended"})
    assert cp.post(f"/jobs/{job}/resume").status_code == 202
    cp.wait(job, {"Executing"})
    ks.connect(j["url"])
    assert ks.run("x + 2").result == "43"
    ks.close()
    cp.post(f"/jobs/{job}/cancel")
    cp.wait(job, {"Cancelled"})
