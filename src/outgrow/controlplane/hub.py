"""JupyterHub user servers as jobs (docs/jupyterhub.md): who may create them, their
prefixes, and the route from a request path to the job.

A *hub job* is a job of the ``jupyterhub-singleuser`` kind with a ``hub_prefix``
(``/user/<name>/`` or ``/user/<name>/<server>/``, under ``OUTGROW_JUPYTERHUB_PATH``). Its
server authenticates browsers with the hub's OAuth, so the stable-URL proxy passes
requests under the prefix to it unchanged, without outgrow credentials (proxy/hub.py).
That is safe only if these rules hold, and this module is where they are enforced:

* only accounts named in ``OUTGROW_JUPYTERHUB_USERS`` (the hub's service account) may
  create hub jobs, and the prefix and the kind go together (a hub job has both);
* a prefix belongs to at most one live (non-terminal) job at a time, whoever owns it;
* the proxy routes a path only to a live hub job whose owner is still in that list, the
  longest matching prefix winning (``/user/ann/srv/`` over ``/user/ann/``);
* the job's Jupyter token is the hub's API token for the server (JUPYTERHUB_API_TOKEN in
  the job's env): what the agent's readiness probe and the idle check present, and what
  the server itself accepts (the hub grants it ``access:servers!server``). It is never
  sent to a client, and the job views mask it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from outgrow.controlplane.images import Images
from outgrow.domain.images import DEFAULT_JUPYTER_PORT, HUB_KIND, ImageSpec
from outgrow.domain.jobs import JobSpec, UserView
from outgrow.domain.states import TERMINAL_STATES, JobState
from outgrow.errors import AuthError, ConflictError, NotFoundError, ValidationError
from outgrow.settings import Settings
from outgrow.store import JobRecord, Store

TOKEN_ENV = "JUPYTERHUB_API_TOKEN"
SECRET_ENV = frozenset({TOKEN_ENV, "JPY_API_TOKEN"})  # masked in views
LIVE_STATES = tuple(s.value for s in JobState if s not in TERMINAL_STATES)
MAX_SEGMENTS = 2  # /user/<name>/ and /user/<name>/<server>/


def job_base_url(rec: JobRecord) -> str:
    """The URL path the job's Jupyter server serves under."""
    return rec.spec.hub_prefix or f"/jobs/{rec.id}/"


def masked(spec: JobSpec) -> JobSpec:
    """The spec as views show it: the hub's token for the server never leaves."""
    if not SECRET_ENV & spec.env.keys():
        return spec
    env = {k: ("***" if k in SECRET_ENV else v) for k, v in spec.env.items()}
    return spec.model_copy(update={"env": env})


class HubJobs:
    def __init__(self, store: Store, settings: Settings, images: Images):
        self.store = store
        self.settings = settings
        self.images = images
        self._creating = threading.Lock()  # prefix check and insert, one at a time

    @property
    def enabled(self) -> bool:
        return bool(self.settings.hub_users)

    @property
    def path(self) -> str:
        return self.settings.jupyterhub_path

    @contextmanager
    def creating(self, actor: UserView, spec: JobSpec, image: ImageSpec) -> Iterator[str | None]:
        """Around creating a job: for a hub job, check who and what, keep the prefix unique
        until the job exists, and give the token the job must use (None: not a hub job)."""
        if spec.hub_prefix is None and image.kind != HUB_KIND:
            yield None
            return
        if actor.name not in self.settings.hub_users:
            raise AuthError(
                f"user {actor.name} may not create JupyterHub servers "
                "(OUTGROW_JUPYTERHUB_USERS lists the accounts that may)"
            )
        prefix = spec.hub_prefix
        if prefix is None or image.kind != HUB_KIND:
            raise ValidationError(
                f"a JupyterHub server needs an image of the {HUB_KIND} kind and a hub_prefix",
                field="hub_prefix" if prefix is None else "image",
            )
        rest = prefix[len(self.path) :].strip("/").split("/")
        if not prefix.startswith(self.path) or not 1 <= len(rest) <= MAX_SEGMENTS:
            raise ValidationError(
                f"hub_prefix {prefix!r} must be {self.path}<user>/ or {self.path}<user>/<server>/ "
                "(OUTGROW_JUPYTERHUB_PATH)",
                field="hub_prefix",
            )
        token = spec.env.get(TOKEN_ENV, "")
        if len(token) < 16:
            raise ValidationError(
                f"a JupyterHub server needs the hub's {TOKEN_ENV} in its env", field="env"
            )
        with self._creating:
            taken = self.live().get(prefix)
            if taken is not None:
                raise ConflictError(
                    f"{prefix} is served by job {taken.name} ({taken.id}) already",
                    field="hub_prefix",
                )
            yield token

    def live(self) -> dict[str, JobRecord]:
        """Every live hub job of an allowed account, by prefix."""
        users = self.settings.hub_users
        out: dict[str, JobRecord] = {}
        if not users:
            return out
        for rec in self.store.list_jobs(None, LIVE_STATES):
            if rec.spec.hub_prefix is not None and rec.owner in users:
                out[rec.spec.hub_prefix] = rec
        return out

    def routes(self) -> dict[str, tuple[str, UserView]]:
        """What the proxy serves: prefix → (job id, its owner)."""
        owners: dict[str, UserView | None] = {}
        out = {}
        for prefix, rec in self.live().items():
            if rec.owner not in owners:
                owners[rec.owner] = self.store.get_user(rec.owner)
            owner = owners[rec.owner]
            if owner is not None:
                out[prefix] = (rec.id, owner)
        return out

    def target(self, job_id: str) -> tuple[str, str | None, int, UserView]:
        """(status, current instance address, server port, the owner) of a live hub job."""
        rec = self.store.get_job(job_id)
        if rec is None or rec.spec.hub_prefix is None or rec.owner not in self.settings.hub_users:
            raise NotFoundError(f"no JupyterHub server job {job_id!r}", field="job")
        image = self.images.spec(rec.spec.image)
        owner = self.store.get_user(rec.owner)
        if owner is None:  # pragma: no cover - jobs keep their owner
            raise NotFoundError(f"no JupyterHub server job {job_id!r}", field="job")
        insts = self.store.instances(rec.id) if rec.current_instance_id else []
        address = next((i.address for i in insts if i.id == rec.current_instance_id), None)
        return rec.status, address, image.port or DEFAULT_JUPYTER_PORT, owner
