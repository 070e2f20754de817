"""OutgrowSpawner: every JupyterHub user's server is an outgrow job (docs/jupyterhub.md).

The spawner is a client of outgrow's SDK (``outgrow.client``) and nothing else of outgrow:
it submits a job of the ``jupyterhub-singleuser`` kind with the hub's environment
(JUPYTERHUB_API_TOKEN, the OAuth client, the API URL, the service prefix …) and the
server's prefix, and hands the hub outgrow's URL. outgrow's proxy serves that prefix,
wherever the job runs now, to the job, passing requests through to the server, which
authenticates them with the hub (outgrow/proxy/hub.py). So the hub and its proxy never
learn of moves: the job grows, shrinks, is suspended when idle and resumed by the next
request, all at the same address.

Contract with JupyterHub:

* ``start``: ends a leftover job of the same name (see ``options.job_name``), submits,
  waits for the job to be Executing, returns outgrow's URL (the hub keeps only
  scheme://host:port and routes ``/user/<name>/…`` there unchanged);
* ``poll``: None (running) while the job is starting, running, moving, suspending,
  suspended or resuming, and when outgrow cannot be reached (the hub must not forget a
  job that still runs); its exit code once it ended, 0 once it is gone;
* ``stop``: cancels the job and waits for it to end (the record stays, for its history,
  until the next start under that name);
* ``get_state``/``load_state``: the job's id and name, so a hub restart re-attaches;
* ``progress``: the job's events (states, image preparation) on the spawn page;
* ``profile_list``/``options_form``/``user_options``: the admin's profiles, one picked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from jupyterhub.spawner import Spawner
from jupyterhub.utils import url_path_join
from tornado import web
from traitlets import Callable as CallableTrait
from traitlets import Float, List, Unicode, Union, default

from outgrow.client import APIConflictError, APINotFoundError, Client, TransportError
from outgrow.domain.jobs import JobView
from outgrow.jupyterhub import options as opt

T = TypeVar("T")
HUB_IMAGE = "jupyterhub-singleuser"
WAIT_EVERY_S = 0.5
PROGRESS_EVERY_S = 0.25  # the hub stops asking for progress the moment start() returns
STOP_TIMEOUT_S = 300.0


class OutgrowSpawner(Spawner):  # type: ignore[misc]  # JupyterHub ships no type hints
    outgrow_url = Unicode(
        help="""The outgrow control plane's URL, e.g. http://127.0.0.1:8610 (its REST API,
        and by default where the hub's proxy reaches the servers).""",
    ).tag(config=True)

    outgrow_token = Unicode(
        help="""An API token of the outgrow account the hub acts as (listed in the control
        plane's OUTGROW_JUPYTERHUB_USERS). Default: $OUTGROW_TOKEN.""",
    ).tag(config=True)

    outgrow_proxy_url = Unicode(
        "",
        help="""Where the hub's proxy reaches outgrow's proxy for the servers (scheme,
        host and port only). Default: outgrow_url.""",
    ).tag(config=True)

    image = Unicode(
        HUB_IMAGE,
        help="""The outgrow image of the servers: jupyterhub-singleuser or one derived
        from it (outgrow image add NAME --base jupyterhub-singleuser --pip '...').""",
    ).tag(config=True)

    instance_type = Unicode(
        "",
        help="""A fixed outgrow instance type (outgrow instance-types); empty: sized by
        the guarantees and limits, then grown and shrunk by the migrate policy.""",
    ).tag(config=True)

    migrate_policy = Unicode(
        "",
        help="""outgrow's migrate policy, e.g.
        "[mem.upperBoundRatio=80,mem.upperBoundDuration=30s,evadeOOM=true]"; empty: the
        control plane's defaults.""",
    ).tag(config=True)

    vm_policy = Unicode("", help="outgrow's vm policy, e.g. '[spotFirst=true]'.").tag(config=True)

    idle_timeout = Float(
        None,
        allow_none=True,
        help="""Seconds without a busy kernel or a connected client after which outgrow
        suspends the server (checkpoint, instance released; the next request resumes
        it). None: the control plane's default for Jupyter jobs (2 hours); 0: never.""",
    ).tag(config=True)

    mem_start = Float(
        1.0,
        help="""GiB a server starts with when mem_guarantee is not set (or mem_limit, if
        smaller).""",
    ).tag(config=True)

    cpu_start = Float(
        1.0,
        help="vCPUs a server starts with when cpu_guarantee is not set (or cpu_limit).",
    ).tag(config=True)

    profile_list = Union(
        [List(), CallableTrait()],
        help="""Profiles users choose from (as KubeSpawner's): a list of dicts with
        display_name, optional slug, description and default, and spawner_override (this
        spawner's settings for the profile, e.g. {"image": "...", "mem_limit": "8G",
        "migrate_policy": "[...]"}), or a callable (spawner) -> that list (may be async).
        Users pick one with the form or user_options {"profile": slug}; nothing else.""",
    ).tag(config=True)

    @default("profile_list")
    def _default_profiles(self) -> list[dict[str, Any]]:
        return []

    @default("outgrow_token")
    def _default_token(self) -> str:
        return os.environ.get("OUTGROW_TOKEN", "")

    @default("env_keep")
    def _default_env_keep(self) -> list[str]:
        return []  # the hub host's environment means nothing on an instance

    @default("start_timeout")
    def _default_start_timeout(self) -> int:
        return 900  # the first server of an image builds it (minutes)

    @default("http_timeout")
    def _default_http_timeout(self) -> int:
        return 120

    @default("options_form")
    def _default_options_form(self) -> Callable[[Any], Any]:
        return _options_form

    @default("options_from_form")
    def _default_options_from_form(self) -> Callable[[Any], Any]:
        return opt.options_from_form

    @default("apply_user_options")
    def _default_apply_user_options(self) -> Callable[[Any, Any], Any]:
        return _apply_user_options

    job_id = ""
    job_name = ""
    _profile_applied = False
    _before_profile: dict[str, Any] | None = None  # what the last profile overrode

    # ---- state ------------------------------------------------------------------------
    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.job_id = str(state.get("job_id") or "")
        self.job_name = str(state.get("job_name") or "")

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        if self.job_id:
            state["job_id"] = self.job_id
            state["job_name"] = self.job_name
        return state

    def clear_state(self) -> None:
        super().clear_state()
        self.job_id = ""
        self._profile_applied = False

    # ---- the SDK, off the hub's event loop -----------------------------------------------
    def client(self) -> Client:
        if not self.outgrow_url or not self.outgrow_token:
            raise web.HTTPError(500, "OutgrowSpawner needs outgrow_url and outgrow_token")
        return Client(self.outgrow_url, self.outgrow_token, timeout=30)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        def run() -> T:
            with self.client() as c:
                return fn(c, *args)

        return await asyncio.to_thread(run)

    # ---- what the job is ------------------------------------------------------------------
    async def apply_profile(self, user_options: dict[str, Any]) -> None:
        """Apply the chosen profile's spawner_override (once per start)."""
        if self._profile_applied:
            return
        raw = self.profile_list
        if callable(raw):
            raw = raw(self)
            if asyncio.iscoroutine(raw):
                raw = await raw
        try:
            chosen = opt.choose(opt.profiles(raw or []), user_options or {})
        except ValueError as exc:
            raise web.HTTPError(400, str(exc)) from exc
        # The previous start's profile is undone first: its settings do not stick.
        for key, value in (self._before_profile or {}).items():
            setattr(self, key, value)
        self._before_profile = {}
        if chosen is not None:
            self.log.info("%s: profile %s", self._log_name, chosen.slug)
            for key, value in chosen.overrides.items():
                if not self.has_trait(key):
                    raise web.HTTPError(500, f"profile {chosen.slug}: no setting {key!r}")
                current = getattr(self, key)
                self._before_profile[key] = current
                if isinstance(value, dict) and isinstance(current, dict):
                    setattr(self, key, {**current, **value})
                else:
                    setattr(self, key, value)
        self._profile_applied = True

    @property
    def proxy_url(self) -> str:
        return (self.outgrow_proxy_url or self.outgrow_url).rstrip("/")

    def job_env(self, port: int) -> dict[str, str]:
        env = {k: str(v) for k, v in self.get_env().items()}
        # jupyterhub-singleuser binds to what this URL says: every address of the
        # instance, on the image's port (outgrow's proxy is the only one let in).
        env["JUPYTERHUB_SERVICE_URL"] = f"http://0.0.0.0:{port}{self.server.base_url}"
        return env

    def job_spec(self, port: int) -> dict[str, Any]:
        if self.args or self.cmd:
            self.log.warning("%s: Spawner.cmd/args are not used by outgrow", self._log_name)
        try:
            cpu = opt.size_range(self.cpu_guarantee, self.cpu_limit, self.cpu_start)
            mem = opt.size_range(self.mem_guarantee, self.mem_limit, self.mem_start, opt.GIB)
        except ValueError as exc:
            raise web.HTTPError(500, f"cpu/mem settings: {exc}") from exc
        spec: dict[str, Any] = {
            "name": self.job_name,
            "image": self.image,
            "cpu": cpu,
            "mem": mem,
            "env": self.job_env(port),
            "hub_prefix": self.server.base_url,
        }
        if self.instance_type:
            spec["instance_type"] = self.instance_type
        if self.migrate_policy:
            spec["migrate_policy"] = self.migrate_policy
        if self.vm_policy:
            spec["vm_policy"] = self.vm_policy
        if self.idle_timeout is not None:
            spec["idle_timeout_s"] = float(self.idle_timeout)
        return spec

    # ---- the Spawner contract ---------------------------------------------------------
    async def start(self) -> str:
        self.job_id = ""  # progress() waits for this start's job
        await self.apply_profile(self.user_options)
        self.job_name = opt.job_name(self.user.name, self.name)
        await self._retire(self.job_name)
        images = await self.call(Client.images)
        port = next((i.default_port for i in images if i.name == self.image), None) or 8888
        job = await self.call(Client.submit, self.job_spec(port))
        self.job_id = job.id
        self.log.info("%s: outgrow job %s (%s)", self._log_name, job.name, job.id)
        # NoAvailableHost fails the spawn at once (the hub then stops, i.e. cancels, it)
        job = await self._wait(lambda j: j.status not in opt.STARTING - {"NoAvailableHost"})
        if job.status not in opt.RUNNING:
            raise web.HTTPError(500, f"outgrow job {job.name} is {job.status}: {job.status_reason}")
        return self.proxy_url

    async def get_url(self) -> str:
        """At a hub restart: the server's URL from the current configuration (so a new
        outgrow address is picked up)."""
        return str(url_path_join(self.proxy_url, self.server.base_url))

    async def poll(self) -> int | None:
        if not self.job_id:
            return 0
        try:
            job = await self.call(Client.job, self.job_id)
        except APINotFoundError:
            return 0
        except TransportError as exc:
            self.log.warning("%s: cannot reach outgrow (%s); assuming it runs", self._log_name, exc)
            return None
        if job.status in opt.ENDED:
            return job.exit_code if job.exit_code is not None else 0
        if job.status == "Cancelling":
            return 0
        return None  # starting, running, moving, suspended (a request resumes it)

    async def stop(self, now: bool = False) -> None:
        if not self.job_id:
            return
        try:
            await self.call(Client.cancel, self.job_id)
        except APINotFoundError:
            return
        except APIConflictError:
            pass  # ended, or being cancelled already
        await self._wait(lambda j: j.status in opt.ENDED, timeout=STOP_TIMEOUT_S)

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        while not self.job_id:  # start() has not submitted yet
            await asyncio.sleep(0.2)
        job_id, since, shown = self.job_id, 0, 0
        while True:
            try:
                events = await self.call(Client.events, job_id, since)
            except APINotFoundError:
                return
            for ev in events:
                since = max(since, ev.id)
                event = opt.progress_event(ev, shown)
                shown = event["progress"]
                yield event
                if ev.type == "state" and (ev.to_state == "Executing" or ev.to_state in opt.ENDED):
                    return
            await asyncio.sleep(PROGRESS_EVERY_S)

    async def delete_forever(self) -> None:
        """The hub deletes the user or the server: its (ended) job record goes too."""
        await self._retire(opt.job_name(self.user.name, self.name))

    # ---- helpers ----------------------------------------------------------------------
    async def _retire(self, name: str) -> None:
        """No job may be left under ``name``: a live one (a hub that lost its state) is
        cancelled — its token is the old server's — and the ended one deleted."""
        try:
            old = await self.call(Client.job, name)
        except APINotFoundError:
            return
        if old.status not in opt.ENDED:
            self.log.warning("%s: cancelling leftover job %s", self._log_name, old.id)
            with contextlib.suppress(APIConflictError):
                await self.call(Client.cancel, old.id)
            await self._wait(lambda j: j.status in opt.ENDED, job_id=old.id)
        with contextlib.suppress(APINotFoundError):
            await self.call(Client.delete, old.id)

    async def _wait(
        self,
        done: Callable[[JobView], bool],
        timeout: float | None = None,
        job_id: str | None = None,
    ) -> JobView:
        ref = job_id or self.job_id
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while True:
            job = await self.call(Client.job, ref)
            if done(job):
                return job
            if time.monotonic() > deadline:
                raise web.HTTPError(500, f"outgrow job {job.name} is still {job.status}")
            await asyncio.sleep(WAIT_EVERY_S)


async def _options_form(spawner: OutgrowSpawner) -> str:
    raw = spawner.profile_list
    if callable(raw):
        raw = raw(spawner)
        if asyncio.iscoroutine(raw):
            raw = await raw
    return opt.options_form(opt.profiles(raw or []))


async def _apply_user_options(spawner: OutgrowSpawner, user_options: dict[str, Any]) -> None:
    await spawner.apply_profile(user_options)
