"""Make a job's directory appear on this instance, and go away again (agent side).

The provider decides where the directory lives (:class:`~outgrow.domain.storage.JobStorage`);
the agent acts on it here, before the job starts or is restored (mount) and after it was
checkpointed or ended (release):

* SHARED: the directory is the same on every instance; only make sure it exists.
* VOLUME: a block device (a local loop device, an EBS volume found by its NVMe serial),
  formatted ext4 on first use and mounted on the job directory; released by unmounting it,
  never lazily (a lazy unmount would let the provider detach a volume still written to).
* S3: a tar in S3, downloaded on mount (nothing uploaded yet: an empty directory) and
  uploaded, then removed here, on release.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

from outgrow.agent.mounts import mounted_on
from outgrow.agentapi.models import StorageResult
from outgrow.domain.storage import JobStorage, StorageKind
from outgrow.errors import OutgrowError, StorageError

BY_ID = Path("/dev/disk/by-id")
# Xen-based instances (older types) show an EBS volume under the name it was attached as.
XEN_DEVICES = (Path("/dev/sdf"), Path("/dev/xvdf"))
FS_LABEL = "outgrow-job"
_EBS = re.compile(r"^vol-[0-9a-f]+$")


def resolve_device(device: str, *, timeout: float = 120.0, by_id_dir: Path = BY_ID) -> Path:
    """The block device to mount: a plain path (``/dev/loop3``) once it exists as a block
    device, or ``ebs:vol-0abc…`` found by its NVMe serial (a volume appears on the
    instance some seconds after the attach call returns, hence the wait)."""
    if device.startswith("ebs:"):
        vol = device[4:]
        if not _EBS.match(vol):
            raise StorageError(f"not an EBS volume id: {device!r} (expected ebs:vol-…)")
        # NVMe serials of EBS volumes drop the dash: vol-0abc → vol0abc.
        candidates = [by_id_dir / f"nvme-Amazon_Elastic_Block_Store_{vol.replace('-', '', 1)}"]
        candidates += XEN_DEVICES
        what = f"volume {vol}"
    else:
        candidates = [Path(device)]
        what = f"block device {device}"
    deadline = time.monotonic() + timeout
    while True:
        for c in candidates:
            found = _block_device(c)
            if found is not None:
                return found
        if time.monotonic() >= deadline:
            raise StorageError(
                f"{what} did not appear on this instance within {timeout:g} s; "
                "check that it is attached to this instance",
                detail=f"looked for {', '.join(map(str, candidates))}",
            )
        time.sleep(0.1)


def _block_device(path: Path) -> Path | None:
    try:
        real = path.resolve(strict=True)
        return real if stat.S_ISBLK(real.stat().st_mode) else None
    except (OSError, RuntimeError):  # missing, dangling link, link loop
        return None


def mount_job_dir(
    storage: JobStorage,
    path: Path,
    *,
    device_timeout: float = 120.0,
    by_id_dir: Path = BY_ID,
) -> StorageResult:
    """Make ``path`` the job's directory as ``storage`` says. Returns what it took (bytes:
    the downloaded tree's size for S3; formatted: a new volume got its file system)."""
    t0 = time.monotonic()
    formatted = False
    size = 0
    try:
        if storage.kind is StorageKind.VOLUME:
            formatted = _mount_volume(storage.device, path, device_timeout, by_id_dir)
        elif storage.kind is StorageKind.S3:
            size = _download(storage.url, path)
        else:
            path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"preparing the job directory {path} failed: {exc.strerror or exc}", detail=str(exc)
        ) from exc
    seconds = round(time.monotonic() - t0, 3)
    return StorageResult(kind=storage.kind, seconds=seconds, bytes=size, formatted=formatted)


def release_job_dir(storage: JobStorage, path: Path) -> StorageResult:
    """Let go of the job directory so the provider can move it (idempotent). Returns what
    it took (bytes: the uploaded tree's size for S3)."""
    t0 = time.monotonic()
    size = 0
    try:
        if storage.kind is StorageKind.VOLUME:
            _unmount(path)
        elif storage.kind is StorageKind.S3:
            size = _upload(storage.url, path)
    except OSError as exc:
        raise StorageError(
            f"releasing the job directory {path} failed: {exc.strerror or exc}", detail=str(exc)
        ) from exc
    return StorageResult(kind=storage.kind, seconds=round(time.monotonic() - t0, 3), bytes=size)


# ---- volumes ----------------------------------------------------------------------------
def _run(argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600)
    except subprocess.CalledProcessError as exc:
        raise StorageError(f"{what} failed", detail=(exc.stderr or exc.stdout).strip()) from exc
    except subprocess.TimeoutExpired as exc:
        raise StorageError(f"{what} did not finish in {exc.timeout:g} s") from exc
    except OSError as exc:
        raise StorageError(f"{what} failed: cannot run {argv[0]} ({exc.strerror})") from exc


def _mount_volume(device: str, path: Path, timeout: float, by_id_dir: Path) -> bool:
    dev = resolve_device(device, timeout=timeout, by_id_dir=by_id_dir)
    rdev = dev.stat().st_rdev
    current = mounted_on(path)
    if current is not None and current.devno == f"{os.major(rdev)}:{os.minor(rdev)}":
        return False  # already mounted here (an agent restarted after mounting)
    if current is not None:
        raise StorageError(
            f"the job directory {path} is already a mount point of another device "
            f"({current.source}, {current.devno}); release it before mounting {dev}"
        )
    formatted = False
    probe = subprocess.run(["blkid", "-p", str(dev)], capture_output=True, text=True)
    if probe.returncode == 2:  # nothing found: a new volume
        _run(["mkfs.ext4", "-q", "-F", "-L", FS_LABEL, str(dev)], f"formatting {dev} (ext4)")
        formatted = True
    elif probe.returncode != 0:  # ambivalent signatures or a probing error: never format
        raise StorageError(
            f"cannot tell what {dev} holds, so it is neither formatted nor mounted",
            detail=probe.stderr.strip() or f"blkid -p exited {probe.returncode}",
        )
    path.mkdir(parents=True, exist_ok=True)
    _run(["mount", "-o", "noatime", str(dev), str(path)], f"mounting {dev} on {path}")
    return formatted


def _unmount(path: Path) -> None:
    if mounted_on(path) is None:
        return  # released already
    _run(["sync", "-f", str(path)], f"flushing the job directory {path}")
    # C locale: "busy" is looked for in umount's message
    env = {**os.environ, "LC_ALL": "C"}
    r = subprocess.run(["umount", str(path)], capture_output=True, text=True, env=env)
    if r.returncode == 0:
        return
    if mounted_on(path) is not None and "busy" in r.stderr:
        held = _holders(path)
        who = ", ".join(f"{pid} ({name})" for pid, name in held) or "unknown"
        raise StorageError(
            f"the job directory {path} is still in use by pids {who}; stop them, then "
            "release it again",
            detail=r.stderr.strip(),
        )
    raise StorageError(f"unmounting the job directory {path} failed", detail=r.stderr.strip())


def _holders(path: Path) -> list[tuple[int, str]]:
    """(pid, name) of the processes with a file, cwd, root or mapping under ``path``."""
    root = os.path.realpath(path)
    prefix = root.rstrip("/") + "/"

    def inside(p: str) -> bool:
        return p == root or p.startswith(prefix)

    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = [proc / "cwd", proc / "root", *(proc / "fd").iterdir()]
            hit = any(inside(os.readlink(link)) for link in _existing(links))
            if not hit:
                with open(proc / "maps") as maps:
                    hit = any(inside(ln.split(maxsplit=5)[-1].strip()) for ln in maps)
            if hit:
                out.append((int(proc.name), (proc / "comm").read_text().strip()))
        except OSError:  # gone meanwhile, or a kernel thread
            continue
    return sorted(out)


def _existing(links: list[Path]) -> list[Path]:
    return [link for link in links if link.is_symlink()]


# ---- S3 ---------------------------------------------------------------------------------
def _tree_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total


def _s3_helpers() -> Any:
    try:  # the aws extra is optional: only instances with S3 job storage need it
        from outgrow.transfer import s3 as storage
    except ImportError as exc:
        raise StorageError(
            "job directories kept in S3 need boto3 on this instance: pip install 'outgrow[aws]'",
            detail=str(exc),
        ) from exc
    return storage


def _download(url: str, path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        if any(path.iterdir()):
            raise StorageError(
                f"the job directory {path} is not empty, so {url} is not downloaded over it; "
                "release it first (or remove what is there)"
            )
        path.rmdir()  # download_url wants to create it
    elif path.exists() or path.is_symlink():
        raise StorageError(f"{path} is in the way of the job directory; remove it")
    try:
        _s3_helpers().download_url(url, path, missing_ok=True)
    except StorageError:
        raise
    except OutgrowError as exc:
        raise StorageError(
            f"downloading the job directory from {url} failed: {exc}", detail=exc.detail
        ) from exc
    return _tree_size(path)


def _upload(url: str, path: Path) -> int:
    if not path.exists():
        return 0  # released already: uploading nothing would overwrite the last upload
    size = _tree_size(path)
    try:
        _s3_helpers().upload_url(path, url)
    except StorageError:
        raise
    except OutgrowError as exc:
        raise StorageError(
            f"uploading the job directory to {url} failed: {exc}; it is kept at {path}",
            detail=exc.detail,
        ) from exc
    shutil.rmtree(path)
    return size
