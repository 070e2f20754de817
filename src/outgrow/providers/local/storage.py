"""Job storage of the local provider: how a job's directory gets to a local instance.

* ``shared``: every instance of this host sees ``<data_dir>/jobs/<job>``; nothing moves.
  With a quota (``OUTGROW_LOCAL_JOB_QUOTA_GIB``, the default) that directory is a sparse
  ext4 image ``<data_dir>/volumes/<job>.img`` loop-mounted on the host from the job's first
  start until it ends, so one job cannot fill the host's disk; when it ends, its logs are
  kept in the plain directory left behind.
* ``volume``: the local stand-in for EBS. Each job has a sparse image file
  ``<data_dir>/volumes/<job>.img`` attached as a loop device to one instance at a time
  (recorded in ``<job>.json``); the agent formats and mounts it
  (``agent/jobstorage.py``). Detaching frees the loop device, so the next attach usually
  gets another ``/dev/loopN``, as a moved EBS volume gets another device.
* ``s3``: the directory travels as a tar in S3 (``OUTGROW_AWS_S3_BUCKET``), the way it does
  between cloud instances in different zones; suspend checkpoints go there too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from outgrow.agent.mounts import loop_devices, mounts
from outgrow.domain.instance_types import GIB
from outgrow.domain.storage import JobStorage, StorageKind
from outgrow.errors import ConfigError, OutgrowError, ProviderError
from outgrow.providers.aws.settings import AwsSettings
from outgrow.settings import Settings
from outgrow.transfer.s3 import CheckpointStore, Kind, delete_url, url_of

log = logging.getLogger("outgrow.provider.local")
MIB = 1024 * 1024
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
QUOTA = "host"  # the record's "instance" of a quota'd shared directory: mounted on the host


class LocalJobStorage:
    def __init__(self, settings: Settings, instance_exists: Callable[[str], bool]):
        self.mode = settings.local_job_storage
        # resolved: the kernel reports loop backing files by their real path
        self.volumes = settings.data_dir.resolve() / "volumes"
        self.volume_bytes = -(-int(settings.local_volume_gib * GIB) // MIB) * MIB
        self.quota_bytes = -(-int(settings.local_job_quota_gib * GIB) // MIB) * MIB
        self.jobs_dir = settings.data_dir / "jobs"
        self._instance_exists = instance_exists
        self._s3: CheckpointStore | None = None
        if self.mode == "s3":
            aws = AwsSettings()
            if not aws.s3_bucket:
                raise ConfigError(
                    "local job storage 's3' needs a bucket: set OUTGROW_AWS_S3_BUCKET "
                    "(and install outgrow[aws])",
                    field="local_job_storage",
                )
            self._s3 = CheckpointStore(
                aws.adaptor(), aws.s3_bucket, prefix=aws.s3_prefix, cluster=aws.cluster
            )

    # ---- the provider hooks -------------------------------------------------------------
    def attach(self, job_id: str, instance_id: str) -> JobStorage:
        if self.mode == "s3":
            return JobStorage(StorageKind.S3, url=self._url("jobdir", job_id, "workspace"))
        if self.mode != "volume":
            if self.quota_bytes:
                self._mount_quota(job_id)
            return JobStorage()
        img = self._img(job_id)
        with self._locked():
            _sparse(img, self.volume_bytes)
            rec = self._record(job_id)
            loops = self._loops_of(img)
            other = rec.get("instance") if rec else None
            if loops and other and other != instance_id and self._instance_exists(other):
                raise ProviderError(
                    f"volume of job {job_id} is attached to instance {other}; release and "
                    "detach it there first"
                )
            dev = loops[0] if loops else self._losetup(["--find", "--show", str(img)]).strip()
            self._write_record(job_id, {"device": dev, "instance": instance_id})
        log.info("volume of job %s attached to instance %s as %s", job_id, instance_id, dev)
        return JobStorage(StorageKind.VOLUME, device=dev)

    def detach(self, job_id: str, instance_id: str) -> None:
        if self.mode != "volume":
            return
        with self._locked():
            rec = self._record(job_id)
            if rec is None or rec.get("instance") != instance_id:
                return  # not attached there (any more)
            for dev in self._loops_of(self._img(job_id)):
                self._free_loop(dev, job_id, force=False)
            self._rec(job_id).unlink(missing_ok=True)

    def delete(self, job_id: str) -> None:
        if self.mode == "s3":
            self.delete_checkpoint(self._url("jobdir", job_id, "workspace"))
        if self.mode == "shared":
            self._unmount_quota(job_id)
        if self.mode != "volume":
            return
        img = self._img(job_id)
        with self._locked():
            for dev in self._loops_of(img):
                self._free_loop(dev, job_id, force=False)
            self._rec(job_id).unlink(missing_ok=True)
            img.unlink(missing_ok=True)

    def checkpoint_url(self, job_id: str, checkpoint_id: str) -> str | None:
        return self._url("suspend", job_id, checkpoint_id) if self.mode == "s3" else None

    def transfer_url(self, job_id: str, checkpoint_id: str) -> str | None:
        return self._url("transfer", job_id, checkpoint_id) if self.mode == "s3" else None

    def delete_checkpoint(self, url: str) -> None:
        if not url.startswith("s3://"):
            return  # checkpoints in the data dir are the control plane's to remove
        delete_url(url, self._s3.s3 if self._s3 else None)

    def release_loops(self, keep: Collection[str] | None = None) -> list[str]:
        """Detach the loop devices of volumes under the data dir except those attached to
        an instance in ``keep`` (None: all), unmounting what a deleted instance left
        mounted. The image files (the jobs' data) stay."""
        if not self.volumes.is_dir():
            return []
        removed = []
        with self._locked():
            for dev, back in _loop_devices().items():
                back = back.removesuffix(" (deleted)")
                if Path(back).parent != self.volumes or not back.endswith(".img"):
                    continue
                job_id = Path(back).stem
                rec = self._record(job_id)
                if keep is not None and rec and rec.get("instance") in keep:
                    continue
                if keep is not None and rec and rec.get("instance") == QUOTA:
                    continue  # a job's own directory: it goes when the job ends
                self._free_loop(dev, job_id, force=True)
                self._rec(job_id).unlink(missing_ok=True)
                removed.append(f"loop {dev} (job {job_id})")
        return removed

    # ---- the quota'd shared directory -----------------------------------------------------
    def _mount_quota(self, job_id: str) -> None:
        """The job's directory as a size-limited ext4 volume mounted on this host (once:
        every instance of the job sees it there)."""
        img, mp = self._img(job_id), self.jobs_dir / _check_id(job_id)
        with self._locked():
            if os.path.ismount(mp):
                return
            kept = _take_logs(mp) if not img.exists() and _only_logs(mp) else {}
            if not img.exists() and mp.is_dir() and any(mp.iterdir()):
                # A job whose directory was made without a quota (by an older outgrow, or a
                # caller that did not attach first): never hide its files under a volume.
                log.warning("job %s: its directory exists already; it stays without quota", job_id)
                return
            fresh = not img.exists()
            try:
                _sparse(img, self.quota_bytes)
                loops = self._loops_of(img)
                dev = loops[0] if loops else self._losetup(["--find", "--show", str(img)])
                dev = dev.strip()
                if fresh:
                    mkfs = ["mkfs.ext4", "-q", "-F", "-m", "0", "-L", "outgrow-job", dev]
                    _run(mkfs, "mkfs.ext4")
                mp.mkdir(parents=True, exist_ok=True)
                _run(["mount", "-o", "nosuid,nodev", dev, str(mp)], f"mounting {dev} on {mp}")
                os.chmod(mp, 0o755)
            finally:
                _put_logs(mp, kept)  # a restarted job: the logs of its earlier runs go along
            self._write_record(job_id, {"device": dev, "instance": QUOTA})
        log.info("job %s: directory on a %d MiB volume (%s)", job_id, self.quota_bytes >> 20, dev)

    def _unmount_quota(self, job_id: str) -> None:
        """The job ended: its volume goes; its logs stay in the plain directory left."""
        img, mp = self._img(job_id), self.jobs_dir / _check_id(job_id)
        if img.exists() and not os.path.ismount(mp):
            # Not mounted any more (the host restarted since): mount it again, or the
            # job's logs would go with the volume.
            try:
                self._mount_quota(job_id)
            except OutgrowError as exc:
                log.error("job %s: its volume cannot be mounted to keep its logs: %s", job_id, exc)
        with self._locked():
            if not img.exists() and not os.path.ismount(mp):
                return
            logs: Logs = {}
            if os.path.ismount(mp):
                logs = _read_logs(mp)
                _run(["umount", str(mp)], f"unmounting the job directory {mp}")
            for dev in self._loops_of(img):
                self._losetup(["-d", dev])
            self._rec(job_id).unlink(missing_ok=True)
            img.unlink(missing_ok=True)
            _put_logs(mp, logs)

    # ---- helpers ------------------------------------------------------------------------
    def _url(self, kind: Kind, job_id: str, name: str) -> str:
        assert self._s3 is not None
        try:
            return url_of(self._s3.bucket, self._s3.key(kind, job_id, name))
        except ValueError as exc:
            raise ProviderError(f"invalid job or checkpoint id for S3: {exc}") from exc

    def _img(self, job_id: str) -> Path:
        return self.volumes / f"{_check_id(job_id)}.img"

    def _rec(self, job_id: str) -> Path:
        return self.volumes / f"{_check_id(job_id)}.json"

    def _record(self, job_id: str) -> dict[str, str] | None:
        try:
            data: dict[str, str] = json.loads(self._rec(job_id).read_text())
            return data
        except (OSError, ValueError):
            return None

    def _write_record(self, job_id: str, rec: dict[str, str]) -> None:
        tmp = self._rec(job_id).with_suffix(".tmp")
        tmp.write_text(json.dumps(rec))
        tmp.replace(self._rec(job_id))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One attach/detach at a time across threads and processes (control plane, CLI).
        self.volumes.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.volumes / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def _loops_of(self, img: Path) -> list[str]:
        return sorted(dev for dev, back in _loop_devices().items() if back == str(img))

    def _free_loop(self, dev: str, job_id: str, *, force: bool) -> None:
        for mp in _mountpoints(dev):
            if not force:
                raise ProviderError(
                    f"volume of job {job_id} ({dev}) is still mounted at {mp}: its agent "
                    "must release the job directory before the volume is detached"
                )
            r = subprocess.run(["umount", mp], capture_output=True, text=True)
            if r.returncode != 0:  # busy: losetup -d below still frees it once unmounted
                log.warning("cannot unmount %s left by a deleted instance: %s", mp, r.stderr)
        self._losetup(["-d", dev])

    def _losetup(self, args: list[str]) -> str:
        try:
            r = subprocess.run(
                ["losetup", *args], check=True, capture_output=True, text=True, timeout=60
            )
        except subprocess.CalledProcessError as exc:
            raise ProviderError(
                f"losetup {' '.join(args)} failed (are loop devices available here?)",
                detail=exc.stderr.strip(),
            ) from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ProviderError(f"losetup {' '.join(args)} failed: {exc}") from exc
        return r.stdout


Logs = dict[str, tuple[bytes, int, int]]  # file name → content, uid, gid


def _read_logs(mp: Path) -> Logs:
    logs: Logs = {}
    for f in sorted((mp / "logs").glob("*.log")):
        with contextlib.suppress(OSError):
            st = f.stat()
            logs[f.name] = (f.read_bytes(), st.st_uid, st.st_gid)
    return logs


def _only_logs(mp: Path) -> bool:
    """What an ended job's directory keeps: its logs, nothing else."""
    return mp.is_dir() and set(os.listdir(mp)) == {"logs"}


def _take_logs(mp: Path) -> Logs:
    logs = _read_logs(mp)
    shutil.rmtree(mp / "logs")
    return logs


def _put_logs(mp: Path, logs: Logs) -> None:
    if not logs:
        return
    (mp / "logs").mkdir(parents=True, exist_ok=True)
    for name, (data, uid, gid) in logs.items():
        (mp / "logs" / name).write_bytes(data)
        os.chown(mp / "logs" / name, uid, gid)  # the job appends to them


def _sparse(img: Path, size: int) -> None:
    """Create the image file (sparse: it takes space only as it is written)."""
    if img.exists():
        return
    fd = os.open(img, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _run(argv: list[str], what: str) -> None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProviderError(f"{what} failed: {exc}") from exc
    if r.returncode != 0:
        raise ProviderError(f"{what} failed", detail=f"{' '.join(argv)}: {r.stderr.strip()}")


def _check_id(part: str) -> str:
    if not _JOB_ID.match(part):
        raise ProviderError(f"invalid job or checkpoint id {part!r} for job storage")
    return part


def _loop_devices() -> dict[str, str]:
    """Every attached loop device → its backing file."""
    try:
        return loop_devices()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProviderError(f"cannot list loop devices: {exc}") from exc


def _mountpoints(dev: str) -> list[str]:
    """Where ``dev`` is mounted in this (the host's) mount namespace."""
    try:
        rdev = os.stat(dev).st_rdev
    except OSError:
        return []
    want = f"{os.major(rdev)}:{os.minor(rdev)}"
    return [m.mountpoint for m in mounts() if m.devno == want]
