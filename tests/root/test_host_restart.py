"""A host restart: the control plane, every agent and every job process die, the network
namespaces, veths, bridge and cgroups are gone; the data dir and the database survive.
`outgrow up` on the same data dir brings a notebook back from its last snapshot on a new
instance: the kernel has the state it had at the snapshot, the work since is lost (and
the event says how much)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from conftest import free_pool, leftovers, make_settings, unique_prefix
from cp_server import ServerProcess, free_port
from hostreboot import simulate_reboot
from jupyter_ws import KernelSession, create_kernel
from outgrow.client import Client
from outgrow.providers.local.provider import LocalProvider
from waiting import wait_for_value, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

COUNTER = (
    "import time\ni = 0\nwhile True:\n    i += 1\n    print(i, flush=True)\n    time.sleep(0.1)\n"
)
RESTORED = re.compile(
    r"restored from checkpoint of (\d\d:\d\d:\d\d) after host restart \(lost (\d+) s of work\)"
)


def test_outgrow_up_after_a_host_restart_restores_the_notebook_from_its_last_snapshot(
    tmp_path: Path,
) -> None:
    prefix = unique_prefix()
    srv = ServerProcess(tmp_path, prefix, free_port(), free_pool(prefix))
    srv.start()
    ks: KernelSession | None = None
    try:
        c = Client(srv.api.removesuffix("/api/v1"), srv.token(), timeout=60)
        spec = {"name": "nb", "image": "jupyter-server", "cpu": "0.5", "mem": "0.5"}
        ref = c.submit(spec).id
        # A batch job: no snapshots unless it asks for them; it cannot come back.
        batch = c.submit(
            {"name": "count", "image": "python", "script": COUNTER, "cpu": "0.25", "mem": "0.25"}
        ).id
        view = wait_for_value(
            lambda: c.job(ref),
            lambda j: j.status == "Executing",
            timeout=180,
            what=f"job {ref} to be Executing",
        )
        assert view.spec.checkpoint_interval is None  # Jupyter: the default (15 min) applies
        first = view.instance.id if view.instance else None
        assert first is not None and view.url
        base = view.url
        kid = create_kernel(base, c.token or "")
        ks = KernelSession(base, c.token or "", kid)
        assert ks.run("x = 41").error is None

        taken = c.snapshot(ref)
        snap = taken.snapshot
        assert snap.size_bytes > 0 and 0 < snap.frozen_s < 30, snap
        assert [s.id for s in c.snapshots(ref)] == [snap.id]
        print(
            f"\nsnapshot of a small Jupyter job: {snap.size_bytes / 2**20:.1f} MiB, "
            f"frozen {snap.frozen_s:.2f} s, {snap.duration_s:.2f} s in all"
        )
        where = tmp_path / "checkpoints" / ref / f"snapshot-{snap.id}"
        assert (where / "job.json").exists(), "the snapshot is not in the data dir"
        assert not str(where).startswith(str(tmp_path / "jobs")), "inside the job's directory"

        # Work after the snapshot, lost with the host.
        assert ks.run("x = 42\nprint(x)").text == "42\n"
        ks.close()
        ks = None
        wait_until(  # the job was seen running (sampled) well after the snapshot
            lambda: any(p["t"] >= snap.time.timestamp() + 3 for p in c.metrics(ref)["points"]),
            timeout=60,
            what="a metric sample of the job 3 s after the snapshot",
        )

        counted = wait_for_value(
            lambda: c.logs(batch)["data"].split(),
            lambda lines: len(lines) >= 5,
            timeout=120,
            what="the batch job to print 5 lines",
        )
        assert c.snapshots(batch) == []

        srv.kill9()
        gone = simulate_reboot(tmp_path, prefix)
        assert first in gone
        wait_until(  # a loop device is detached once the kernel lets it go
            lambda: leftovers(prefix, str(tmp_path)) == [],
            timeout=30,
            what="the simulated reboot to leave nothing of the instances",
            context=lambda: str(leftovers(prefix, str(tmp_path))),
        )

        t0 = time.monotonic()
        srv.start()  # `outgrow up` on the same data dir, after the reboot
        back = wait_for_value(
            lambda: c.job(ref),
            lambda j: (
                j.status in ("Executing", "FailToComplete")
                and any(RESTORED.search(e.reason) for e in j.events)
            ),
            timeout=180,
            interval=0.2,
            what=f"job {ref} to be restored from its snapshot",
            context=lambda: srv.log()[-3000:],
        )
        restore_s = time.monotonic() - t0
        assert back.status == "Executing", back.status_reason
        assert back.instance is not None and back.instance.id != first
        event = next(e for e in back.events if RESTORED.search(e.reason))
        m = RESTORED.search(event.reason)
        assert m is not None
        assert m.group(1) == snap.time.strftime("%H:%M:%S")
        assert int(m.group(2)) >= 3, event.reason
        print(f"restored after the restart in {restore_s:.1f} s (`outgrow up` to Executing)")

        # The batch job had no snapshot: it failed, and says so; its logs are kept.
        failed = wait_for_value(
            lambda: c.job(batch),
            lambda j: j.status != "Executing",
            timeout=60,
            what=f"job {batch} to leave Executing",
        )
        assert (failed.status, failed.status_reason) == ("FailToComplete", "instance lost")
        kept = c.logs(batch)["data"].split()
        assert kept[: len(counted)] == counted, "the batch job's log was not kept"

        ks = KernelSession(base, c.token or "", kid)  # the same kernel, restored
        out = ks.run("print(x)")
        # IPython may first warn that its history file (in the job directory, which is
        # not rolled back) has the lines of the lost work: the process came back, the
        # files did not.
        assert out.text.splitlines()[0] == "41", f"not the snapshot's kernel: {out.text!r}"
        ks.close()
        ks = None

        c.cancel(ref)
        wait_for_value(lambda: c.job(ref), lambda j: j.status == "Cancelled", timeout=60,
                       what=f"job {ref} to be Cancelled")  # fmt: skip
        wait_until(  # the terminal hooks run right after the status is stored
            lambda: not where.exists(), timeout=30, what="the job's snapshots to be deleted"
        )
    finally:
        if ks is not None:
            ks.close()
        srv.stop()
        LocalProvider(make_settings(tmp_path, prefix)).teardown()
    assert leftovers(prefix, str(tmp_path)) == []
