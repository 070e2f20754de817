"""The job directory moves with the job where instances do not share it (clouds).

Driven through the REST API of a real control plane on the local provider in its
"volume" mode (a per-job ext4 image on a real loop device, detached from the source and
attached to the target like an EBS volume) and its "s3" mode (the directory as a tar in
S3 — moto's server is the fake S3, the only fake here). A Jupyter kernel keeps a file
open on the job directory across a migration, a suspend and a resume; its cell prints
through the move and its variables survive.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import free_pool, unique_prefix
from cp_server import Server, control_plane
from jupyter_ws import CellOutput, KernelSession, create_kernel
from outgrow.agent.mounts import loop_devices, mounted_on
from outgrow.errors import ProviderError
from waiting import wait_for_value

pytestmark = [pytest.mark.root, pytest.mark.slow]

OPEN_FILE = (
    "import os\nf = open('notes.bin', 'wb')\nf.write(b'a' * (4 << 20))\nf.flush()\n"
    "x = 41\nos.getcwd()"
)
TICKS = (
    "import time\nfor i in range(30):\n    print(f'tick {i}', flush=True)\n"
    "    time.sleep(0.1)\nprint('DONE')\n"
)


def loops_of(data_dir: Path) -> list[str]:
    """Loop devices whose backing file is under ``data_dir``."""
    return [dev for dev, back in loop_devices().items() if str(data_dir) in back]


def mount_source(path: Path) -> str | None:
    """The device mounted on ``path`` (None: not a mount point)."""
    m = mounted_on(path)
    return m.source if m else None


def wait_moved(cp: Server, job: str, n: int, timeout: float = 120) -> dict[str, Any]:
    return wait_for_value(
        lambda: cp.job(job),
        lambda j: (
            j["status"] == "Executing"
            and len([e for e in j["events"] if e["type"] == "migration"]) >= n
        ),
        timeout=timeout,
        interval=0.2,
        what=f"job {job} Executing after {n} migration(s)",
    )


def ticking(ks: KernelSession, msg: str) -> CellOutput:
    """The TICKS cell's output once it has printed a few ticks (the move comes mid-cell);
    read on with ``ks.collect(msg, ..., out=<this>)``."""
    return ks.collect(msg, timeout=60, until=lambda out: "tick 3" in out.text)


def start_notebook(cp: Server, name: str) -> tuple[str, dict[str, Any], KernelSession]:
    r = cp.post("/jobs", {"name": name, "image": "jupyter-server", "mem": "0.5"})
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    j = cp.wait(job, {"Executing"})
    kid = create_kernel(j["url"], cp.token)
    ks = KernelSession(j["url"], cp.token, kid)
    cwd = ks.run(OPEN_FILE).result
    # the kernel works in the job's workspace, seen at /workspace in its sandbox
    assert cwd is not None and cwd.strip("'") == "/workspace", cwd
    return job, j, ks


def check_state(ks: KernelSession, size: int) -> None:
    assert ks.run("x").result == "41"
    # The file opened before the move is still open and at the same offset.
    assert ks.run("f.write(b'b'); f.flush(); os.path.getsize('notes.bin')").result == str(size)


@pytest.fixture(scope="module")
def vol_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("jobvol")
    with control_plane(tmp, local_job_storage="volume", local_volume_gib=0.5) as server:
        yield server
    assert loops_of(tmp) == []


def test_volume_follows_the_job_through_migrate_suspend_resume(vol_cp: Server) -> None:
    cp = vol_cp
    job, j, ks = start_notebook(cp, "vol")
    job_dir = cp.plane.settings.data_dir / "jobs" / job
    device = mount_source(job_dir)
    assert device and device.startswith("/dev/loop"), device
    assert len(loops_of(cp.plane.settings.data_dir)) == 1

    msg = ks.execute(TICKS)
    out = ticking(ks, msg)
    r = cp.post(f"/jobs/{job}/migrate", {"mem": 1})
    assert r.status_code == 202, r.text
    j = wait_moved(cp, job, 1)
    move = [e for e in j["events"] if e["type"] == "migration"][-1]
    assert move["data"]["timings"]["storage_s"] > 0, move
    out = ks.collect(msg, timeout=60, out=out)
    assert [int(n) for n in re.findall(r"tick (\d+)", out.text)] == list(range(30))
    assert "DONE" in out.text
    check_state(ks, (4 << 20) + 1)
    assert mount_source(job_dir) is not None  # mounted again, for the new instance
    assert len(loops_of(cp.plane.settings.data_dir)) == 1  # one volume, moved — not copied

    r = cp.post(f"/jobs/{job}/suspend")
    assert r.status_code == 202, r.text
    cp.wait(job, {"Suspended"})
    # Suspended: no instance holds the volume; the job directory is not on the host.
    assert mount_source(job_dir) is None
    assert loops_of(cp.plane.settings.data_dir) == []
    assert not (job_dir / "workspace" / "notes.bin").exists()
    logs = cp.get(f"/jobs/{job}/logs", params={"stream": "stderr"}).json()
    assert "Jupyter Server" in logs["data"], logs  # kept by the control plane

    ks.close()
    assert cp.post(f"/jobs/{job}/resume").status_code == 202
    j = cp.wait(job, {"Executing"})
    ks = KernelSession(j["url"], cp.token, create_kernel_id(cp, j))
    check_state(ks, (4 << 20) + 2)
    ks.close()

    assert cp.post(f"/jobs/{job}/cancel").status_code == 202
    cp.wait(job, {"Cancelled"})
    assert mount_source(job_dir) is None
    assert loops_of(cp.plane.settings.data_dir) == []
    assert not list((cp.plane.settings.data_dir / "volumes").glob(f"{job}*"))


def create_kernel_id(cp: Server, j: dict[str, Any]) -> str:
    """The id of the job's one kernel (it survived the suspend)."""
    from jupyter_ws import list_kernels

    kernels = list_kernels(j["url"], cp.token)
    assert len(kernels) == 1, kernels
    return kernels[0]


def test_a_failed_volume_move_restores_the_job_on_the_source(
    vol_cp: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection on the real provider: attaching the volume to the target fails
    after the source's tree has ended. The job comes back on the source, state intact."""
    cp = vol_cp
    job, j, ks = start_notebook(cp, "volfail")
    src = j["instance"]["id"]
    real_attach = cp.provider.attach_job_storage

    def attach(job_id: str, instance: Any) -> Any:
        if instance.id != src:
            raise ProviderError(f"injected: cannot attach the volume to {instance.id}")
        return real_attach(job_id, instance)

    monkeypatch.setattr(cp.provider, "attach_job_storage", attach)
    assert cp.post(f"/jobs/{job}/migrate", {"mem": 1}).status_code == 202

    def migration_errors(j: dict[str, Any]) -> list[dict[str, Any]]:
        return [e for e in j["events"] if e["type"] == "error" and "migration" in e["reason"]]

    j = wait_for_value(
        lambda: cp.job(job),
        lambda j: j["status"] == "Executing" and migration_errors(j),
        timeout=120,
        interval=0.2,
        what=f"job {job} Executing after a failed migration",
    )
    errors = migration_errors(j)
    assert "injected" in errors[-1]["reason"]
    assert j["instance"]["id"] == src
    monkeypatch.undo()
    ks.close()
    ks = KernelSession(j["url"], cp.token, create_kernel_id(cp, j))
    check_state(ks, (4 << 20) + 1)
    ks.close()
    assert len(loops_of(cp.plane.settings.data_dir)) == 1
    assert cp.post(f"/jobs/{job}/cancel").status_code == 202
    cp.wait(job, {"Cancelled"})
    assert loops_of(cp.plane.settings.data_dir) == []
    assert os.path.ismount(cp.plane.settings.data_dir / "jobs" / job) is False


@pytest.fixture(scope="module")
def s3_cp(tmp_path_factory: pytest.TempPathFactory, moto_s3: Any) -> Iterator[Server]:
    """Job directories and suspend checkpoints in S3 — moto's fake S3, not AWS. The agents
    run in their instances' network namespaces: they reach moto at the bridge address."""
    prefix = unique_prefix()
    pool = ipaddress.ip_network(free_pool(prefix))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint_from(str(pool.network_address + 1)))
        with control_plane(
            tmp_path_factory.mktemp("jobs3"), prefix=prefix, local_job_storage="s3"
        ) as server:
            yield server


def s3_keys(moto_s3: Any, job: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_s3.endpoint_url)
    found = s3.list_objects_v2(Bucket=moto_s3.bucket).get("Contents", [])
    return sorted(o["Key"] for o in found if f"/{job}/" in o["Key"])


def test_s3_synced_directory_and_checkpoint(s3_cp: Server, moto_s3: Any) -> None:
    cp = s3_cp
    job, j, ks = start_notebook(cp, "s3job")
    assert s3_keys(moto_s3, job) == []  # nothing uploaded while the job runs in one place

    msg = ks.execute(TICKS)
    out = ticking(ks, msg)
    assert cp.post(f"/jobs/{job}/migrate", {"mem": 1}).status_code == 202
    j = wait_moved(cp, job, 1)
    out = ks.collect(msg, timeout=60, out=out)
    assert [int(n) for n in re.findall(r"tick (\d+)", out.text)] == list(range(30))
    check_state(ks, (4 << 20) + 1)
    # The directory went through S3 on the way (workspace.tar + its manifest).
    keys = s3_keys(moto_s3, job)
    assert any(k.endswith("/jobdir/" + job + "/workspace.tar") for k in keys), keys

    assert cp.post(f"/jobs/{job}/suspend").status_code == 202
    cp.wait(job, {"Suspended"})
    keys = s3_keys(moto_s3, job)
    suspend = [k for k in keys if "/suspend/" in k and k.endswith(".tar")]
    assert len(suspend) == 1, keys  # the checkpoint is in S3, not on the host
    assert not (cp.plane.settings.data_dir / "checkpoints" / job).exists() or not any(
        (cp.plane.settings.data_dir / "checkpoints" / job).iterdir()
    )
    ks.close()
    assert cp.post(f"/jobs/{job}/resume").status_code == 202
    j = cp.wait(job, {"Executing"})
    ks = KernelSession(j["url"], cp.token, create_kernel_id(cp, j))
    check_state(ks, (4 << 20) + 2)
    ks.close()
    assert not [k for k in s3_keys(moto_s3, job) if "/suspend/" in k]  # deleted on resume

    assert cp.post(f"/jobs/{job}/cancel").status_code == 202
    cp.wait(job, {"Cancelled"})
    assert s3_keys(moto_s3, job) == []  # the job's storage went with it


@pytest.mark.parametrize("how", ["unreachable", "dropped"])
def test_agents_that_cannot_reach_each_other_move_through_s3(
    s3_cp: Server, moto_s3: Any, how: str
) -> None:
    """A real partition: the source instance cannot open connections to other instances
    (unreachable routes, or an nftables drop, in its namespace; the control plane and S3
    at the bridge address stay reachable). The direct transfer fails (at once, or after
    the 5 s connect timeout), the job resumes, and the move is done again through S3
    (moto's fake S3); the transfer object is deleted afterwards."""
    cp = s3_cp
    job, j, ks = start_notebook(cp, f"apart-{how}")
    src = j["instance"]
    rec = cp.provider._record(src["id"])
    assert rec is not None
    net = ipaddress.ip_network(cp.plane.settings.address_pool)
    gateway = net.network_address + 1
    ns = ["nsenter", f"--net={rec['netns']}"]
    if how == "unreachable":  # connecting fails at once
        for half in net.subnets(1):
            subprocess.run([*ns, "ip", "route", "add", "unreachable", str(half)], check=True)
        subprocess.run([*ns, "ip", "route", "add", f"{gateway}/32", "dev", "eth0"], check=True)
    else:  # packets vanish (a security group that drops): connecting times out
        rules = (
            "table inet ogtest_partition {\n"
            "  chain out { type filter hook output priority 0; policy accept;\n"
            f"    ip daddr {net} ip daddr != {gateway} meta l4proto tcp drop\n  }}\n}}\n"
        )
        subprocess.run([*ns, "nft", "-f", "-"], input=rules.encode(), check=True)
    assert cp.post(f"/jobs/{job}/migrate", {"mem": 1}).status_code == 202
    j = wait_moved(cp, job, 1)
    move = [e for e in j["events"] if e["type"] == "migration"][-1]
    assert move["data"]["transfer"] == "s3", move
    assert j["instance"]["id"] != src["id"]
    check_state(ks, (4 << 20) + 1)
    ks.close()
    assert not [k for k in s3_keys(moto_s3, job) if "/transfer/" in k]
    assert cp.post(f"/jobs/{job}/cancel").status_code == 202
    cp.wait(job, {"Cancelled"})
