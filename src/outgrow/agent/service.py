"""The agent's logic, independent of HTTP: one instance, at most one job.

The agent owns the instance's cgroup and runs CRIU. It never calls the control plane:
the control plane (or a peer agent during a migration) calls it. :class:`Agent` is the
job's lifecycle (start, status, stop, logs, its directory, a reclaim notice); its moves
are :attr:`Agent.moves` (``moves.py``) and its samples :attr:`Agent.sampler`, all on one
:class:`~outgrow.agent.core.AgentCore`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from outgrow import __version__
from outgrow.agent.core import AgentCore
from outgrow.agent.images import ImageCache
from outgrow.agent.jobstatus import WRITTEN_IN, status_body, write_status
from outgrow.agent.jobstorage import mount_job_dir, release_job_dir
from outgrow.agent.metrics import Sampler, watch_oom
from outgrow.agent.moves import Moves
from outgrow.agent.oci import OciCache
from outgrow.agent.oci_ship import prepare_oci
from outgrow.agent.runtime import (
    JobDirs,
    JobLaunch,
    launch_job,
    oci_command,
    sandbox_for,
    stop_tree,
)
from outgrow.agent.sandbox import (
    WORKSPACE,
    Bind,
    ensure_skeleton,
    image_user,
    job_uid,
    prepare_upper,
    venv_binds,
)
from outgrow.agent.state import AgentConfig, AgentJob, save_reclaim
from outgrow.agentapi import bundle
from outgrow.agentapi.models import (
    AgentPhase,
    Health,
    JobNote,
    JobStatus,
    LogChunk,
    MetricsSample,
    ReclaimAnswer,
    StartJob,
    StorageResult,
)
from outgrow.domain.images import ImageSpec
from outgrow.domain.storage import JobStorage
from outgrow.errors import ConflictError, NotFoundError, OutgrowError, StorageError, ValidationError

log = logging.getLogger("outgrow.agent")


def launch_of(body: StartJob) -> tuple[JobLaunch, ImageSpec]:
    """The runtime's launch and the image of a start request (validated)."""
    image = body.image.spec()
    if body.kind != image.kind:
        raise ValidationError(
            f"job kind {body.kind} does not match image kind {image.kind}", field="kind"
        )
    launch = JobLaunch(
        job_id=body.job_id,
        kind=body.kind,
        python_bin_dir="",
        script=body.script,
        env=body.env,
        port=body.port,
        jupyter_token=body.jupyter_token,
        base_url=body.base_url,
        evade_oom=body.evade_oom,
    )
    launch.validate()
    return launch, image


class Agent:
    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg
        self.core = AgentCore(cfg)
        self.images = ImageCache(cfg.image_cache_dir)
        self.moves = Moves(self.core, self._prepare_lower)
        self.sampler = Sampler(self.core.cgroup, cfg.sample_interval, self._write_status)
        self._stop = threading.Event()

    # ---- lifecycle ------------------------------------------------------------------
    def start_background(self) -> None:
        self.resume_interrupted()
        threading.Thread(
            target=self.sampler.loop, args=(self._stop,), name="metrics", daemon=True
        ).start()
        threading.Thread(
            target=watch_oom,
            args=(self.core.cgroup, self._stop, self._mark_stalled, self._clear_stalled),
            name="oom-watch",
            daemon=True,
        ).start()

    def close(self) -> None:
        self._stop.set()

    def resume_interrupted(self) -> None:
        """A job found frozen while its state says it runs was being checkpointed when
        the previous agent died (its CRIU died with it, checkpoint._dies_with): nobody
        else will resume it, so this agent does. A CHECKPOINTED job stays as it is: the
        control plane commits or aborts it."""
        core = self.core
        job = core.job
        if job is None or job.phase not in (AgentPhase.RUNNING, AgentPhase.STARTING):
            return
        with core.lock:
            if core.cgroup.exists() and core.cgroup.frozen():
                log.warning(
                    "job %s was left frozen by a checkpoint its agent did not finish: resumed",
                    job.job_id,
                )
                self.moves.resume_after_failure()

    def health(self) -> Health:
        job = self.core.job
        return Health(
            instance_id=self.cfg.instance_id,
            address=self.cfg.address,
            job_id=job.job_id if job else None,
            cgroup_version=self.core.cgroup.version,
            version=__version__,
            features=[bundle.FEATURE],
        )

    def reclaim_notice(self, in_s: float, source: str = "provider") -> ReclaimAnswer:
        """The provider announced this instance will be taken away in ``in_s`` seconds
        (a spot reclaim). Recorded and reported in the job status so the control plane
        moves the job before the deadline."""
        core = self.core
        at = time.time() + max(in_s, 0.0)
        if core.reclaim_at is None or at < core.reclaim_at:
            core.reclaim_at, core.reclaim_source = at, source
            # Kept on disk: an agent that restarts still knows its instance is going.
            save_reclaim(self.cfg.reclaim_file, at, source)
            log.warning(
                "reclaim notice (%s): instance %s goes away in %.0f s",
                source,
                self.cfg.instance_id,
                in_s,
            )
        return ReclaimAnswer(reclaim_at=core.reclaim_at)

    # ---- start / status / stop ------------------------------------------------------
    def start_job(self, body: StartJob) -> JobStatus:
        launch, image = launch_of(body)
        core = self.core
        with core.lock:
            if core.job is not None and core.job.phase.live:
                raise ConflictError(
                    f"instance {self.cfg.instance_id} already runs job {core.job.job_id}"
                )
            # the image as sent: an OCI image's archive_url comes along (for a restore)
            core.job = AgentJob(launch=launch, image=body.image.model_dump())
            core.image_progress.clear()
            core.image_progress_total = 0
            core.save()
        threading.Thread(target=self._prepare_and_launch, args=(launch, image), daemon=True).start()
        return core.job_status()

    def _prepare_and_launch(self, launch: JobLaunch, image: ImageSpec) -> None:
        core = self.core
        job = core.job
        assert job is not None
        try:
            dirs = core.dirs_for(launch.job_id)
            if image.oci is not None:
                launch, lower, binds = self._oci_launch(launch, job.image, dirs)
            else:
                built = self.images.ensure(image, progress=self._progress)
                lower = ensure_skeleton(self.cfg.image_cache_dir)
                uid = job_uid(launch.job_id)
                launch = replace(launch, python_bin_dir=str(built.bin_dir), uid=uid, gid=uid)
                binds = venv_binds(built.path / "venv")
            sandbox = sandbox_for(
                launch,
                dirs,
                root=self.cfg.root_mount(launch.job_id),
                lower=[lower],
                binds=binds,
                nofile=self.cfg.job_nofile,
            )
            dirs.create(launch.uid, launch.gid)
            own = [launch.workdir] if image.oci is not None and launch.workdir != WORKSPACE else []
            prepare_upper(dirs.upper, [lower], launch.uid, launch.gid, sandbox.hostname, own)
            core.cgroup.set_oom_stall(launch.evade_oom)
            with core.lock:
                job.launch = launch
                job.sandbox = sandbox.to_dict()
                job.phase = AgentPhase.STARTING
                job.process = launch_job(
                    launch,
                    dirs,
                    sandbox,
                    self.cfg.sandbox_spec(launch.job_id),
                    core.cgroup.add_process,
                )
                core.save()
            if launch.is_jupyter:
                core.wait_jupyter(launch, timeout=120)
            with core.lock:
                if job.phase == AgentPhase.STARTING:
                    job.phase = AgentPhase.RUNNING
                    core.save()
        except OutgrowError as exc:
            log.error("job %s failed to start: %s %s", launch.job_id, exc, exc.detail or "")
            with core.lock:
                job.phase, job.message = AgentPhase.FAILED, str(exc)
                core.save()

    def _oci_launch(
        self, launch: JobLaunch, image: dict[str, Any], dirs: JobDirs
    ) -> tuple[JobLaunch, Path, list[Bind]]:
        """An OCI image's job: its rootfs (fetched or unpacked here if need be), its user
        (a non-root User of the image, else the job's own uid), command, Env, WorkingDir."""
        cache = OciCache(self.cfg.image_cache_dir)
        rootfs = prepare_oci(cache, image["oci"], self._progress)
        digest = str(image["oci"]["digest"])
        config = cache.config(digest)
        uid, gid = image_user(rootfs, config.user) or (job_uid(launch.job_id),) * 2
        inner = dirs.inside()
        launch = replace(
            launch,
            python_bin_dir="",
            uid=uid,
            gid=gid,
            image_env=dict(config.env),
            workdir=config.working_dir or WORKSPACE,
        )
        argv = oci_command(launch, config, cache.facts(digest), inner)
        return replace(launch, argv=argv), rootfs, []

    def _prepare_lower(self, image: Mapping[str, Any]) -> None:
        """What a restored job's root is made of, present on this instance (built or
        unpacked once per host: a no-op where the image cache is shared)."""
        if image.get("oci"):
            prepare_oci(OciCache(self.cfg.image_cache_dir), image["oci"], None)
            return
        self.images.ensure(ImageSpec.from_dict(dict(image)))
        ensure_skeleton(self.cfg.image_cache_dir)

    def _progress(self, line: str) -> None:
        self.core.image_progress.append(line)
        self.core.image_progress_total += 1

    def job_status(self) -> JobStatus:
        return self.core.job_status()

    def stop_job(self, grace: float = 5.0) -> JobStatus:
        core = self.core
        with core.lock:
            job = core.require_job()
            self.moves.unlock_network()
            if core.cgroup.exists():
                if core.cgroup.frozen():
                    core.cgroup.thaw()
                stop_tree(core.cgroup.procs, grace)
            if job.phase.live:
                job.phase, job.message = AgentPhase.STOPPED, "stopped"
            core.save()
            return core.job_status()

    # ---- the job's status file (jobstatus.py) -----------------------------------------
    def note_job(self, note: JobNote) -> JobStatus:
        """The control plane tells the job where it runs: kept with the job (it moves with
        it), written into its status file at once. A note without a move keeps the last."""
        with self.core.lock:
            job = self.core.require_job()
            if job.job_id != note.job_id:
                raise ConflictError(f"instance {self.cfg.instance_id} runs job {job.job_id}")
            old = job.note or {}
            job.note = {
                "instance_type": note.instance_type or old.get("instance_type", ""),
                "last_move": (
                    note.last_move.model_dump() if note.last_move else old.get("last_move")
                ),
            }
            self.core.save()
        try:
            self.sampler.record()  # writes the status file with the note
        except OutgrowError as exc:
            log.debug("sampling for the status of job %s: %s", note.job_id, exc)
        return self.core.job_status()

    def _write_status(self, sample: MetricsSample) -> None:
        job = self.core.job
        if job is None or job.phase not in WRITTEN_IN:
            return
        body = status_body(job.job_id, self.cfg.instance_id, job.note, sample)
        try:
            write_status(self.core.dirs_for(job.job_id).status_file, body)
        except OSError as exc:
            log.debug("writing the status of job %s: %s", job.job_id, exc)

    def forget_job(self) -> None:
        with self.core.lock:
            self.core.job = None
            self.core.save()

    def logs(self, stream: str, offset: int, limit: int = 256 * 1024) -> LogChunk:
        job = self.core.require_job()
        dirs = self.core.dirs_for(job.job_id)
        path = {"stdout": dirs.stdout, "stderr": dirs.stderr}.get(stream)
        if path is None:
            raise NotFoundError(f"no log stream {stream!r} (use stdout or stderr)")
        try:
            with path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                start = min(max(offset, 0), size)
                f.seek(start)
                data = f.read(limit)
        except FileNotFoundError:
            return LogChunk(data="", offset=0, size=0)
        data = data[: utf8_cut(data)]
        return LogChunk(data=data.decode(errors="replace"), offset=start + len(data), size=size)

    # ---- evadeOOM -------------------------------------------------------------------
    def _mark_stalled(self) -> None:
        job = self.core.job
        if (
            job
            and job.oom_stalled_at is None
            and job.phase
            in (
                AgentPhase.RUNNING,
                AgentPhase.STARTING,
            )
        ):
            job.oom_stalled_at = time.time()
            log.warning("job %s is stalled at its memory limit (evadeOOM)", job.job_id)
            self.sampler.record()

    def _clear_stalled(self) -> None:
        job = self.core.job
        if job is not None and job.oom_stalled_at is not None:
            job.oom_stalled_at = None

    # ---- job storage: the job directory arrives and leaves with the job --------------
    def mount_storage(self, job_id: str, storage: JobStorage) -> StorageResult:
        with self.core.lock:
            self._check_storage_free(job_id, "mount")
            return mount_job_dir(storage, self.core.dirs_for(job_id).root)

    def release_storage(self, job_id: str, storage: JobStorage) -> StorageResult:
        with self.core.lock:
            self._check_storage_free(job_id, "release")
            return release_job_dir(storage, self.core.dirs_for(job_id).root)

    def _check_storage_free(self, job_id: str, what: str) -> None:
        if "/" in job_id or job_id in ("", ".", ".."):
            raise StorageError(f"bad job id {job_id!r}")
        self.core.refresh()
        job = self.core.job
        if job and job.job_id == job_id and job.phase.live:
            raise ConflictError(
                f"cannot {what} the storage of job {job_id}: it is {job.phase.value} here"
            )


def utf8_cut(data: bytes) -> int:
    """Where to cut ``data`` so no UTF-8 sequence is split between two reads: before an
    incomplete tail."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b & 0xC0 == 0x80:
            continue  # continuation byte: keep looking for the lead byte
        need = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4
        return len(data) - back if need > back else len(data)
    return len(data)
