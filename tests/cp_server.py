"""A real control plane (store + local provider + scheduler + API) served by uvicorn in
a thread, for tests that drive it over HTTP."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from conftest import leftovers, make_settings, unique_prefix
from outgrow.controlplane.service import ControlPlane
from outgrow.providers.local.provider import LocalProvider
from outgrow.server import create_app
from outgrow.store import Store
from waiting import wait_for_value, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    token: str
    plane: ControlPlane
    provider: LocalProvider
    prefix: str

    @property
    def api(self) -> str:
        return f"{self.url}/api/v1"

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def get(self, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        return httpx.get(self.api + path, headers=self.headers(token), timeout=30, **kw)

    def post(self, path: str, json: Any = None, token: str | None = None) -> httpx.Response:
        return httpx.post(self.api + path, headers=self.headers(token), json=json, timeout=30)

    def job(self, job: str) -> dict[str, Any]:
        j: dict[str, Any] = self.get(f"/jobs/{job}").json()
        return j

    def wait(self, job: str, statuses: set[str], timeout: float = 180) -> dict[str, Any]:
        return wait_for_value(
            lambda: self.job(job),
            lambda j: j["status"] in statuses,
            timeout=timeout,
            interval=0.2,
            what=f"job {job} to be {' or '.join(sorted(statuses))}",
        )


@contextmanager
def control_plane(tmp: Path, prefix: str | None = None, **overrides: Any) -> Iterator[Server]:
    """An in-process control plane on the local provider (its own resource prefix unless
    given); ``overrides`` are Settings fields (e.g. ``local_job_storage="volume"``)."""
    prefix = prefix or unique_prefix()
    settings = make_settings(tmp, prefix).model_copy(update=overrides)
    store = Store.open(f"sqlite:///{tmp}/outgrow.db")
    provider = LocalProvider(settings)
    port = free_port()
    plane = ControlPlane(settings, store, provider, public_url=f"http://127.0.0.1:{port}")
    boot = plane.accounts.bootstrap("admin-password-1")
    assert boot is not None
    plane.start()
    server = uvicorn.Server(
        uvicorn.Config(create_app(plane), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: httpx.get(url + "/api/v1/health", timeout=1),
            timeout=10,
            what=f"the control plane to answer at {url}",
            ignore=(httpx.HTTPError,),
        )
        yield Server(url, boot[1], plane, provider, prefix)
    finally:
        server.should_exit = True
        thread.join(10)
        plane.stop()
        provider.teardown()
        store.close()
        assert leftovers(prefix) == [], leftovers(prefix)


@dataclass
class ServerProcess:
    """``outgrow up``'s server function in a child process, which a test may kill -9; with
    ``cli``, the real ``outgrow up`` command (its start-up messages and one-line errors)."""

    tmp: Path
    prefix: str
    port: int
    pool: str
    proc: Any = None
    extra_env: dict[str, str] = field(default_factory=dict)  # more OUTGROW_* settings
    cli: bool = False

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def env(self) -> dict[str, str]:
        import os

        return {
            **os.environ,
            "OUTGROW_DATA_DIR": str(self.tmp),
            "OUTGROW_RESOURCE_PREFIX": self.prefix,
            "OUTGROW_ADDRESS_POOL": self.pool,
            "OUTGROW_PORT": str(self.port),
            "OUTGROW_ADMIN_PASSWORD": "admin-password-1",
            "XDG_CONFIG_HOME": str(self.tmp / "config"),
            **self.extra_env,
        }

    def start(self, wait: bool = True) -> None:
        """Start it; with ``wait``, until it answers (else see :meth:`wait_healthy`)."""
        import subprocess
        import sys

        log = open(self.tmp / "server.log", "ab")  # noqa: SIM115 - owned by the child
        argv = [
            sys.executable,
            "-c",
            "from outgrow.server import serve\n"
            "from outgrow.settings import Settings\nserve(Settings())",
        ]
        if self.cli:
            argv = [sys.executable, "-m", "outgrow.cli", "up"]
        self.proc = subprocess.Popen(
            argv,
            env=self.env(),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        if wait:
            self.wait_healthy()

    def log(self) -> str:
        path = self.tmp / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_healthy(self, timeout: float = 30) -> None:
        def health() -> httpx.Response:
            assert self.proc.poll() is None, (self.tmp / "server.log").read_text()
            return httpx.get(self.api + "/health", timeout=1)

        wait_until(
            health,
            timeout=timeout,
            interval=0.1,
            what=f"the server to answer at {self.api}",
            ignore=(httpx.HTTPError,),
            context=lambda: (self.tmp / "server.log").read_text()[-3000:],
        )

    def kill9(self) -> None:
        import os
        import signal

        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except Exception:
                self.kill9()

    def token(self) -> str:
        r = httpx.post(
            self.api + "/login", json={"name": "admin", "password": "admin-password-1"}, timeout=10
        )
        r.raise_for_status()
        return str(r.json()["token"])
