"""Job directories that move with the job, for real: loop devices, ext4, mounts (root).

The local provider's "volume" mode is the stand-in for EBS (a per-job sparse image
attached as a real loop device, formatted and mounted by the agent-side code); its "s3"
mode syncs the directory through S3, which here is moto's fake S3 server (``moto_s3``,
never AWS). Every test checks that it leaves no loop device, mount, netns, link or cgroup.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeS3, leftovers, make_settings, unique_prefix
from outgrow.agent.jobstorage import mount_job_dir, release_job_dir, resolve_device
from outgrow.domain.storage import JobStorage, StorageKind
from outgrow.errors import ConfigError, ProviderError, StorageError
from outgrow.providers.base import Capability, InstanceInfo
from outgrow.providers.local.provider import LocalProvider

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loop devices, mkfs, mount"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("losetup", "mkfs.ext4", "blkid", "mount")),
        reason="needs util-linux (losetup, mount, blkid) and e2fsprogs (mkfs.ext4)",
    ),
]
MIB = 1024 * 1024


def job_id() -> str:
    return "j" + secrets.token_hex(6)


def fake_instance(p: LocalProvider, iid: str) -> InstanceInfo:
    """An instance record only (attach needs nothing more); no such instance exists."""
    return InstanceInfo(
        id=iid,
        provider="local",
        type=p.instance_types().get("lc.nano"),
        address="198.19.0.2",
        agent_url="http://198.19.0.2:7070",
        agent_token="-",
        spot=False,
        created_at=time.time(),
        state="running",
    )


def loops_of(img: Path) -> list[str]:
    out = subprocess.run(
        ["losetup", "--noheadings", "--output", "NAME", "--associated", str(img)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """relative path → (kind, file mode, sha256 of the content or the link target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", 0, os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            # Directory modes are not kept: download_url extracts with tarfile's "data"
            # filter, which gives directories the default mode.
            out[rel] = ("dir", 0, "")
        else:
            out[rel] = (
                "file",
                stat.S_IMODE(st.st_mode),
                hashlib.sha256(p.read_bytes()).hexdigest(),
            )
    return out


# ---- volume mode: two real local instances ------------------------------------------------
@pytest.fixture(scope="module")
def volume_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A local provider in volume mode (own prefix, own pool, 256 MiB volumes) with two
    real instances (netns + cgroup + agent); everything with its prefix is gone after."""
    prefix = unique_prefix()
    tmp = tmp_path_factory.mktemp("jobstorage")
    p = LocalProvider(make_settings(tmp, prefix, local_job_storage="volume", local_volume_gib=0.25))
    try:
        a = p.create_instance("lc.nano")
        b = p.create_instance("lc.nano")
        yield {"provider": p, "a": a, "b": b, "prefix": prefix, "tmp": tmp}
    finally:
        p.teardown()
    assert leftovers(prefix, str(tmp)) == []


@pytest.fixture(autouse=True)
def no_volume_leaks(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: no loop device or mount under its data dirs is left."""
    yield
    dirs = [str(tmp_path)]
    if "volume_env" in request.fixturenames:
        dirs.append(str(request.getfixturevalue("volume_env")["tmp"]))
    left = [x for d in dirs for x in leftovers("\0", d)]
    assert left == [], f"leaked: {left}"


def test_volume_moves_between_two_real_instances(volume_env: dict[str, Any]) -> None:
    p: LocalProvider = volume_env["provider"]
    a, b = volume_env["a"], volume_env["b"]
    assert Capability.SHARED_JOB_STORAGE not in p.capabilities
    job = job_id()
    img = p.settings.data_dir.resolve() / "volumes" / f"{job}.img"
    path = p.jobs_dir / job

    st = p.attach_job_storage(job, a)
    assert st.kind is StorageKind.VOLUME and st.device.startswith("/dev/loop")
    assert loops_of(img) == [st.device]
    assert img.stat().st_size == 256 * MIB and img.stat().st_blocks * 512 < MIB  # sparse
    assert p.attach_job_storage(job, a) == st  # idempotent
    with pytest.raises(ProviderError, match=f"volume of job {job} is attached to instance {a.id}"):
        p.attach_job_storage(job, b)

    r = mount_job_dir(st, path)
    assert r.kind == "volume" and r.formatted is True and os.path.ismount(path)
    (path / "notes.txt").write_text("x = 41\n")
    big = os.urandom(10 * MIB)
    (path / "data").mkdir()
    (path / "data" / "big.bin").write_bytes(big)
    assert mount_job_dir(st, path).formatted is False  # already mounted: nothing to do
    with pytest.raises(ProviderError, match="still mounted"):
        p.detach_job_storage(job, a)

    release_job_dir(st, path)
    assert not os.path.ismount(path)
    assert not (path / "notes.txt").exists(), "the data must live on the volume, not the host"
    release_job_dir(st, path)  # idempotent
    p.detach_job_storage(job, a)
    assert loops_of(img) == []
    p.detach_job_storage(job, a)  # idempotent

    st2 = p.attach_job_storage(job, b)
    assert st2.kind is StorageKind.VOLUME and loops_of(img) == [st2.device]
    r = mount_job_dir(st2, path)
    assert r.formatted is False
    assert (path / "notes.txt").read_text() == "x = 41\n"
    assert hashlib.sha256((path / "data" / "big.bin").read_bytes()).digest() == (
        hashlib.sha256(big).digest()
    )
    release_job_dir(st2, path)
    p.detach_job_storage(job, b)
    p.delete_job_storage(job)
    p.delete_job_storage(job)  # idempotent
    assert not img.exists() and not img.with_suffix(".json").exists()
    # suspend checkpoints of volume jobs stay on this host, in the data dir
    assert p.checkpoint_location(job, "c1") == str(p.settings.data_dir / "checkpoints" / job / "c1")


def test_release_names_the_processes_holding_the_volume(volume_env: dict[str, Any]) -> None:
    p: LocalProvider = volume_env["provider"]
    a = volume_env["a"]
    job = job_id()
    path = p.jobs_dir / job
    st = p.attach_job_storage(job, a)
    mount_job_dir(st, path)
    procs = []
    try:
        (path / "work").mkdir()
        procs.append(subprocess.Popen(["sleep", "60"], cwd=path / "work"))
        with open(path / "out.log", "w") as log:  # held as an open file, not a cwd
            procs.append(subprocess.Popen(["sleep", "60"], stdout=log))
        with pytest.raises(StorageError) as e:
            release_job_dir(st, path)
        msg = str(e.value)
        assert "still in use" in msg and str(path) in msg
        for proc in procs:
            assert f"{proc.pid} (sleep)" in msg
        assert os.path.ismount(path), "a busy job directory must stay mounted (never lazy)"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    release_job_dir(st, path)
    assert not os.path.ismount(path)
    p.detach_job_storage(job, a)
    p.delete_job_storage(job)


def test_cleanup_and_teardown_free_loop_devices(tmp_path: Path) -> None:
    """Loops of instances that are gone are leftovers (even mounted); kept ones stay."""
    prefix = unique_prefix()
    p = LocalProvider(make_settings(tmp_path, prefix, local_job_storage="volume"))
    try:
        j1, j2 = job_id(), job_id()
        st1 = p.attach_job_storage(j1, fake_instance(p, "aaaa0001"))
        st2 = p.attach_job_storage(j2, fake_instance(p, "aaaa0002"))
        mount_job_dir(st1, p.jobs_dir / j1)
        removed = p.cleanup(keep=["aaaa0002"])
        assert removed == [f"loop {st1.device} (job {j1})"]
        assert not os.path.ismount(p.jobs_dir / j1)
        assert loops_of(tmp_path / "volumes" / f"{j2}.img") == [st2.device]
        p.teardown()
        assert leftovers(prefix, str(tmp_path)) == []
        assert (tmp_path / "volumes" / f"{j2}.img").exists(), "the job's data is kept"
    finally:
        p.teardown()


# ---- resolving devices ----------------------------------------------------------------------
def a_block_device() -> Path:
    for d in sorted(Path("/dev").glob("loop[0-9]*")):
        if stat.S_ISBLK(d.stat().st_mode):
            return d
    pytest.skip("no /dev/loopN block device node on this machine")


def test_resolve_device_finds_ebs_volume_by_nvme_serial(tmp_path: Path) -> None:
    if any(Path(d).exists() for d in ("/dev/sdf", "/dev/xvdf")):
        pytest.skip("this machine has /dev/sdf or /dev/xvdf (the Xen fallback would match)")
    dev = a_block_device()
    (tmp_path / "nvme-Amazon_Elastic_Block_Store_vol0abc").symlink_to(dev)
    assert resolve_device("ebs:vol-0abc", by_id_dir=tmp_path, timeout=1) == dev
    assert resolve_device(str(dev), timeout=1) == dev

    # a volume shows up some time after it was attached: resolve waits for it
    later = tmp_path / "nvme-Amazon_Elastic_Block_Store_vol0def"
    threading.Timer(0.3, later.symlink_to, args=(dev,)).start()
    t0 = time.monotonic()
    assert resolve_device("ebs:vol-0def", by_id_dir=tmp_path, timeout=10) == dev
    assert 0.25 < time.monotonic() - t0 < 5

    t0 = time.monotonic()
    with pytest.raises(
        StorageError, match=r"volume vol-0123 did not appear on this instance within 0.4 s"
    ):
        resolve_device("ebs:vol-0123", by_id_dir=tmp_path, timeout=0.4)
    assert 0.4 <= time.monotonic() - t0 < 5
    (tmp_path / "plain").write_text("not a device")
    with pytest.raises(StorageError, match="did not appear"):
        resolve_device(str(tmp_path / "plain"), timeout=0.2)
    with pytest.raises(StorageError, match="not an EBS volume id"):
        resolve_device("ebs:disk-1", by_id_dir=tmp_path, timeout=0.2)


# ---- s3 mode: moto's fake S3 ---------------------------------------------------------------
def test_s3_job_dir_round_trip_through_moto_fake_s3(tmp_path: Path, moto_s3: FakeS3) -> None:
    """moto's fake S3 (not AWS): first mount is empty, release uploads and removes, the
    next mount brings back the same bytes, modes and symlinks."""
    import boto3

    p = LocalProvider(make_settings(tmp_path, unique_prefix(), local_job_storage="s3"))
    assert Capability.SHARED_JOB_STORAGE not in p.capabilities
    job = job_id()
    st = p.attach_job_storage(job, fake_instance(p, "aaaa0001"))
    key = f"outgrow/outgrow/jobdir/{job}/workspace.tar"
    assert st == JobStorage(StorageKind.S3, url=f"s3://{moto_s3.bucket}/{key}")
    s3 = boto3.client("s3")

    path = tmp_path / "jobs" / job
    path.mkdir(parents=True)  # an empty directory is fine
    r = mount_job_dir(st, path)
    assert r.kind == "s3" and r.bytes == 0 and list(path.iterdir()) == []

    (path / "a.txt").write_text("hello\n")
    (path / "a.txt").chmod(0o640)
    (path / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (path / "run.sh").chmod(0o755)
    (path / "sub" / "deeper").mkdir(parents=True)
    (path / "sub").chmod(0o750)
    (path / "sub" / "deeper" / "b.bin").write_bytes(os.urandom(6 * MIB + 123))  # > 1 part
    (path / "sub" / "deeper" / "b.bin").chmod(0o600)
    (path / "link").symlink_to("a.txt")
    before = snapshot(path)
    size = 6 + 18 + 6 * MIB + 123

    r = release_job_dir(st, path)
    assert (r.kind, r.bytes) == ("s3", size)
    assert not path.exists()
    etag = s3.head_object(Bucket=moto_s3.bucket, Key=key)["ETag"]
    assert release_job_dir(st, path).bytes == 0  # released already: no empty upload
    assert s3.head_object(Bucket=moto_s3.bucket, Key=key)["ETag"] == etag

    r = mount_job_dir(st, path)
    assert r.bytes == size
    assert snapshot(path) == before
    with pytest.raises(StorageError, match="is not empty"):
        mount_job_dir(st, path)
    release_job_dir(st, path)

    p.detach_job_storage(job, fake_instance(p, "aaaa0001"))  # nothing to do in S3
    p.delete_job_storage(job)
    assert "Contents" not in s3.list_objects_v2(Bucket=moto_s3.bucket, Prefix=key)
    p.delete_job_storage(job)  # idempotent

    url = p.checkpoint_location(job, "c1")
    assert url == f"s3://{moto_s3.bucket}/outgrow/outgrow/suspend/{job}/c1.tar"
    p.delete_checkpoint(url)  # nothing there: idempotent


def test_modes_and_their_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OUTGROW_AWS_S3_BUCKET", raising=False)
    with pytest.raises(ConfigError, match="local job storage 's3' needs a bucket: set OUTGROW_AWS"):
        LocalProvider(make_settings(tmp_path, unique_prefix(), local_job_storage="s3"))
    with pytest.raises(ValueError, match="local_job_storage"):
        make_settings(tmp_path, unique_prefix(), local_job_storage="nfs")
    with pytest.raises(ValueError, match="local_volume_gib"):
        make_settings(tmp_path, unique_prefix(), local_volume_gib=0)

    p = LocalProvider(make_settings(tmp_path, unique_prefix()))
    assert Capability.SHARED_JOB_STORAGE in p.capabilities
    job = job_id()
    st = p.attach_job_storage(job, fake_instance(p, "aaaa0001"))
    assert st == JobStorage()
    assert mount_job_dir(st, p.jobs_dir / job).kind == "shared"
    assert (p.jobs_dir / job).is_dir()
    assert release_job_dir(st, p.jobs_dir / job).bytes == 0
    assert (p.jobs_dir / job).is_dir(), "a shared directory stays where it is"
    assert p.checkpoint_location(job, "c1").startswith(str(p.settings.data_dir))
    p.delete_job_storage(job)  # the job ended: its quota volume goes
    assert not os.path.ismount(p.jobs_dir / job)
    with pytest.raises(ProviderError, match="invalid job"):
        LocalProvider(
            make_settings(tmp_path, unique_prefix(), local_job_storage="volume")
        ).attach_job_storage("../x", fake_instance(p, "aaaa0001"))
