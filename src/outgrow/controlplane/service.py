"""ControlPlane: the facade the API (and only the API) calls — authorisation, validation,
queueing. The work is done by the parts it wires together:

    accounts   users, tokens, templates, one-time links
    images     the App Library
    lifecycle  every state change and its after-commit hooks (terminal clean-up, proxy)
    instances  creating / recording / ending instances, warm targets
    jobdirs    the job directory and logs
    actions    the long job actions (start, migrate, suspend, resume, cancel, …)
    workers    one action per job at a time
    scheduler  samples + rules → actions;  reconciler: start-up repair
    snapshots  periodic / manual snapshots, rollback, recovery after a host restart
    views      what the API shows

A job is visible to its owner and to admins; to anybody else it does not exist
(NotFoundError), so ids do not leak.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from outgrow.controlplane.accounts import Accounts
from outgrow.controlplane.hub import HubJobs
from outgrow.controlplane.images import Images
from outgrow.controlplane.instances import Instances
from outgrow.controlplane.jobdirs import JobDirs
from outgrow.controlplane.jobs import JobActions
from outgrow.controlplane.lifecycle import Lifecycle
from outgrow.controlplane.reconcile import Reconciler
from outgrow.controlplane.scheduler import Scheduler
from outgrow.controlplane.snapshots import Snapshots
from outgrow.controlplane.views import Views, downsample
from outgrow.controlplane.workers import Workers
from outgrow.domain.instance_types import InstanceType
from outgrow.domain.jobs import (
    EventView,
    JobSpec,
    JobView,
    TemplateView,
    UserView,
    spec_from_mapping,
)
from outgrow.domain.movemode import MoveModeChoice
from outgrow.domain.policy import (
    format_migrate_policy,
    format_vm_policy,
    parse_cpu_range,
    parse_mem_range,
    parse_migrate_policy,
    parse_vm_policy,
)
from outgrow.domain.snapshots import SnapshotResult, SnapshotView, parse_interval
from outgrow.domain.states import JobState, check_action, check_restart, parse_state
from outgrow.errors import AuthError, CheckpointError, ConflictError, NotFoundError, ValidationError
from outgrow.orchestrator.migrate import Connect, Migrator, agent
from outgrow.providers.base import Provider
from outgrow.settings import Settings
from outgrow.store import JobRecord, Store

JUPYTER_IDLE_DEFAULT_S = 2 * 3600.0
USER_ACTION_WAIT_S = 10.0
SNAPSHOT_WAIT_S = 1800.0  # a user waits for a snapshot or a rollback of a big job


T = TypeVar("T")


def _outcome(done: Future[T], what: str) -> T:
    """The result of a job action a user waits for (its error, raised here)."""
    try:
        return done.result(timeout=SNAPSHOT_WAIT_S)
    except FutureTimeout:
        raise CheckpointError(
            f"{what} is still running after {SNAPSHOT_WAIT_S:g} s; see the job's events"
        ) from None


class ControlPlane:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        provider: Provider,
        public_url: str | None = None,
        connect: Connect = agent,
    ):
        self.settings = settings
        self.store = store
        self.provider = provider
        self.stopping = threading.Event()
        self.accounts = Accounts(store)
        self.images = Images(store, provider)
        self.hub = HubJobs(store, settings, self.images)
        self.lifecycle = Lifecycle(store)
        self.instances = Instances(store, provider, self.images, self.stopping)
        self.catalog = self.instances.catalog
        self.jobdirs = JobDirs(store, provider, connect, settings.data_dir)
        self.workers = Workers(store, self.stopping)
        self.actions = JobActions(
            store,
            provider,
            connect,
            Migrator(provider, connect),
            self.lifecycle,
            self.instances,
            self.jobdirs,
            self.images,
            token=self.workers.token,
        )
        self.snapshots = Snapshots(
            store,
            provider,
            connect,
            self.lifecycle,
            self.instances,
            self.jobdirs,
            self.images,
            self.workers,
            keep=settings.checkpoint_keep,
            default_interval_s=settings.checkpoint_interval,
            on_cancelled=self.actions.interrupted,
        )
        self.scheduler = Scheduler(
            store,
            provider,
            connect,
            self.actions,
            self.workers,
            self.instances,
            self.images,
            self.stopping,
            settings.metrics_retention_days * 86400,
            self.snapshots,
        )
        self.reconciler = Reconciler(
            store,
            provider,
            connect,
            self.lifecycle,
            self.instances,
            self.jobdirs,
            self.actions,
            self.workers,
            self.snapshots,
        )
        public = public_url or f"http://{settings.host}:{settings.port}"
        self.views = Views(
            store,
            provider,
            self.images,
            public,
            settings.agent_port,
            self.scheduler.last_sample,
            settings.checkpoint_interval,
        )

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        if self.hub.enabled:
            # The hub's API listens where instances reach this host: that address must
            # exist before the first instance does (docs/jupyterhub.md).
            self.provider.ensure_network()
        self.reconciler.run()
        self.scheduler.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.scheduler.is_alive():
            self.scheduler.join()
        self.workers.shutdown()

    # ---- jobs: reading --------------------------------------------------------------
    def _find(self, actor: UserView, ref: str) -> JobRecord:
        rec = self.store.find_job(None if actor.is_admin else actor.id, ref)
        if rec is None:
            raise NotFoundError(f"no job {ref!r}", field="job")
        return rec

    def view(self, job_id: str) -> JobView:
        return self.views.job(self.actions.job(job_id))

    def list_jobs(self, actor: UserView, statuses: list[str] | None = None) -> list[JobView]:
        for s in statuses or ():
            parse_state(s, "status")
        recs = self.store.list_jobs(None if actor.is_admin else actor.id, statuses)
        return [self.views.job(r, with_events=False) for r in recs]

    def get_job(self, actor: UserView, ref: str) -> JobView:
        return self.views.job(self._find(actor, ref))

    def proxy_target(self, actor: UserView, job_id: str) -> tuple[str, str | None, int, str]:
        """For the stable-URL proxy: (status, current instance address, the port Jupyter
        serves on, its token)."""
        rec = self._find(actor, job_id)
        image = self.views.image_of(rec)
        if rec.id != job_id or image is None:  # the stable URL takes ids only
            raise NotFoundError(f"no job {job_id!r}", field="job")
        if rec.spec.hub_prefix is not None:  # the hub's auth guards it, not outgrow's
            raise NotFoundError(
                f"job {rec.name} is a JupyterHub server: it is served at {rec.spec.hub_prefix}",
                field="job",
            )
        if not image.is_jupyter or image.port is None:
            raise NotFoundError(f"job {rec.name} has no Jupyter server", field="job")
        insts = self.store.instances(rec.id) if rec.current_instance_id else []
        address = next((i.address for i in insts if i.id == rec.current_instance_id), None)
        return rec.status, address, image.port, rec.jupyter_token

    def logs(
        self, actor: UserView, ref: str, stream: str = "stdout", offset: int = 0
    ) -> dict[str, Any]:
        rec = self._find(actor, ref)
        if stream not in ("stdout", "stderr"):
            raise ValidationError("stream must be stdout or stderr", field="stream")
        if offset < 0:
            raise ValidationError("offset must be >= 0", field="offset")
        chunk = self.jobdirs.read_log(rec.id, rec.current_instance_id, stream, offset)
        return chunk.model_dump()

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
        return self.views.metrics(rec, downsample(points, step) if step else points)

    # ---- jobs: changing -------------------------------------------------------------
    def submit(self, actor: UserView, spec: JobSpec) -> JobView:
        image = self.images.check_job(spec)  # NotFoundError names the image
        if spec.instance_type:
            self.catalog.get(spec.instance_type)
        else:
            cpu, mem = parse_cpu_range(spec.cpu), parse_mem_range(spec.mem)
            if self.catalog.cheapest(cpu.min, mem.min, cpu.max, mem.max) is None:
                raise ValidationError(
                    f"no instance type fits -c {spec.cpu} -m {spec.mem}", field="mem"
                )
        if not image.is_jupyter and not image.is_oci and not spec.script.strip():
            raise ValidationError("a python job needs a job script", field="script")
        if spec.idle_timeout_s is None and image.is_jupyter:
            spec = spec.model_copy(update={"idle_timeout_s": JUPYTER_IDLE_DEFAULT_S})
        with self.hub.creating(actor, spec, image) as hub_token:
            job_id = self.store.create_job(actor.id, spec, hub_token or secrets.token_hex(24))
        self.workers.run(job_id, self.actions.start)
        return self.view(job_id)

    def submit_template(self, actor: UserView, name: str, overrides: dict[str, Any]) -> JobView:
        t = self.accounts.get_template(actor, name)
        return self.submit(actor, spec_from_mapping({**t.spec.model_dump(), **overrides}))

    def save_template(self, actor: UserView, ref: str, name: str) -> TemplateView:
        rec = self._find(actor, ref)
        if rec.spec.hub_prefix is not None:  # its env holds the hub's token for the server
            raise ConflictError(f"job {rec.name} is a JupyterHub server: no templates of it")
        return self.accounts.save_template(actor, name, rec.spec)

    def migrate(
        self,
        actor: UserView,
        ref: str,
        instance_type: str | None = None,
        cpu: float | None = None,
        mem: float | None = None,
        mode: MoveModeChoice | None = None,
    ) -> JobView:
        """``mode``: plain/postcopy/auto for this move (else the job's moveMode)."""
        rec = self._find(actor, ref)
        check_action("migrate", rec.status)
        cur = self.instances.current_type(rec)
        if cur is None:
            raise ConflictError(f"job {rec.name} has no instance")
        target = self._migration_target(rec, cur, instance_type, cpu, mem)
        reason = f"manual → {target.name} ({target.describe()})"
        if mode is not None:
            reason += f", moveMode={mode}"
        args = (target, reason, "migration", False, "", mode)
        # Right after Executing the start (or last move) may still be telling the job
        # where it runs: wait for that, but not for a move that is already under way.
        if not self.workers.run(
            rec.id,
            self.actions.migrate,
            *args,
            wait=USER_ACTION_WAIT_S,
            still=self._executing(rec.id),
        ):
            raise ConflictError(f"job {rec.name} is busy with another action")
        return self.view(rec.id)

    def _executing(self, job_id: str) -> Callable[[], bool]:
        def still() -> bool:
            rec = self.store.get_job(job_id)
            return rec is not None and parse_state(rec.status) == JobState.EXECUTING

        return still

    def _migration_target(
        self,
        rec: JobRecord,
        cur: InstanceType,
        name: str | None,
        cpu: float | None,
        mem: float | None,
    ) -> InstanceType:
        if name:
            target = self.catalog.get(name)
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
        return target

    def modify(
        self,
        actor: UserView,
        ref: str,
        migrate_policy: str | None = None,
        vm_policy: str | None = None,
        idle_timeout_s: float | None = None,
        checkpoint_interval: float | str | None = None,
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
        if checkpoint_interval is not None:
            seconds = parse_interval(checkpoint_interval)
            if seconds is None:
                raise ValidationError(
                    "checkpoint_interval: give a duration (15m, 900) or off",
                    field="checkpoint_interval",
                )
            update["checkpoint_interval"] = seconds
        if not update:
            raise ValidationError("nothing to modify", field="migrate_policy")
        self.store.update_job(rec.id, spec=rec.spec.model_copy(update=update))
        changes = ", ".join(f"{k}={v}" for k, v in update.items())
        self.store.add_event(rec.id, "info", f"policy modified: {changes}")
        return self.view(rec.id)

    def _queue(self, actor: UserView, ref: str, action: str, *args: Any) -> JobView:
        rec = self._find(actor, ref)
        check_action(action, rec.status)
        fn = getattr(self.actions, action)
        if not self.workers.run(rec.id, fn, *args, wait=USER_ACTION_WAIT_S):
            raise ConflictError(f"job {rec.name} is busy with another action")
        return self.view(rec.id)

    def snapshot(self, actor: UserView, ref: str) -> SnapshotResult:
        """Take a snapshot of a running job now; returns once it is stored."""
        rec = self._find(actor, ref)
        check_action("snapshot", rec.status)
        done: Future[SnapshotResult] = Future()
        if not self.workers.run(
            rec.id, self.snapshots.take, "manual", done, wait=USER_ACTION_WAIT_S
        ):
            raise ConflictError(f"job {rec.name} is busy with another action")
        return _outcome(done, f"the snapshot of job {rec.name}")

    def list_snapshots(self, actor: UserView, ref: str) -> list[SnapshotView]:
        return self.store.snapshots(self._find(actor, ref).id)

    def restore(self, actor: UserView, ref: str, snapshot_id: str) -> JobView:
        """Roll a running job back to one of its snapshots (on a fresh instance); returns
        once it runs from it. On failure the job runs on as it was (the error says why)."""
        rec = self._find(actor, ref)
        self.store.snapshot_location(rec.id, snapshot_id)  # NotFoundError names it
        check_action("restore", rec.status)
        self.snapshots.check_restorable(rec)
        done: Future[None] = Future()
        args = (snapshot_id, actor.name, done)
        if not self.workers.run(rec.id, self.snapshots.restore, *args, wait=USER_ACTION_WAIT_S):
            raise ConflictError(f"job {rec.name} is busy with another action")
        _outcome(done, f"the rollback of job {rec.name}")
        return self.view(rec.id)

    def suspend(self, actor: UserView, ref: str) -> JobView:
        return self._queue(actor, ref, "suspend", f"suspended by {actor.name}")

    def resume(self, actor: UserView, ref: str) -> JobView:
        return self._queue(actor, ref, "resume", f"resumed by {actor.name}")

    def cancel(self, actor: UserView, ref: str) -> JobView:
        rec = self._find(actor, ref)
        check_action("cancel", rec.status)
        self.instances.drop_warm(rec.id)
        reason = f"cancelled by {actor.name}"
        # A running action waiting (an agent, an image build, a retry) stops at once and
        # ends the job itself; one that does not wait finishes first, then the cancel runs.
        self.actions.note_cancel(rec.id, reason)
        self.workers.cancel(rec.id)
        self.workers.run_when_free(rec.id, self.actions.cancel, reason)
        return self.view(rec.id)

    def restart(self, actor: UserView, ref: str) -> JobView:
        rec = self._find(actor, ref)
        check_restart(rec.status)
        if rec.spec.hub_prefix is not None:
            raise ConflictError(
                f"job {rec.name} is a JupyterHub server: start it again from the hub"
            )
        self.store.restart_job(rec.id)
        self.workers.run(rec.id, self.actions.start)
        return self.view(rec.id)

    def delete(self, actor: UserView, ref: str) -> None:
        """Hide a job that has ended (its name can be used again; OutgrowSpawner starts each
        server under the same name)."""
        self.store.delete_job(self._find(actor, ref).id)  # ConflictError unless it ended

    def open_link(self, actor: UserView, ref: str, ttl_s: float = 120.0) -> dict[str, Any]:
        """A one-time link to the job's stable URL for a browser (good once, for this job,
        for ``ttl_s`` seconds)."""
        rec = self._find(actor, ref)
        image = self.views.image_of(rec)
        url = self.views.url(rec, image)
        if url is None:
            raise ConflictError(
                f"job {rec.name} has no URL (image {rec.spec.image} serves "
                "no web app, or the job has ended)"
            )
        code = self.accounts.open_code(actor, rec.id, ttl_s)
        path = "lab" if image is not None and image.kind == "jupyter-lab" else ""
        return {"url": f"{url}{path}?token={code}", "stable_url": url, "expires_in_s": ttl_s}

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
        return [t.to_dict() for t in self.catalog]
