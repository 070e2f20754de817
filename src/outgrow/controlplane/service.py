"""ControlPlane: the service the API (and only the API) calls.

Every public method takes the acting user first. A job is visible to its owner and to
admins; to anybody else it does not exist (NotFoundError), so ids do not leak.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol

from outgrow import __version__
from outgrow.agent.images import BUILTIN_IMAGES, ImageSpec, parse_pip_spec
from outgrow.controlplane import actions, jobdirs
from outgrow.domain.jobs import (
    EventView,
    ImageView,
    InstanceView,
    JobSpec,
    JobView,
    TemplateView,
    TokenView,
    UserView,
    spec_from_mapping,
)
from outgrow.domain.policy import (
    format_migrate_policy,
    format_vm_policy,
    parse_cpu_range,
    parse_mem_range,
    parse_migrate_policy,
    parse_vm_policy,
)
from outgrow.domain.security import SecurityGroup, default_ports
from outgrow.domain.states import ACTIONS, check_action, check_restart, is_terminal
from outgrow.domain.states import JobState as S
from outgrow.errors import AuthError, ConflictError, NotFoundError, ValidationError
from outgrow.orchestrator.migrate import Migrator, agent
from outgrow.providers.base import Capability, InstanceInfo, Provider
from outgrow.settings import Settings
from outgrow.store import InstanceRecord, JobRecord, Store

log = logging.getLogger("outgrow.controlplane")
JUPYTER_IDLE_DEFAULT_S = 2 * 3600.0
USER_ACTION_WAIT_S = 10.0


class MoveHooks(Protocol):
    def before_checkpoint(self, job_id: str) -> None:
        """Called (from a worker thread) just before a job is checkpointed; returns once
        every connection to the job from outside its instance is closed."""

    def after_move(self, job_id: str) -> None:
        """Called after the move ended (success or not) and the job status is final."""


class ControlPlane:
    def __init__(
        self, settings: Settings, store: Store, provider: Provider, public_url: str | None = None
    ):
        self.settings = settings
        self.store = store
        self.provider = provider
        self.catalog = provider.instance_types()
        self.migrator = Migrator(provider)
        self.data_dir = settings.data_dir
        self.public_url = public_url or f"http://{settings.host}:{settings.port}"
        self.stopping = threading.Event()
        self.settings_retry_cap = 600.0
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="job")
        self._job_locks: dict[str, threading.Lock] = {}
        self._busy: set[str] = set()
        self._guard = threading.Lock()
        self._open_codes: dict[str, tuple[int, str, float]] = {}  # code → user, job, expiry
        self._warm: dict[str, InstanceInfo] = {}  # job id → pre-created target (prepare level)
        self.scheduler: Any = None
        # The stable-URL proxy registers here (outgrow.proxy): it closes its upstream
        # connections before a checkpoint and re-attaches them afterwards.
        self.move_hooks: list[MoveHooks] = []

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        from outgrow.controlplane.scheduler import Scheduler

        self.scheduler = Scheduler(self)
        self.scheduler.reconcile()
        self.scheduler.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.scheduler:
            self.scheduler.join()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def before_checkpoint(self, job_id: str) -> None:
        for h in self.move_hooks:
            try:
                h.before_checkpoint(job_id)
            except Exception:
                log.exception("before_checkpoint hook failed for %s", job_id)

    def after_move(self, job_id: str) -> None:
        for h in self.move_hooks:
            try:
                h.after_move(job_id)
            except Exception:
                log.exception("after_move hook failed for %s", job_id)

    def job(self, job_id: str) -> JobRecord:
        rec = self.store.get_job(job_id)
        if rec is None:
            raise NotFoundError(f"no job {job_id}")
        return rec

    def busy(self, job_id: str) -> bool:
        with self._guard:
            return job_id in self._busy

    def run_action(
        self, job_id: str, fn: Callable[..., None], *args: Any, wait: float = 0.0
    ) -> bool:
        """Queue a long action for a job; at most one action per job at a time. With
        ``wait``, a user's action waits that long for the job's previous action to end
        (it is finishing its bookkeeping right after the status a client waited for)."""
        deadline = time.monotonic() + wait
        while True:
            with self._guard:
                if job_id not in self._busy:
                    self._busy.add(job_id)
                    break
            if time.monotonic() >= deadline or self.stopping.wait(0.05):
                return False

        def work() -> None:
            try:
                fn(self, job_id, *args)
            except Exception:
                log.exception("action %s on job %s failed", getattr(fn, "__name__", fn), job_id)
                try:
                    self.store.add_event(
                        job_id,
                        "error",
                        f"internal error in {getattr(fn, '__name__', 'action')}; see server log",
                    )
                except Exception:
                    log.exception("cannot record the error event")
            finally:
                with self._guard:
                    self._busy.discard(job_id)

        self._pool.submit(work)
        return True

    def take_warm(self, job_id: str, type_name: str) -> InstanceInfo | None:
        with self._guard:
            inst = self._warm.get(job_id)
            if inst is not None and inst.type.name == type_name:
                del self._warm[job_id]
                return inst
        return None

    def warm_type(self, job_id: str) -> str | None:
        with self._guard:
            inst = self._warm.get(job_id)
            return inst.type.name if inst else None

    def put_warm(self, job_id: str, inst: InstanceInfo) -> InstanceInfo | None:
        """Remember a pre-created target; returns a previous one to delete, if any."""
        with self._guard:
            old = self._warm.get(job_id)
            self._warm[job_id] = inst
            return old if old is not None and old.id != inst.id else None

    def drop_warm(self, job_id: str) -> None:
        with self._guard:
            inst = self._warm.pop(job_id, None)
        if inst is not None:
            actions.end_instance(self, inst.id, "released")

    # ---- users and tokens -----------------------------------------------------------
    def bootstrap(self, admin_password: str | None) -> tuple[str, str] | None:
        if self.store.user_count() > 0:
            return None
        password = admin_password or secrets.token_urlsafe(12)
        user = self.store.create_user("admin", password, is_admin=True)
        _, token = self.store.create_token(user.id, "bootstrap")
        return password, token

    def authenticate(self, token: str) -> UserView:
        user = self.store.user_for_token(token) if token else None
        if user is None:
            raise AuthError("missing or invalid API token")
        return user

    def login(self, name: str, password: str) -> UserView:
        user = self.store.check_password(name, password)
        if user is None:
            raise AuthError("wrong user name or password")
        return user

    def create_user(
        self, actor: UserView, name: str, password: str, is_admin: bool = False
    ) -> UserView:
        if not actor.is_admin:
            raise AuthError("only admins can add users")
        if len(password) < 8:
            raise ValidationError("password must have at least 8 characters", field="password")
        return self.store.create_user(name, password, is_admin)

    def create_token(self, actor: UserView, name: str) -> tuple[TokenView, str]:
        return self.store.create_token(actor.id, name)

    def list_tokens(self, actor: UserView) -> list[TokenView]:
        return self.store.list_tokens(actor.id)

    def revoke_token(self, actor: UserView, token_id: int) -> None:
        self.store.revoke_token(actor.id, token_id)

    # ---- jobs: reading --------------------------------------------------------------
    def _find(self, actor: UserView, ref: str) -> JobRecord:
        rec = self.store.find_job(None if actor.is_admin else actor.id, ref)
        if rec is None:
            raise NotFoundError(f"no job {ref!r}", field="job")
        return rec

    def _instance_view(self, r: InstanceRecord) -> InstanceView:
        end = r.ended_at or datetime.now(UTC)
        hours = max((end - r.started_at).total_seconds(), 0) / 3600
        return InstanceView(
            id=r.id,
            type=r.type,
            vcpus=r.vcpus,
            memory_gib=r.memory_gib,
            spot=r.spot,
            address=r.address,
            price_per_hour=r.price_per_hour,
            started_at=r.started_at,
            ended_at=r.ended_at,
            status=r.status,
            cost_usd=round(hours * r.price_per_hour, 6),
        )

    def view(self, rec: JobRecord, with_events: bool = True) -> JobView:
        insts = [self._instance_view(r) for r in self.store.instances(rec.id)]
        current = next((i for i in insts if i.id == rec.current_instance_id), None)
        image = actions.image_spec(self, rec.spec.image) if self._image_known(rec) else None
        kind = image.kind if image else ""
        sg_rules: list[dict[str, Any]] = []
        if Capability.SECURITY_GROUPS in self.provider.capabilities:
            net = getattr(self.provider, "net", None)  # the local provider's HostNetwork
            try:
                sg = SecurityGroup.from_spec(
                    rec.id, rec.spec, default_ports(kind, image.default_port if image else None)
                )
                sg_rules = [
                    dict(r)
                    for r in sg.rules(
                        gateway=str(net.gateway) if net else None,
                        pool=str(net.pool) if net else None,
                        agent_port=self.settings.agent_port,
                    )
                ]
            except ValidationError:
                pass
        url = None
        if kind in ("jupyter-lab", "jupyter-server") and not is_terminal(rec.status):
            # The stable URL (outgrow.proxy, mounted at /jobs): the same across moves, and
            # opening it resumes a suspended job.
            url = f"{self.public_url}/jobs/{rec.id}/"
        return JobView(
            id=rec.id,
            name=rec.name,
            owner=rec.owner,
            status=rec.status,
            status_reason=rec.status_reason,
            image=rec.spec.image,
            spec=rec.spec,
            run=rec.run,
            instance=current,
            instances=insts,
            url=url,
            cost_usd=round(sum(i.cost_usd for i in insts), 6),
            submitted_at=rec.created_at,
            updated_at=rec.updated_at,
            exit_code=rec.exit_code,
            events=self.store.events(rec.id) if with_events else [],
            security_group=sg_rules,
            actions=[
                a
                for a, states in ACTIONS.items()
                if rec.status in states and (a != "open" or url is not None)
            ],
        )

    def _image_known(self, rec: JobRecord) -> bool:
        return rec.spec.image in BUILTIN_IMAGES or self.store.get_image(rec.spec.image) is not None

    def list_jobs(self, actor: UserView, statuses: list[str] | None = None) -> list[JobView]:
        if statuses:
            for s in statuses:
                S(s) if s in S._value2member_map_ else _bad_status(s)
        recs = self.store.list_jobs(None if actor.is_admin else actor.id, statuses)
        return [self.view(r, with_events=False) for r in recs]

    def get_job(self, actor: UserView, ref: str) -> JobView:
        return self.view(self._find(actor, ref))

    def jupyter_token(self, actor: UserView, ref: str) -> str:
        return self._find(actor, ref).jupyter_token

    def proxy_target(self, actor: UserView, job_id: str) -> tuple[str, str | None, str]:
        """For the stable-URL proxy: (status, current instance address, Jupyter token)."""
        rec = self._find(actor, job_id)
        if rec.id != job_id or not self._image_known(rec):  # the stable URL takes ids only
            raise NotFoundError(f"no job {job_id!r}", field="job")
        if actions.image_spec(self, rec.spec.image).kind not in ("jupyter-lab", "jupyter-server"):
            raise NotFoundError(f"job {rec.name} has no Jupyter server", field="job")
        insts = self.store.instances(rec.id) if rec.current_instance_id else []
        address = next((i.address for i in insts if i.id == rec.current_instance_id), None)
        return rec.status, address, rec.jupyter_token

    # ---- jobs: changing -------------------------------------------------------------
    def submit(self, actor: UserView, spec: JobSpec) -> JobView:
        image = actions.image_spec(self, spec.image)  # NotFoundError names the image
        if spec.instance_type:
            self.catalog.get(spec.instance_type)
        else:
            cpu, mem = parse_cpu_range(spec.cpu), parse_mem_range(spec.mem)
            if self.catalog.cheapest(cpu.min, mem.min, cpu.max, mem.max) is None:
                raise ValidationError(
                    f"no instance type fits -c {spec.cpu} -m {spec.mem}", field="mem"
                )
        if image.kind == "python" and not spec.script.strip():
            raise ValidationError("a python job needs a job script", field="script")
        if spec.idle_timeout_s is None and image.kind != "python":
            spec = spec.model_copy(update={"idle_timeout_s": JUPYTER_IDLE_DEFAULT_S})
        job_id = self.store.create_job(actor.id, spec, secrets.token_hex(24))
        self.run_action(job_id, actions.start)
        return self.view(self.job(job_id))

    def submit_template(self, actor: UserView, name: str, overrides: dict[str, Any]) -> JobView:
        t = self.get_template(actor, name)
        data = {**t.spec.model_dump(), **overrides}
        return self.submit(actor, spec_from_mapping(data))

    def migrate(
        self,
        actor: UserView,
        ref: str,
        instance_type: str | None = None,
        cpu: float | None = None,
        mem: float | None = None,
    ) -> JobView:
        rec = self._find(actor, ref)
        check_action("migrate", rec.status)
        cur = self._current_type(rec)
        if instance_type:
            target = self.catalog.get(instance_type)
        else:
            if cpu is None and mem is None:
                raise ValidationError(
                    "migrate needs --instance-type, --cpu or --mem", field="instance_type"
                )
            want_cpu = cpu if cpu is not None else cur.vcpus
            want_mem = mem if mem is not None else cur.memory_gib
            fit = [
                t
                for t in self.catalog.fitting(want_cpu, None, want_mem, None)
                if t.name != cur.name
            ]
            if not fit:
                raise ValidationError(
                    f"no instance type has {want_cpu:g} vCPU and {want_mem:g} GiB", field="mem"
                )
            target = fit[0]
        if target.name == cur.name:
            raise ConflictError(f"job {rec.name} already runs on {cur.name}")
        if not self.run_action(
            rec.id, actions.migrate, target, f"manual → {target.name} ({target.describe()})"
        ):
            raise ConflictError(f"job {rec.name} is busy with another action")
        return self.view(self.job(rec.id))

    def _current_type(self, rec: JobRecord) -> Any:
        for r in self.store.instances(rec.id):
            if r.id == rec.current_instance_id:
                return self.catalog.get(r.type)
        raise ConflictError(f"job {rec.name} has no instance")

    def modify(
        self,
        actor: UserView,
        ref: str,
        migrate_policy: str | None = None,
        vm_policy: str | None = None,
        idle_timeout_s: float | None = None,
    ) -> JobView:
        rec = self._find(actor, ref)
        check_action("modify", rec.status)
        update: dict[str, Any] = {}
        if migrate_policy is not None:
            update["migrate_policy"] = format_migrate_policy(parse_migrate_policy(migrate_policy))
        if vm_policy is not None:
            update["vm_policy"] = format_vm_policy(parse_vm_policy(vm_policy))
        if idle_timeout_s is not None:
            if idle_timeout_s < 0:
                raise ValidationError("idle timeout must be >= 0", field="idle_timeout_s")
            update["idle_timeout_s"] = idle_timeout_s
        if not update:
            raise ValidationError("nothing to modify", field="migrate_policy")
        spec = rec.spec.model_copy(update=update)
        self.store.update_job(rec.id, spec=spec)
        self.store.add_event(
            rec.id, "info", "policy modified: " + ", ".join(f"{k}={v}" for k, v in update.items())
        )
        return self.view(self.job(rec.id))

    def _queue(
        self, actor: UserView, ref: str, action: str, fn: Callable[..., None], *args: Any
    ) -> JobView:
        rec = self._find(actor, ref)
        check_action(action, rec.status)
        if not self.run_action(rec.id, fn, *args, wait=USER_ACTION_WAIT_S):
            raise ConflictError(f"job {rec.name} is busy with another action")
        return self.view(self.job(rec.id))

    def suspend(self, actor: UserView, ref: str) -> JobView:
        return self._queue(actor, ref, "suspend", actions.suspend, f"suspended by {actor.name}")

    def resume(self, actor: UserView, ref: str) -> JobView:
        return self._queue(actor, ref, "resume", actions.resume, f"resumed by {actor.name}")

    def cancel(self, actor: UserView, ref: str) -> JobView:
        rec = self._find(actor, ref)
        check_action("cancel", rec.status)
        self.drop_warm(rec.id)
        # Cancel waits for a running action of the job rather than racing it.
        self._pool.submit(self._cancel_when_free, rec.id, f"cancelled by {actor.name}")
        return self.view(self.job(rec.id))

    def _cancel_when_free(self, job_id: str, reason: str) -> None:
        while not self.run_action(job_id, actions.cancel, reason):
            if self.stopping.wait(0.2):
                return

    def restart(self, actor: UserView, ref: str) -> JobView:
        rec = self._find(actor, ref)
        check_restart(rec.status)
        self.store.restart_job(rec.id)
        self.run_action(rec.id, actions.start)
        return self.view(self.job(rec.id))

    def logs(
        self, actor: UserView, ref: str, stream: str = "stdout", offset: int = 0
    ) -> dict[str, Any]:
        rec = self._find(actor, ref)
        if stream not in ("stdout", "stderr"):
            raise ValidationError("stream must be stdout or stderr", field="stream")
        if offset < 0:
            raise ValidationError("offset must be >= 0", field="offset")
        # The job directory is on this host for the local provider: read it directly so
        # logs survive the instance (finished, suspended, moved jobs). Where it is not
        # (a cloud), ask the job's agent; jobdirs keeps the logs here once the job ends.
        path = self.data_dir / "jobs" / rec.id / "logs" / f"{stream}.log"
        if not path.exists():
            inst = self.provider.describe_instance(rec.current_instance_id or "")
            if inst is not None:
                with agent(inst) as a:
                    return a.logs(stream, offset)
            path = jobdirs.archived_log(self.data_dir, rec.id, stream)
        try:
            with path.open("rb") as f:
                size = f.seek(0, 2)
                f.seek(min(offset, size))
                data = f.read(256 * 1024)
        except FileNotFoundError:
            return {"data": "", "offset": 0, "size": 0}
        return {
            "data": data.decode(errors="replace"),
            "offset": min(offset, size) + len(data),
            "size": size,
        }

    def events(self, actor: UserView, ref: str, since: int = 0) -> list[EventView]:
        return self.store.events(self._find(actor, ref).id, since)

    def metrics(
        self,
        actor: UserView,
        ref: str,
        t_from: float | None = None,
        t_to: float | None = None,
        step: float | None = None,
    ) -> dict[str, Any]:
        rec = self._find(actor, ref)
        if step is not None and step <= 0:
            raise ValidationError("step must be > 0 seconds", field="step")
        points = self.store.metrics(rec.id, t_from, t_to)
        if step:
            points = _downsample(points, step)
        p = rec.spec.migrate()
        thresholds = {
            "mem_upper_ratio": p.mem.upper_bound_ratio,
            "mem_lower_ratio": p.mem.lower_bound_ratio,
            "cpu_upper_ratio": p.cpu.upper_bound_ratio,
            "cpu_lower_ratio": p.cpu.lower_bound_ratio,
            "mem_prepare_ratio": p.mem.prepare_level,
            "cpu_prepare_ratio": p.cpu.prepare_level,
            "evade_oom": p.evade_oom,
            "disable": p.disable,
            "migrate_policy": rec.spec.migrate_policy,
        }
        events = [e for e in self.store.events(rec.id) if e.type in ("state", "migration")]
        return {
            "points": [pt.model_dump() for pt in points],
            "thresholds": thresholds,
            "events": [e.model_dump(mode="json") for e in events],
        }

    # ---- templates and images -------------------------------------------------------
    def save_template(self, actor: UserView, ref: str, name: str) -> TemplateView:
        rec = self._find(actor, ref)
        return self.store.save_template(actor.id, name, rec.spec)

    def list_templates(self, actor: UserView) -> list[TemplateView]:
        return self.store.list_templates(None if actor.is_admin else actor.id)

    def get_template(self, actor: UserView, name: str) -> TemplateView:
        t = self.store.get_template(None if actor.is_admin else actor.id, name)
        if t is None:
            raise NotFoundError(f"no template {name!r}", field="template")
        return t

    def delete_template(self, actor: UserView, name: str) -> None:
        self.store.delete_template(None if actor.is_admin else actor.id, name)

    def list_images(self, actor: UserView) -> list[ImageView]:
        builtin = [image_view(i, builtin=True) for i in BUILTIN_IMAGES.values()]
        return builtin + self.store.list_images()

    def add_image(
        self, actor: UserView, name: str, pip: str, base: str | None = None, description: str = ""
    ) -> ImageView:
        if name in BUILTIN_IMAGES or self.store.get_image(name) is not None:
            raise ConflictError(f"image {name!r} already exists", field="name")
        base_spec = actions.image_spec(self, base) if base else BUILTIN_IMAGES["python"]
        spec = base_spec.derive(
            name, parse_pip_spec(pip), description or f"{base_spec.name} + {pip}"
        )
        view = image_view(spec, docs=base_spec.docs, base=base_spec.name, owner=actor.name)
        return self.store.add_image(view, actor.id)

    def remove_image(self, actor: UserView, name: str) -> None:
        if name in BUILTIN_IMAGES:
            raise ConflictError(f"image {name!r} is built in", field="name")
        img = self.store.get_image(name)
        if img is None:
            raise NotFoundError(f"no image {name!r}", field="name")
        if not actor.is_admin and img.owner != actor.name:
            raise NotFoundError(f"no image {name!r}", field="name")
        self.store.delete_image(name)

    def open_link(self, actor: UserView, ref: str, ttl_s: float = 120.0) -> dict[str, Any]:
        """A one-time link to the job's stable URL for a browser: the code in it is good
        once, for this job, for ``ttl_s`` seconds; the proxy exchanges it for a session."""
        rec = self._find(actor, ref)
        view = self.view(rec, with_events=False)
        if view.url is None:
            raise ConflictError(
                f"job {rec.name} has no URL (image {rec.spec.image} serves "
                "no web app, or the job has ended)"
            )
        code = "otp_" + secrets.token_urlsafe(24)
        with self._guard:
            now = time.monotonic()
            self._open_codes = {c: v for c, v in self._open_codes.items() if v[2] > now}
            self._open_codes[code] = (actor.id, rec.id, now + ttl_s)
        kind = actions.image_spec(self, rec.spec.image).kind
        path = "lab" if kind == "jupyter-lab" else ""
        return {
            "url": f"{view.url}{path}?token={code}",
            "stable_url": view.url,
            "expires_in_s": ttl_s,
        }

    def redeem_open_code(self, code: str, job_id: str) -> tuple[UserView, str]:
        with self._guard:
            entry = self._open_codes.pop(code, None)
        if entry is None or entry[2] < time.monotonic() or entry[1] != job_id:
            raise AuthError("this link was already used or has expired; run `outgrow open` again")
        user = self.store.get_user_by_id(entry[0])
        if user is None:
            raise AuthError("the user of this link no longer exists")
        _, token = self.store.create_token(entry[0], f"browser-{job_id}")
        return user, token

    def reclaim_instance(self, actor: UserView, instance_id: str, in_s: float) -> dict[str, Any]:
        """Admin only: announce a spot reclaim of an instance (the local provider then takes
        it away at the deadline, as a cloud would). The job on it is moved before that."""
        if not actor.is_admin:
            raise AuthError("only admins can reclaim instances")
        if not 0 <= in_s <= 3600:
            raise ValidationError("in_s must be between 0 and 3600 seconds", field="in_s")
        if self.provider.describe_instance(instance_id) is None:
            raise NotFoundError(f"no instance {instance_id!r}", field="instance")
        deadline = self.provider.reclaim(instance_id, in_s)
        for rec in self.store.list_jobs(None):
            if rec.current_instance_id == instance_id:
                self.store.add_event(
                    rec.id,
                    "info",
                    f"spot reclaim notice for instance {instance_id}: taken away in {in_s:g} s",
                )
        return {"instance_id": instance_id, "reclaim_at": deadline}

    def instance_types(self) -> list[dict[str, Any]]:
        return [
            {
                "name": t.name,
                "vcpus": t.vcpus,
                "memory_gib": t.memory_gib,
                "price_per_hour": t.price_per_hour,
                "spot_price_per_hour": t.spot_price_per_hour,
            }
            for t in self.catalog
        ]

    def prometheus(self) -> str:
        counts: dict[str, int] = {}
        lines = [f'outgrow_info{{version="{__version__}"}} 1', "# TYPE outgrow_jobs gauge"]
        jobs = self.store.list_jobs(None)
        for j in jobs:
            counts[j.status] = counts.get(j.status, 0) + 1
        for st in S:
            lines.append(f'outgrow_jobs{{status="{st.value}"}} {counts.get(st.value, 0)}')
        lines.append("# TYPE outgrow_job_memory_bytes gauge")
        lines.append("# TYPE outgrow_job_cpu_vcpus gauge")
        for j in jobs:
            if j.status == S.EXECUTING and self.scheduler is not None:
                last = self.scheduler.last_sample(j.id)
                if last is not None:
                    lines.append(
                        f'outgrow_job_memory_bytes{{job="{j.id}",name="{j.name}"}} '
                        f"{last.mem_used_bytes}"
                    )
                    lines.append(
                        f'outgrow_job_cpu_vcpus{{job="{j.id}",name="{j.name}"}} '
                        f"{last.cpu_used_vcpus}"
                    )
        return "\n".join(lines) + "\n"

    def agent_for(self, rec: JobRecord) -> Any:
        if not rec.current_instance_id:
            return None
        inst = self.provider.describe_instance(rec.current_instance_id)
        return agent(inst) if inst else None


def image_view(spec: ImageSpec, **extra: Any) -> ImageView:
    """The API's view of an image spec (built-in, or derived by a user)."""
    fields: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind,
        "pip": list(spec.pip),
        "description": spec.description,
        "docs": spec.docs,
        "default_port": spec.default_port,
    }
    return ImageView(**{**fields, **extra})


def _bad_status(s: str) -> None:
    raise ValidationError(
        f"unknown status {s!r} (one of: {', '.join(x.value for x in S)})", field="status"
    )


def _downsample(points: list[Any], step: float) -> list[Any]:
    out: list[Any] = []
    bucket: list[Any] = []
    start = None
    for p in points:
        if start is None or p.t >= start + step or p.instance_id != bucket[-1].instance_id:
            if bucket:
                out.append(bucket[-1])
            bucket, start = [], p.t
        bucket.append(p)
    if bucket:
        out.append(bucket[-1])
    return out
