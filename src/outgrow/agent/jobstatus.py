"""The job's status file: what the job itself may know of where it runs.

``<job dir>/outgrow/status.json`` (``/job/outgrow/status.json`` inside the sandbox, named by
``$OUTGROW_STATUS_FILE``): the instance type, the cgroup's memory limit and use *now*, and
the last move (reason, downtime, from/to types) as the control plane told it
(``JobNote``). The agent of the instance that runs the job rewrites it with every metrics
sample, so after a move it is the new instance's agent that writes the new limit. Root's
and read-only for the job (its directory is root's); replaced atomically, so a reader
never sees half of it. Read by outgrow's JupyterLab extension (docs/jupyterlab.md).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from outgrow.agentapi.models import AgentPhase, MetricsSample

log = logging.getLogger("outgrow.agent")
STATUS_VERSION = 1
WRITTEN_IN = (AgentPhase.STARTING, AgentPhase.RUNNING)  # never a frozen or moved-away copy


def status_body(
    job_id: str,
    instance_id: str,
    note: dict[str, Any] | None,
    sample: MetricsSample | None,
    now: float | None = None,
) -> dict[str, Any]:
    note = note or {}
    return {
        "version": STATUS_VERSION,
        "job_id": job_id,
        "instance_id": instance_id,
        "instance_type": note.get("instance_type") or "",
        "mem_limit_bytes": sample.mem_limit_bytes if sample else None,
        "mem_used_bytes": sample.mem_used_bytes if sample else None,
        "oom_stalled": sample.oom_stalled if sample else False,
        "last_move": note.get("last_move"),
        "updated_at": round(now or time.time(), 3),
    }


def write_status(path: Path, body: dict[str, Any]) -> None:
    """Replace ``path`` with ``body``, world-readable; its directory is made root's 0755.
    Never through a symlink (a job directory that came from elsewhere may hold one)."""
    path.parent.mkdir(mode=0o755, exist_ok=True)
    if path.parent.is_symlink():
        raise OSError(f"{path.parent} is a symlink")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(body, f)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
