"""The job directory, as the control plane sees it.

The provider says where the directory lives (shared on one host, a volume, an S3 tar:
domain/storage.py); this brings it to an instance before the job starts or resumes there,
takes it away when the job leaves, keeps the job's logs in the control plane's data dir
once no instance holds them (so ``outgrow log`` works for suspended and ended jobs), and
reads logs from wherever they are now.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from outgrow.agentapi.models import LogChunk
from outgrow.domain.storage import JobStorage, StorageKind
from outgrow.errors import NotFoundError, OutgrowError
from outgrow.orchestrator.migrate import Connect
from outgrow.providers.base import Capability, InstanceInfo, Provider
from outgrow.store import Store

log = logging.getLogger("outgrow.controlplane")
LOG_STREAMS = ("stdout", "stderr")
LOG_CHUNK = 256 * 1024


class JobDirs:
    def __init__(self, store: Store, provider: Provider, connect: Connect, data_dir: Path):
        self.store = store
        self.provider = provider
        self.connect = connect
        self.data_dir = data_dir

    def mount(self, job_id: str, inst: InstanceInfo) -> JobStorage:
        """Attach the job's storage to ``inst`` and have its agent mount it (no-op when
        shared)."""
        storage = self.provider.attach_job_storage(job_id, inst)
        if storage.kind != StorageKind.SHARED:
            with self.connect(inst, 60.0) as a:
                r = a.mount_storage(job_id, storage)
            log.info("job %s: %s storage on %s in %.2f s", job_id, storage.kind, inst.id, r.seconds)
        return storage

    def release(self, job_id: str, inst: InstanceInfo, *, keep_logs: bool) -> None:
        """The job has left ``inst`` (its tree ended): unmount/upload and detach its storage.
        ``keep_logs`` keeps the job's logs in the control plane (the job left)."""
        if self.provider.supports(Capability.SHARED_JOB_STORAGE):
            return
        storage = self.provider.attach_job_storage(job_id, inst)  # idempotent: where it is
        if storage.kind == StorageKind.SHARED:
            return
        staged = self._fetch_logs(job_id, inst) if keep_logs else None
        with self.connect(inst, 60.0) as a:
            a.release_storage(job_id, storage)
        self.provider.detach_job_storage(job_id, inst)
        if staged is not None:
            dest = self.archived_log(job_id, "stdout").parent
            shutil.rmtree(dest, ignore_errors=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            staged.replace(dest)

    def release_quietly(self, job_id: str, inst: InstanceInfo, *, keep_logs: bool) -> None:
        try:
            self.release(job_id, inst, keep_logs=keep_logs)
        except OutgrowError as exc:
            log.error("releasing the storage of job %s on %s: %s", job_id, inst.id, exc)
            self.store.add_event(job_id, "error", f"could not release the job directory: {exc}")

    def delete(self, job_id: str) -> None:
        """The job ended for good: its storage goes too."""
        try:
            self.provider.delete_job_storage(job_id)
        except OutgrowError as exc:
            log.error("deleting the storage of job %s: %s", job_id, exc)
            self.store.add_event(job_id, "error", f"could not delete the job's storage: {exc}")

    def archived_log(self, job_id: str, stream: str) -> Path:
        """Where the control plane keeps a job's log once no instance holds its directory
        (not under the job directory: on one host, that comes back with the job)."""
        return self.data_dir / "logs" / job_id / f"{stream}.log"

    def read_log(self, job_id: str, instance_id: str | None, stream: str, offset: int) -> LogChunk:
        """Up to 256 KiB of a log from ``offset``: from the directory when this host can
        read it (the job's own, so logs survive the instance), else from the job's agent,
        else from the copy kept when the job left its last instance."""
        local = self.provider.local_job_dir(job_id)
        path = local / "logs" / f"{stream}.log" if local is not None else None
        if path is None or not path.exists():
            inst = self.provider.describe_instance(instance_id) if instance_id else None
            if inst is not None:
                try:
                    with self.connect(inst, 30.0) as a:
                        return a.logs(stream, offset)
                except NotFoundError:  # its agent has no job yet (being launched): no output
                    return LogChunk(data="", offset=offset, size=0)
            path = self.archived_log(job_id, stream)
        try:
            with path.open("rb") as f:
                size = f.seek(0, 2)
                f.seek(min(offset, size))
                data = f.read(LOG_CHUNK)
        except FileNotFoundError:
            return LogChunk(data="", offset=0, size=0)
        start = min(offset, size)
        return LogChunk(data=data.decode(errors="replace"), offset=start + len(data), size=size)

    def _fetch_logs(self, job_id: str, inst: InstanceInfo) -> Path | None:
        """The job's logs, read through its agent into a staging dir of the data dir."""
        staged = self.data_dir / "logs-staging" / job_id
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        try:
            with self.connect(inst, 30.0) as a:
                for stream in LOG_STREAMS:
                    offset = 0
                    with (staged / f"{stream}.log").open("wb") as f:
                        while True:
                            chunk = a.logs(stream, offset)
                            if not chunk.data:
                                break
                            f.write(chunk.data.encode())
                            offset = chunk.offset
        except OutgrowError as exc:  # logs are worth a try, not a failed release
            log.warning("could not keep the logs of job %s: %s", job_id, exc)
            shutil.rmtree(staged, ignore_errors=True)
            return None
        return staged
