"""``outgrow up``: the control plane process (API + scheduler) on the embedded default."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from outgrow import credentials
from outgrow.settings import Settings

log = logging.getLogger("outgrow.server")


def serve(settings: Settings, *, write_credentials: bool = True) -> None:
    import uvicorn

    from outgrow import logs
    from outgrow.api.app import create_app
    from outgrow.controlplane.service import ControlPlane
    from outgrow.providers.base import get_provider
    from outgrow.store import Store

    logs.setup(settings.log_format, settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.database_url or f"sqlite:///{settings.data_dir / 'outgrow.db'}"
    store = Store.open(url)
    provider = get_provider(settings.provider, settings)
    public = f"http://{settings.host}:{settings.port}"
    plane = ControlPlane(settings, store, provider, public_url=public)
    boot = plane.bootstrap(settings.admin_password)
    if boot is not None:
        password, token = boot
        where = ""
        if write_credentials:
            where = str(credentials.save(credentials.Credentials(public, token)))
        # Shown once: the password is not stored in clear anywhere.
        print(
            f"outgrow control plane: {public}\n"
            f"  console/API user: admin   password: {password}\n"
            f"  API token: {token}\n"
            + (f"  CLI credentials written to {where}\n" if where else ""),
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


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def default_data_dir() -> Path:
    return Settings().data_dir
