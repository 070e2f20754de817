"""A real JupyterHub deployment on outgrow, for tests: ``outgrow up`` (a child process),
configurable-http-proxy (from npm, installed by ``make setup``) and a JupyterHub process
whose spawner is ``outgrow``, configured as docs/jupyterhub.md says. The hub's API
listens on the test provider's bridge gateway only (where instances reach this host);
everything else on 127.0.0.1."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import httpx

from conftest import free_pool, leftovers, make_settings, unique_prefix
from cp_server import ServerProcess, free_port
from waiting import wait_for_value, wait_until

REPO = Path(__file__).resolve().parents[1]
CHP = Path(os.environ.get("OUTGROW_CHP_PREFIX", "/opt/outgrow/chp")) / (
    "node_modules/.bin/configurable-http-proxy"
)
JUPYTERHUB = Path(sys.executable).with_name("jupyterhub")
HUB_ACCOUNT = "jupyterhub"  # the outgrow account the hub acts as
PASSWORD = "hub-password-1"  # DummyAuthenticator's, for every hub user
USERS = ("alice", "bob", "carol", "dave")

CONFIG = """\
# As docs/jupyterhub.md, with test addresses.
c = get_config()  # noqa: F821
c.JupyterHub.bind_url = "{hub_url}"
c.JupyterHub.hub_bind_url = "http://{gateway}:{api_port}"
c.JupyterHub.hub_connect_url = "http://{gateway}:{api_port}"
c.JupyterHub.cleanup_servers = False
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{chp_api_port}"
c.ConfigurableHTTPProxy.auth_token = "{chp_token}"
c.JupyterHub.db_url = "sqlite:///{tmp}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{tmp}/jupyterhub_cookie_secret"
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = "{password}"
c.Authenticator.allowed_users = {users!r}
c.JupyterHub.services = [{{"name": "test", "api_token": "{service_token}"}}]
c.JupyterHub.load_roles = [
    {{"name": "test", "services": ["test"],
      "scopes": ["admin:users", "admin:servers", "read:servers", "tokens"]}},
]
c.JupyterHub.spawner_class = "outgrow"
c.OutgrowSpawner.outgrow_url = "{outgrow_url}"
c.OutgrowSpawner.outgrow_token = "{outgrow_token}"
c.OutgrowSpawner.mem_guarantee = "1G"
c.OutgrowSpawner.mem_limit = "2G"
c.OutgrowSpawner.cpu_limit = 2
c.OutgrowSpawner.profile_list = [
    {{"display_name": "Small (1-2 GiB)", "slug": "small", "default": True}},
    {{"display_name": "Sleepy (up to 3 GiB, suspended after 10 s idle)", "slug": "sleepy",
      "spawner_override": {{"mem_limit": "3G", "idle_timeout": 10}}}},
]
c.JupyterHub.allow_named_servers = True
# POST .../server answers at once (202), so the tests can follow every progress event.
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
# The hub asks every 2 s (not 30) whether servers run: the tests watch it say so.
c.OutgrowSpawner.poll_interval = 2
"""


@dataclass
class HubStack:
    tmp: Path
    outgrow: ServerProcess
    admin_token: str  # outgrow's admin
    hub_token: str  # outgrow's token of the hub's account
    gateway: str
    hub_port: int
    api_port: int
    chp_api_port: int
    chp_token: str = field(default_factory=lambda: secrets.token_hex(16))
    service_token: str = field(default_factory=lambda: secrets.token_hex(16))
    chp: subprocess.Popen[bytes] | None = None
    hub: subprocess.Popen[bytes] | None = None

    @property
    def hub_url(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}"

    @property
    def outgrow_url(self) -> str:
        return f"http://127.0.0.1:{self.outgrow.port}"

    def outgrow_api(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        return httpx.Client(base_url=self.outgrow.api, headers=headers, timeout=30)

    def hub_api(self) -> httpx.Client:
        headers = {"Authorization": f"token {self.service_token}"}
        return httpx.Client(base_url=self.hub_url + "/hub/api", headers=headers, timeout=30)

    def log(self, name: str) -> str:
        path = self.tmp / name
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(
            f"--- {n} ---\n{self.log(n)}" for n in ("hub.log", "chp.log", "server.log")
        )

    # ---- processes --------------------------------------------------------------------
    def start_chp(self) -> None:
        env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": self.chp_token}
        self.chp = subprocess.Popen(
            [
                str(CHP),
                "--ip=127.0.0.1",
                f"--port={self.hub_port}",
                "--api-ip=127.0.0.1",
                f"--api-port={self.chp_api_port}",
                f"--error-target=http://{self.gateway}:{self.api_port}/hub/error",
            ],
            env=env,
            stdout=open(self.tmp / "chp.log", "ab"),  # noqa: SIM115 - the child's
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(
            lambda: (
                httpx.get(
                    f"http://127.0.0.1:{self.chp_api_port}/api/routes",
                    headers={"Authorization": f"token {self.chp_token}"},
                    timeout=2,
                ).status_code
                == 200
            ),
            timeout=30,
            what="configurable-http-proxy to answer",
            ignore=(httpx.HTTPError,),
            context=lambda: self.log("chp.log"),
        )

    def write_config(self) -> Path:
        path = self.tmp / "jupyterhub_config.py"
        path.write_text(
            CONFIG.format(
                hub_url=self.hub_url,
                gateway=self.gateway,
                api_port=self.api_port,
                chp_api_port=self.chp_api_port,
                chp_token=self.chp_token,
                tmp=self.tmp,
                password=PASSWORD,
                users=set(USERS),
                service_token=self.service_token,
                outgrow_url=self.outgrow_url,
                outgrow_token=self.hub_token,
            )
        )
        return path

    def start_hub(self) -> None:
        config = self.write_config()
        self.hub = subprocess.Popen(
            [str(JUPYTERHUB), "-f", str(config)],
            cwd=self.tmp,
            env={k: v for k, v in os.environ.items() if not k.startswith("OUTGROW_")},
            stdout=open(self.tmp / "hub.log", "ab"),  # noqa: SIM115 - the child's
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def up() -> bool:
            assert self.hub is not None and self.hub.poll() is None, self.log("hub.log")
            return httpx.get(self.hub_url + "/hub/api/", timeout=2).status_code == 200

        wait_until(
            up,
            timeout=90,
            interval=0.2,
            what="JupyterHub to answer through configurable-http-proxy",
            ignore=(httpx.HTTPError,),
            context=self.logs,
        )

    def stop_hub(self) -> None:
        if self.hub is not None and self.hub.poll() is None:
            self.hub.send_signal(signal.SIGTERM)
            try:
                self.hub.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.hub.pid, signal.SIGKILL)
                self.hub.wait(10)
        self.hub = None

    def stop_all(self) -> None:
        self.stop_hub()
        if self.chp is not None and self.chp.poll() is None:
            self.chp.terminate()
            self.chp.wait(20)


@contextmanager
def hub_stack(tmp: Path) -> Iterator[HubStack]:
    prefix = unique_prefix()
    pool = free_pool(prefix)
    gateway = str(next(ip_network(pool).hosts()))
    srv = ServerProcess(
        tmp, prefix, free_port(), pool, extra_env={"OUTGROW_JUPYTERHUB_USERS": HUB_ACCOUNT}
    )
    srv.start()
    stack: HubStack | None = None
    try:
        admin = srv.token()
        with httpx.Client(base_url=srv.api, timeout=30) as api:
            r = api.post(
                "/users",
                json={"name": HUB_ACCOUNT, "password": PASSWORD},
                headers={"Authorization": f"Bearer {admin}"},
            )
            assert r.status_code == 201, r.text
            r = api.post("/login", json={"name": HUB_ACCOUNT, "password": PASSWORD})
            hub_token = str(r.json()["token"])
        stack = HubStack(tmp, srv, admin, hub_token, gateway, free_port(), 0, 0)
        stack.api_port = _free_port_on(gateway)
        stack.chp_api_port = free_port()
        stack.start_chp()
        stack.start_hub()
        yield stack
    finally:
        try:
            if stack is not None:
                stack.stop_all()
                _cancel_everything(stack)
        finally:
            srv.stop()
            _cleanup(srv)


def _free_port_on(address: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _cancel_everything(stack: HubStack) -> None:
    """Whatever a failed test left running: cancelled, so nothing outlives the tests."""
    with stack.outgrow_api() as api:
        for j in api.get("/jobs").json():
            if "cancel" in j["actions"]:
                api.post(f"/jobs/{j['id']}/cancel")
        wait_for_value(
            lambda: [j["status"] for j in api.get("/jobs").json()],
            lambda st: all(
                s in ("Completed", "Cancelled", "FailToComplete", "FailToExecute") for s in st
            ),
            timeout=120,
            interval=0.5,
            what="every job to end",
        )


def _cleanup(srv: ServerProcess) -> None:
    from outgrow.providers.local.provider import LocalProvider

    LocalProvider(make_settings(srv.tmp, srv.prefix)).teardown()
    left = leftovers(srv.prefix)
    assert left == [], left


def sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The ``data:`` events of a text/event-stream answer."""
    for line in response.iter_lines():
        if line.startswith("data:"):
            yield json.loads(line[5:])
