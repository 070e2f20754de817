"""outgrow in JupyterLab: the server half.

``GET <base_url>/outgrow/status`` (authenticated like every Jupyter Server handler) answers
the status the job's agent keeps in the job directory (``$OUTGROW_STATUS_FILE``): the
instance type, its memory limit *now* (it changes when the job moves), the memory in use,
and the last move with its reason and downtime. The lab extension (``labextension/``)
shows it in the status bar and notifies when the notebook was moved.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "outgrow_lab"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "outgrow-lab"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from .handlers import setup_handlers

    setup_handlers(serverapp.web_app)
    serverapp.log.info("outgrow_lab: serving the job's status at outgrow/status")
