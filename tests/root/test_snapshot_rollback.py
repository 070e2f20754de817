"""Snapshots through the control plane: periodic ones of a batch job that asks for them,
manual ones of a notebook with retention, a rollback to one (the kernel's state as it
was then, on a fresh instance), and a rollback that fails leaving the job as it was."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cp_server import control_plane
from jupyter_ws import KernelSession, create_kernel
from outgrow.client import APIError, Client
from waiting import wait_for_value, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

COUNTER = (
    "import time\ni = 0\nwhile True:\n    i += 1\n    print(i, flush=True)\n    time.sleep(0.1)\n"
)


def _x(ks: KernelSession) -> str:
    out = ks.run("print(x)")
    assert out.error is None, out.error
    # The first line: IPython may add a warning about its history file after a rollback
    # (the job directory is not rolled back).
    return out.text.splitlines()[0]


def test_periodic_manual_retention_rollback(tmp_path: Path) -> None:
    with control_plane(tmp_path, checkpoint_keep=2) as s:
        c = Client(s.url, s.token, timeout=60)
        batch = c.submit(
            {
                "name": "count",
                "image": "python",
                "script": COUNTER,
                "cpu": "0.25",
                "mem": "0.25",
                "checkpoint_interval": "10s",
            }
        ).id
        nb = c.submit(
            {
                "name": "nb",
                "image": "jupyter-server",
                "cpu": "0.5",
                "mem": "0.5",
                "checkpoint_interval": "off",
            }
        ).id
        view = wait_for_value(
            lambda: c.job(nb), lambda j: j.status == "Executing", timeout=180, what="nb running"
        )
        assert view.checkpoint_interval_s == 0 and view.instance is not None and view.url
        assert c.job(batch).checkpoint_interval_s == 10

        # 1. The batch job is snapshotted by the scheduler, every 10 s, the last 2 kept.
        periodic = wait_for_value(
            lambda: c.snapshots(batch),
            lambda snaps: len(snaps) == 2 and all(x.reason == "periodic" for x in snaps),
            timeout=90,
            what="two periodic snapshots of the batch job",
        )
        assert all(x.size_bytes > 0 and x.frozen_s > 0 for x in periodic)
        gap = (periodic[1].time - periodic[0].time).total_seconds()
        assert 10 <= gap < 30, f"snapshots {gap:.1f} s apart with a 10 s interval"
        wait_until(  # and on: the oldest goes
            lambda: c.snapshots(batch)[0].id != periodic[0].id,
            timeout=60,
            what="a third periodic snapshot to replace the oldest",
        )
        assert len(c.snapshots(batch)) == 2
        assert c.snapshots(nb) == []  # its interval is off
        modified = c.modify(nb, checkpoint_interval="30m")
        assert modified.checkpoint_interval_s == modified.spec.checkpoint_interval == 1800
        r = httpx.patch(
            f"{s.api}/jobs/{nb}", headers=s.headers(), json={"checkpoint_interval": "often"}
        )
        assert r.status_code == 422 and r.json()["field"] == "checkpoint_interval", r.text
        assert c.modify(nb, checkpoint_interval="off").checkpoint_interval_s == 0

        # 2. Manual snapshots of the notebook; retention drops the oldest.
        first = view.instance.id
        base, token = view.url, s.token
        kid = create_kernel(base, token)
        ks = KernelSession(base, token, kid)
        taken = []
        for value in (1, 2, 3):
            assert ks.run(f"x = {value}").error is None
            taken.append(c.snapshot(nb))
        s1, s2, s3 = (t.snapshot for t in taken)
        assert taken[2].deleted == [s1.id] and [x.id for x in c.snapshots(nb)] == [s2.id, s3.id]
        assert not (tmp_path / "checkpoints" / nb / f"snapshot-{s1.id}").exists()
        assert all(x.reason == "manual" for x in c.snapshots(nb))
        assert ks.run("x = 4").error is None
        assert _x(ks) == "4", "the websocket did not survive the snapshots"

        # 3. Requests the API refuses, with a JSON answer.
        r = s.post(f"/jobs/{nb}/restore", {"snapshot": s1.id})
        assert r.status_code == 404 and r.json()["error"] == "not_found", r.text
        r = s.post(f"/jobs/{nb}/restore", {"snapshot": "../../etc"})
        assert 400 <= r.status_code < 500 and "error" in r.json(), r.text
        r = httpx.get(f"{s.api}/jobs/{nb}/snapshots", timeout=10)  # no token
        assert r.status_code == 401 and "error" in r.json()

        # 4. A rollback that fails (its images are damaged): the job runs on as it was.
        pages = sorted((tmp_path / "checkpoints" / nb / f"snapshot-{s3.id}").glob("pages-*.img"))
        assert pages
        pages[0].unlink()
        with pytest.raises(APIError) as failed:
            c.restore(nb, s3.id)
        assert "failed" in str(failed.value) or "restore" in str(failed.value), failed.value
        after = c.job(nb)
        assert after.status == "Executing" and after.instance is not None
        assert after.instance.id == first
        assert any("failed, job kept running" in e.reason for e in after.events)
        ks.close()
        ks = KernelSession(base, token, kid)
        assert _x(ks) == "4", "a failed rollback changed the running job"

        # 5. A rollback to s2: the kernel has x == 2 again, on a fresh instance.
        back = c.restore(nb, s2.id)
        assert back.status == "Executing" and back.instance is not None
        assert back.instance.id != first
        old = next(i for i in back.instances if i.id == first)
        assert old.status == "migrated-from" and old.ended_at is not None
        assert any(e.reason.startswith(f"rolled back to snapshot {s2.id}") for e in back.events)
        ks.close()
        ks = KernelSession(base, token, kid)
        assert _x(ks) == "2", "the rollback did not bring the snapshot's kernel back"
        ks.close()

        for job in (nb, batch):
            c.cancel(job)
        for job in (nb, batch):
            wait_for_value(lambda j=job: c.job(j), lambda v: v.status == "Cancelled",
                           timeout=60, what=f"job {job} to be Cancelled")  # fmt: skip
        wait_until(
            lambda: not any((tmp_path / "checkpoints").glob("*/snapshot-*")),
            timeout=30,
            what="the snapshots of the cancelled jobs to be deleted",
        )
