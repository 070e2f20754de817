"""What every part of an agent shares: its instance, its job, one lock.

An agent is one instance and at most one job. :class:`AgentCore` holds them (and keeps the
job on disk so a restarted agent re-adopts it); the job's lifecycle (``service.py``), its
moves (``moves.py``) and its metrics (``metrics.py``) all work on the same core.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque

import httpx

from outgrow.agent.cgroups import Cgroup, detect
from outgrow.agent.checkpoint import Criu
from outgrow.agent.runtime import JobDirs, JobLaunch, proc_start_ticks, read_exit_code
from outgrow.agent.state import AgentConfig, AgentJob, load_job, load_reclaim, save_job
from outgrow.agentapi.models import AgentPhase, ImageBody, JobStatus
from outgrow.errors import ConflictError, NotFoundError, RuntimeFailure

log = logging.getLogger("outgrow.agent")


class AgentCore:
    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg
        self.cgroup: Cgroup = detect().open(cfg.cgroup_name)
        self.criu = Criu(cfg.criu_path)
        self.netns_inode = os.stat(cfg.netns_path).st_ino
        self.lock = threading.RLock()
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
        self.job: AgentJob | None = load_job(cfg.state_file)
        self.reclaim_at, self.reclaim_source = load_reclaim(cfg.reclaim_file)
        self.image_progress: deque[str] = deque(maxlen=50)
        self.image_progress_total = 0

    def save(self) -> None:
        save_job(self.cfg.state_file, self.job)

    def dirs_for(self, job_id: str) -> JobDirs:
        return JobDirs(self.cfg.jobs_dir / job_id)

    def refresh(self) -> None:
        """Notice a job that ended: reap it (we are its parent or subreaper) and record why."""
        job = self.job
        if not job or job.phase not in (AgentPhase.STARTING, AgentPhase.RUNNING):
            return
        if job.process is None:
            return
        pid = job.process.init_pid
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if proc_start_ticks(pid) == job.process.start_ticks and job.process.alive():
            return
        code = read_exit_code(self.dirs_for(job.job_id))
        stats = self.cgroup.memory_stats() if self.cgroup.exists() else None
        if stats and stats.oom_kills:
            job.phase, job.message = AgentPhase.FAILED, "killed by the kernel: out of memory"
        elif code == 0:
            job.phase, job.message = AgentPhase.EXITED, "completed"
        else:
            job.phase = AgentPhase.FAILED
            job.message = f"exited with code {code}" if code is not None else "killed"
        job.exit_code = code
        self.cgroup.kill_all()
        self.save()

    def require_job(self, *phases: AgentPhase) -> AgentJob:
        self.refresh()
        job = self.job
        if job is None:
            raise NotFoundError(f"instance {self.cfg.instance_id} has no job")
        if phases and job.phase not in phases:
            want = "/".join(p.value for p in phases)
            raise ConflictError(f"job {job.job_id} is {job.phase.value}, not {want}")
        return job

    def job_status(self) -> JobStatus:
        with self.lock:
            self.refresh()
            job = self.job
            if job is None:
                return JobStatus(phase=AgentPhase.NONE)
            return JobStatus(
                job_id=job.job_id,
                phase=job.phase,
                message=job.message,
                exit_code=job.exit_code,
                kind=job.launch.kind,
                pid=job.process.init_pid if job.process else None,
                started_at=job.process.started_at if job.process else None,
                oom_stalled=job.oom_stalled_at is not None,
                reclaim_at=self.reclaim_at,
                reclaim_source=self.reclaim_source,
                restored=job.restored,
                kept_checkpoint=job.phase == AgentPhase.STOPPED
                and (self.cfg.checkpoint_dir / "job.json").exists(),
                image_progress=list(self.image_progress)[-10:],
                image_progress_total=self.image_progress_total,
                image=ImageBody.model_validate(job.image) if job.image else None,
            )

    def wait_jupyter(self, launch: JobLaunch, timeout: float) -> None:
        url = f"http://127.0.0.1:{launch.port}{launch.base_url}api/status"
        headers = {"Authorization": f"token {launch.jupyter_token}"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job
            if job is None or job.process is None or not job.process.alive():
                raise RuntimeFailure("the Jupyter server exited while starting; see the job log")
            # One patient request, not one every 2 s: a server still faulting its memory
            # in (post-copy) would start each retry's work again.
            left = max(2.0, deadline - time.monotonic())
            try:
                if httpx.get(url, headers=headers, timeout=left).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeFailure(f"the Jupyter server did not answer within {timeout:g} s")
