"""The status handler. The status file is written by the job's agent (root-owned, read-only
for the job); this process only reads it, and never keeps it open (a move may come at any
moment)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

STATUS_ENV = "OUTGROW_STATUS_FILE"
# Older than this, the numbers are not the agent's current ones (a move under way).
STALE_S = 10.0


def status_path() -> Path | None:
    path = os.environ.get(STATUS_ENV)
    if path:
        return Path(path)
    job_dir = os.environ.get("OUTGROW_JOB_DIR")
    return Path(job_dir) / "outgrow" / "status.json" if job_dir else None


def read_status(path: Path | None, now: float | None = None) -> dict[str, Any]:
    """The status as the lab extension reads it: ``available`` false when there is none
    (not an outgrow job, or the agent has not written it yet)."""
    if path is None:
        return {"available": False, "why": f"${STATUS_ENV} is not set"}
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"available": False, "why": "no status yet"}
    except (OSError, ValueError) as exc:
        return {"available": False, "why": f"unreadable status: {exc}"}
    if not isinstance(data, dict):
        return {"available": False, "why": "unreadable status"}
    updated = data.get("updated_at")
    age = (now or time.time()) - updated if isinstance(updated, int | float) else None
    return {**data, "available": True, "stale": age is None or age > STALE_S}


class StatusHandler(APIHandler):  # type: ignore[misc]
    @web.authenticated
    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(read_status(status_path())))


def setup_handlers(web_app: Any) -> None:
    base = web_app.settings["base_url"]
    web_app.add_handlers(".*$", [(url_path_join(base, "outgrow", "status"), StatusHandler)])
