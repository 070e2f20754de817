"""The web console: static HTML, ES modules and CSS in ``static/`` (no build step), served
by the control plane at ``/`` (``index.html``) and ``/static/...``; plus the console's
cookie session routes (:mod:`outgrow.web.session`).

Files are found with importlib so this works from an installed (non-editable) package:
pyproject's package-data ships ``web/static/**/*``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

# Served with every console response: only our own origin, no framing, no sniffing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def static_dir() -> Path:
    return Path(str(files("outgrow.web") / "static"))


class ConsoleFiles(StaticFiles):
    """StaticFiles that asks browsers to revalidate (ETag) so an upgrade is seen at once."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        resp = super().file_response(*args, **kwargs)
        resp.headers["Cache-Control"] = "no-cache"
        resp.headers.update(SECURITY_HEADERS)
        return resp


def mount(app: FastAPI) -> None:
    """Serve the console: ``/`` → index.html, ``/static/...`` → the files, and the
    ``/api/v1/session`` routes."""
    from outgrow.web.session import router

    root = static_dir()
    app.include_router(router)
    app.mount("/static", ConsoleFiles(directory=root), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(
            root / "index.html",
            media_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-cache", **SECURITY_HEADERS},
        )
