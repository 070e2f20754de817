"""``outgrow up``: the control plane process on the embedded default — the composition
root: the REST API (outgrow.api), the stable-URL proxy (outgrow.proxy) and the console
(outgrow.web) in one ASGI app, over one ControlPlane."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from fastapi import FastAPI

from outgrow import credentials, web
from outgrow.api.app import create_api
from outgrow.controlplane.datadir import DataDirLock, refuse_missing_database
from outgrow.controlplane.service import ControlPlane
from outgrow.errors import StoreUnavailable
from outgrow.proxy import ProxyRoute, StableUrlProxy
from outgrow.settings import Settings
from outgrow.store import Store

log = logging.getLogger("outgrow.server")


def create_app(plane: ControlPlane) -> FastAPI:
    """The whole HTTP side of a control plane: API, stable URLs, console."""
    app = create_api(plane)
    # Stable URL of every Jupyter job: /jobs/<job-id>/… (HTTP, WebSocket). A middleware,
    # before route matching: it is the hot path.
    proxy = StableUrlProxy(plane)
    plane.lifecycle.move_hooks.append(proxy)
    app.state.proxy = proxy
    app.add_middleware(ProxyRoute, proxy=proxy)
    # The console: / (index.html), /static/..., /api/v1/session.
    web.mount(app)
    return app


def serve(settings: Settings, *, write_credentials: bool = True) -> None:
    from outgrow import logs

    logs.setup(settings.log_format, settings.log_level)
    lock = DataDirLock(settings.data_dir)
    lock.acquire()  # before anything: a second control plane here refuses, naming the first
    try:
        _serve(settings, write_credentials)
    finally:
        lock.release()


def _answers(url: str) -> bool:
    """Whether a control plane answers at ``url`` (its health route, 2 s at most)."""
    import httpx

    try:
        return httpx.get(f"{url}/api/v1/health", timeout=2.0).is_success
    except httpx.HTTPError:
        return False


def _save_credentials(public: str, token: str) -> str:
    """Point the CLI at this new control plane — unless its credentials point at another
    one that still answers (a second control plane on this host must not take the first's
    CLI away; a dead one's are replaced). Returns the line to print."""
    path = credentials.credentials_path()
    try:
        current = str(json.loads(path.read_text())["url"]).rstrip("/")
    except (OSError, ValueError, KeyError, TypeError):
        current = None  # none, or unreadable: replaced
    if current is not None and current != public and _answers(current):
        return (
            f"  CLI credentials kept: {path} points at {current}; for this one run\n"
            f"  `outgrow login {public}` or set OUTGROW_URL={public} and OUTGROW_TOKEN\n"
        )
    return (
        f"  CLI credentials written to {credentials.save(credentials.Credentials(public, token))}\n"
    )


def _serve(settings: Settings, write_credentials: bool) -> None:
    import uvicorn

    from outgrow.providers.base import get_provider

    url = settings.database_url
    if url is None:
        db = settings.data_dir / "outgrow.db"
        refuse_missing_database(settings.data_dir, db)
        url = f"sqlite:///{db}"
    store = open_store(url, settings.database_wait_s)
    provider = get_provider(settings.provider, settings)
    public = f"http://{settings.host}:{settings.port}"
    plane = ControlPlane(settings, store, provider, public_url=public)
    boot = plane.accounts.bootstrap(settings.admin_password)
    if boot is not None:
        password, token = boot
        saved = _save_credentials(public, token) if write_credentials else ""
        # Shown once: the password is not stored in clear anywhere.
        print(
            f"outgrow control plane: {public}\n"
            f"  console/API user: admin   password: {password}\n"
            f"  API token: {token}\n" + saved,
            file=sys.stderr,
            flush=True,
        )
    else:
        print(
            f"outgrow control plane: {public} (data in {settings.data_dir})",
            file=sys.stderr,
            flush=True,
        )
    plane.start()
    # uvicorn stops gracefully on SIGTERM, then raises it again under the handler it found:
    # SIGTERM's default one would kill the process before plane.stop() below (SIGINT ends
    # in a KeyboardInterrupt, which uvicorn.run catches).
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        uvicorn.run(
            create_app(plane),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
        )
    finally:
        plane.stop()
        store.close()


def open_store(url: str, wait_s: float) -> Store:
    """``Store.open``, retried while the database cannot be reached (a PostgreSQL still
    starting, or restarting) for up to ``wait_s`` seconds, with one line on stderr per try;
    then StoreUnavailable, whose one-line message names the URL without its password."""
    deadline = time.monotonic() + wait_s
    delay = 1.0
    while True:
        try:
            return Store.open(url)
        except StoreUnavailable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreUnavailable(
                    f"{exc.message} (gave up after {wait_s:g} s; OUTGROW_DATABASE_WAIT_S)",
                    detail=exc.detail,
                ) from exc
            print(
                f"outgrow: {exc.message}; retrying ({left:.0f} s left)",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def default_data_dir() -> Path:
    return Settings().data_dir
