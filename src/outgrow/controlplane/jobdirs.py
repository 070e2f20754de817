"""The job directory on providers where it is not shared between instances.

The provider says where the directory lives (a volume, an S3 tar: domain/storage.py);
these helpers bring it to an instance before the job starts or resumes there, take it
away when the job leaves, and keep the job's logs in the control plane's data dir once
no instance holds them any more (so ``outgrow log`` works for suspended and ended jobs).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from outgrow.domain.storage import JobStorage, StorageKind
from outgrow.errors import OutgrowError
from outgrow.orchestrator.migrate import agent
from outgrow.providers.base import Capability, InstanceInfo

if TYPE_CHECKING:
    from outgrow.controlplane.service import ControlPlane

log = logging.getLogger("outgrow.controlplane")
LOG_STREAMS = ("stdout", "stderr")


def mount(cp: ControlPlane, job_id: str, inst: InstanceInfo) -> JobStorage:
    """Attach the job's storage to ``inst`` and have its agent mount it (no-op when shared)."""
    storage = cp.provider.attach_job_storage(job_id, inst)
    if storage.kind != StorageKind.SHARED:
        with agent(inst, timeout=60) as a:
            r = a.mount_storage(job_id, storage)
        log.info("job %s: %s storage on %s in %.2f s", job_id, storage.kind, inst.id, r["seconds"])
    return storage


def release(cp: ControlPlane, job_id: str, inst: InstanceInfo, *, keep_logs: bool) -> None:
    """The job has left ``inst`` (its tree ended): unmount/upload and detach its storage.
    ``keep_logs`` keeps the job's logs in the control plane (the job left)."""
    if Capability.SHARED_JOB_STORAGE in cp.provider.capabilities:
        return
    storage = cp.provider.attach_job_storage(job_id, inst)  # idempotent: where it is now
    if storage.kind == StorageKind.SHARED:
        return
    staged = _fetch_logs(cp, job_id, inst) if keep_logs else None
    with agent(inst, timeout=60) as a:
        a.release_storage(job_id, storage)
    cp.provider.detach_job_storage(job_id, inst)
    if staged is not None:
        dest = archived_log(cp.data_dir, job_id, "stdout").parent
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(dest)


def archived_log(data_dir: Path, job_id: str, stream: str) -> Path:
    """Where the control plane keeps a job's log once no instance holds its directory
    (not under ``jobs/``: there, on one host, the job directory itself comes back)."""
    return data_dir / "logs" / job_id / f"{stream}.log"


def release_quietly(cp: ControlPlane, job_id: str, inst: InstanceInfo, *, keep_logs: bool) -> None:
    try:
        release(cp, job_id, inst, keep_logs=keep_logs)
    except OutgrowError as exc:
        log.error("releasing the storage of job %s on %s: %s", job_id, inst.id, exc)
        cp.store.add_event(job_id, "error", f"could not release the job directory: {exc}")


def _fetch_logs(cp: ControlPlane, job_id: str, inst: InstanceInfo) -> Path | None:
    """The job's logs, read through its agent into a staging dir of the data dir."""
    staged = cp.data_dir / "logs-staging" / job_id
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    try:
        with agent(inst) as a:
            for stream in LOG_STREAMS:
                offset = 0
                with (staged / f"{stream}.log").open("wb") as f:
                    while True:
                        chunk = a.logs(stream, offset)
                        data = chunk.get("data", "")
                        if not data:
                            break
                        f.write(data.encode())
                        offset = int(chunk["offset"])
    except OutgrowError as exc:  # logs are worth a try, not a failed release
        log.warning("could not keep the logs of job %s: %s", job_id, exc)
        shutil.rmtree(staged, ignore_errors=True)
        return None
    return staged


def delete(cp: ControlPlane, job_id: str) -> None:
    """The job ended for good: its storage goes too."""
    try:
        cp.provider.delete_job_storage(job_id)
    except OutgrowError as exc:
        log.error("deleting the storage of job %s: %s", job_id, exc)
        cp.store.add_event(job_id, "error", f"could not delete the job's storage: {exc}")
