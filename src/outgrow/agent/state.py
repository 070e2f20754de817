"""What an agent knows about its instance and its job, and how it keeps that on disk.

An agent that restarts (its process was killed, the control plane restarted it) reads the
job back from ``<work dir>/agent-job.json`` and re-adopts the running tree.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from outgrow.agent.runtime import JobLaunch, JobProcess
from outgrow.agentapi.models import AgentPhase

log = logging.getLogger("outgrow.agent")
MIB = 1024**2


@dataclass(frozen=True)
class AgentConfig:
    instance_id: str
    cgroup_name: str
    netns_path: str
    address: str
    port: int
    jobs_dir: Path
    work_dir: Path  # per-instance state (checkpoint images, receive dirs)
    image_cache_dir: Path
    criu_path: Path
    oom_headroom_bytes: int = 64 * MIB
    sample_interval: float = 1.0
    job_nofile: int = 65536  # open files per job process (RLIMIT_NOFILE)

    @property
    def state_file(self) -> Path:
        return self.work_dir / "agent-job.json"

    @property
    def reclaim_file(self) -> Path:
        return self.work_dir / "reclaim.json"

    def root_mount(self, job_id: str) -> Path:
        """Where a job's root is mounted (in its own namespace at start, in ours while it
        is restored)."""
        return self.work_dir / "roots" / job_id

    def sandbox_spec(self, job_id: str) -> Path:
        """The sandbox spec handed to the job's init: the agent's, out of the job's sight."""
        return self.work_dir / "sandbox" / f"{job_id}.json"

    @property
    def checkpoint_dir(self) -> Path:
        """This instance's own checkpoint (kept by a storage move, see moves.py)."""
        return self.work_dir / "checkpoint"


@dataclass
class AgentJob:
    """The job of this instance as the agent tracks it (not domain.states.JobState: that is
    the control plane's view of a job across instances)."""

    launch: JobLaunch
    image: dict[str, Any]
    process: JobProcess | None = None
    phase: AgentPhase = AgentPhase.PREPARING
    message: str = ""
    exit_code: int | None = None
    oom_stalled_at: float | None = None
    restored: bool = False
    sandbox: dict[str, Any] | None = None  # agent.sandbox.Sandbox: what a restore re-creates
    # agentapi JobNote (instance type, last move): for the job's status file (jobstatus.py)
    note: dict[str, Any] | None = None

    @property
    def job_id(self) -> str:
        return self.launch.job_id

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["launch"]["env"] = dict(self.launch.env)
        d["phase"] = self.phase.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentJob:
        proc = d.get("process")
        return cls(
            launch=JobLaunch(**d["launch"]),
            image=d["image"],
            process=JobProcess(**proc) if proc else None,
            phase=AgentPhase(d["phase"]),
            message=d.get("message", ""),
            exit_code=d.get("exit_code"),
            oom_stalled_at=d.get("oom_stalled_at"),
            restored=d.get("restored", False),
            sandbox=d.get("sandbox"),
            note=d.get("note"),
        )


def save_job(path: Path, job: AgentJob | None) -> None:
    if job is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job.to_dict()))
    tmp.replace(path)


def load_job(path: Path) -> AgentJob | None:
    """The job kept at ``path``; one that no longer runs is marked failed."""
    try:
        job = AgentJob.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        log.error("ignoring unreadable job state %s: %s", path, exc)
        return None
    alive = job.process is not None and job.process.alive()
    if job.phase in (AgentPhase.PREPARING, AgentPhase.STARTING, AgentPhase.RUNNING) and not alive:
        job.phase = AgentPhase.FAILED
        job.message = "the job was not running when the agent restarted"
    log.info("re-adopted job %s (%s)", job.job_id, job.phase)
    return job


def save_reclaim(path: Path, at: float, source: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"at": at, "source": source}))
    tmp.replace(path)


def load_reclaim(path: Path) -> tuple[float | None, str]:
    try:
        d = json.loads(path.read_text())
        return float(d["at"]), str(d["source"])
    except FileNotFoundError:
        return None, ""
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("ignoring an unreadable reclaim notice: %s", exc)
        return None, ""
