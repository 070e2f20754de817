"""Long job actions, run by the per-job workers: start, migrate, suspend, resume, evacuate,
cancel, finish, lost.

Each action walks the job through the state machine (every transition, through the
Lifecycle, is an event with its cause; entering a terminal state releases the job's
storage and security group in one hook) and really drives the provider and the agents.
A failure never loses the job: a failed migration or suspend leaves it Executing where it
was.

A cancel interrupts an action while it waits (``outgrow.cancel``: the worker's token is
passed to every provider call and wait): the wait raises CancelledError, the action
stops, and :meth:`JobActions.cancel` ends what it made — the job is Cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable

from outgrow.agentapi.client import AgentApi
from outgrow.agentapi.models import (
    AgentPhase,
    CheckpointRequest,
    ImageBody,
    JobNote,
    MoveNote,
    RestoreRequest,
    StartJob,
)
from outgrow.controlplane.hub import job_base_url
from outgrow.controlplane.images import Images
from outgrow.controlplane.instances import Instances, now
from outgrow.controlplane.jobdirs import JobDirs
from outgrow.controlplane.lifecycle import Lifecycle
from outgrow.domain.images import DEFAULT_JUPYTER_PORT, ImageSpec
from outgrow.domain.instance_types import InstanceType
from outgrow.domain.movemode import MoveModeChoice
from outgrow.domain.states import JobState as S
from outgrow.domain.states import is_terminal
from outgrow.errors import (
    CancelledError,
    CapacityError,
    JobLostError,
    NotFoundError,
    OutgrowError,
)
from outgrow.orchestrator.migrate import Connect, Migrator, wait_job
from outgrow.providers.base import InstanceInfo, Provider
from outgrow.store import JobRecord, Store

log = logging.getLogger("outgrow.controlplane")

IMAGE_EVENT_EVERY_S = 3.0
MIGRATION_TIMINGS = (
    "freeze_s",
    "dump_s",
    "transfer_s",
    "storage_s",
    "restore_s",
    "drain_s",
    "total_s",
    "create_target_s",
)


def start_request(job: JobRecord, image: ImageSpec, archive_url: str | None = None) -> StartJob:
    """What the agent needs to start ``job`` from ``image`` (an OCI image's archive, when
    the provider shipped it: ``image.oci["archive_url"]``, see agent/oci_ship.py)."""
    body = ImageBody.of(image)
    if body.oci is not None and archive_url:
        body = body.model_copy(update={"oci": {**body.oci, "archive_url": archive_url}})
    return StartJob(
        job_id=job.id,
        kind=image.kind,
        image=body,
        script=job.spec.script,
        env=job.spec.env,
        port=image.port or DEFAULT_JUPYTER_PORT,
        jupyter_token=job.jupyter_token if image.is_jupyter else "",
        base_url=job_base_url(job),
        evade_oom=job.spec.migrate().evade_oom,
    )


class JobActions:
    def __init__(
        self,
        store: Store,
        provider: Provider,
        connect: Connect,
        migrator: Migrator,
        lifecycle: Lifecycle,
        instances: Instances,
        jobdirs: JobDirs,
        images: Images,
        token: Callable[[str], threading.Event | None] = lambda job_id: None,
    ):
        self.store = store
        self.token = token  # the running action's cancellation token (Workers.token)
        self._cancel_reasons: dict[str, str] = {}
        self.provider = provider
        self.connect = connect
        self.migrator = migrator
        self.lifecycle = lifecycle
        self.instances = instances
        self.jobdirs = jobdirs
        self.images = images
        lifecycle.on_terminal(self._release_ended, name="release the job's resources")

    def job(self, job_id: str) -> JobRecord:
        rec = self.store.get_job(job_id)
        if rec is None:
            raise NotFoundError(f"no job {job_id}")
        return rec

    def _to(self, job_id: str, state: S, reason: str) -> None:
        self.lifecycle.transition(job_id, state, reason)

    def _release_ended(self, job_id: str, _: object) -> None:
        """The job ended (any way, any path): nothing of it may outlive it."""
        self.instances.drop_warm(job_id)
        job = self.job(job_id)
        if job.checkpoint_dir:
            self.drop_checkpoint(job.checkpoint_dir)
            self.store.update_job(job_id, checkpoint_dir=None)
        self.jobdirs.delete(job_id)
        try:
            self.provider.delete_security_group(job_id)
        except OutgrowError as exc:
            log.error("deleting the security group of job %s failed: %s", job_id, exc)

    def note_cancel(self, job_id: str, reason: str) -> None:
        """A cancel was asked (by whom): the interrupted action ends the job with it."""
        self._cancel_reasons[job_id] = reason

    def _cancelled(self, job_id: str, exc: CancelledError) -> None:
        """The action was interrupted by a cancel: end what it made, the job Cancelled."""
        log.info("job %s: %s", job_id, exc)
        self.cancel(job_id, self._cancel_reasons.get(job_id) or str(exc))

    def interrupted(self, job_id: str, exc: CancelledError) -> None:
        """Another action (a snapshot) was interrupted by a cancel: end the job Cancelled."""
        self._cancelled(job_id, exc)

    def drop_checkpoint(self, location: str) -> None:
        try:
            self.provider.delete_checkpoint(location)
        except OutgrowError as exc:
            log.error("deleting checkpoint %s: %s", location, exc)

    def _image_events(self, job_id: str, name: str) -> Callable[[str], None]:
        """An image build's progress as "info" events (what a JupyterHub spawn page shows),
        at most one every IMAGE_EVENT_EVERY_S seconds: the latest line."""
        last = [0.0]

        def say(line: str) -> None:
            now = time.monotonic()
            if now - last[0] >= IMAGE_EVENT_EVERY_S:
                last[0] = now
                self.store.add_event(job_id, "info", f"image {name}: {line[:200]}")

        return say

    # ---- start ------------------------------------------------------------------------
    def start(self, job_id: str) -> None:
        try:
            self._start(job_id)
        except CancelledError as exc:
            self._cancelled(job_id, exc)

    def _start(self, job_id: str) -> None:
        job = self.job(job_id)
        if job.status in (S.SUBMITTED, S.NO_AVAILABLE_HOST):
            self._to(job_id, S.INITIALIZING, "choosing an instance")
        cancel = self.token(job_id)
        try:
            image = self.images.for_job(job.spec)
            itype = self.instances.initial_type(job)
            self.store.add_event(job_id, "info", f"preparing image {image.name}")
            self.provider.prepare_image(
                image, self._image_events(job_id, image.name), cancel=cancel
            )
            self.images.check_job(job.spec)  # an OCI rootfs unpacked just now
            url = self.provider.image_archive_url(image.oci.digest) if image.oci else None
            inst = self.instances.create(job, itype, cancel=cancel)
        except CancelledError:
            raise
        except CapacityError as exc:
            self._to(job_id, S.NO_AVAILABLE_HOST, str(exc))
            return
        except OutgrowError as exc:
            self._to(job_id, S.FAIL_TO_EXECUTE, str(exc))
            return
        self.instances.record(job_id, inst)
        self.store.update_job(job_id, current_instance_id=inst.id)
        where = f"instance {inst.id} ({itype.name}, {itype.describe()}) at {inst.address}"
        self._to(job_id, S.STARTING, where)
        self._run_on(job_id, inst, lambda a: a.start_job(start_request(job, image, url)))

    def await_start(self, job_id: str) -> None:
        """The job was Starting when the control plane restarted and its agent still
        prepares it: wait for it to run (or fail) as start() would have."""
        job = self.job(job_id)
        inst = self.provider.describe_instance(job.current_instance_id or "")
        if inst is None:
            self.store.update_job(job_id, current_instance_id=None)
            self._to(job_id, S.FAIL_TO_EXECUTE, "instance lost while starting")
            return
        try:
            self._run_on(job_id, inst, None)
        except CancelledError as exc:
            self._cancelled(job_id, exc)

    def _run_on(
        self, job_id: str, inst: InstanceInfo, launch: Callable[[AgentApi], object] | None
    ) -> None:
        """Mount the job's directory on ``inst`` and ``launch`` it there (None: it was
        launched already), then wait until it runs: Executing, or FailToExecute."""
        try:
            if launch is not None:
                self.jobdirs.mount(job_id, inst)
                with self.connect(inst, 30.0) as a:
                    launch(a)
            ended = (AgentPhase.RUNNING, AgentPhase.EXITED, AgentPhase.FAILED)
            st = wait_job(
                inst, phases=ended, timeout=600, connect=self.connect, cancel=self.token(job_id)
            )
        except CancelledError:
            raise  # the cancel stops the job there and ends the instance
        except OutgrowError as exc:
            self.jobdirs.release_quietly(job_id, inst, keep_logs=True)
            self.instances.end(inst.id, "failed")
            self.store.update_job(job_id, current_instance_id=None)
            if self.job(job_id).status == S.STARTING:
                self._to(job_id, S.FAIL_TO_EXECUTE, str(exc))
            return
        self._to(job_id, S.EXECUTING, "job running")
        self._note(job_id, inst)
        if st.phase != AgentPhase.RUNNING:  # a short batch job may end before we look
            self.finish(job_id, st.phase, st.exit_code, st.message)

    def _note(self, job_id: str, inst: InstanceInfo, move: MoveNote | None = None) -> None:
        """Tell the job where it runs now (its status file, docs/jupyterlab.md); a job
        that is not told runs on all the same."""
        note = JobNote(job_id=job_id, instance_type=inst.type.name, last_move=move)
        try:
            with self.connect(inst, 30.0) as a:
                a.note_job(note)
        except OutgrowError as exc:
            log.warning("could not tell job %s where it runs: %s", job_id, exc)

    # ---- migrate ----------------------------------------------------------------------
    def migrate(
        self,
        job_id: str,
        target: InstanceType,
        reason: str,
        event_type: str = "migration",
        reclaim: bool = False,
        rule: str = "",
        mode: MoveModeChoice | None = None,
    ) -> None:
        """``rule``: the policy rule asking (empty: manual); ``mode``: plain/postcopy/auto
        for this move only (else the job's moveMode)."""
        job = self.job(job_id)
        if job.status != S.EXECUTING or job.current_instance_id is None:
            return
        source = self.provider.describe_instance(job.current_instance_id)
        if source is None:
            self.store.add_event(
                job_id, "error", f"cannot migrate: instance {job.current_instance_id} is gone"
            )
            return
        self._to(job_id, S.FLOATING, reason)
        target_inst = self.instances.take_warm(job_id, target.name)
        cancel = self.token(job_id)
        try:
            if target_inst is None:
                # Leaving a reclaimed spot instance: on-demand unless the job is spotOnly.
                spot = (not job.spec.vm().allows_on_demand) if reclaim else None
                tags = {"outgrow:migrating-from": source.id}
                target_inst = self.instances.create(job, target, tags, spot=spot, cancel=cancel)
            self.instances.record(job_id, target_inst, status="starting")
            self.lifecycle.before_checkpoint(job_id)
            result = self.migrator.migrate(
                source,
                target=target_inst,
                reason=reason,
                delete_source=False,
                cancel=cancel,
                mode=mode or job.spec.migrate().move_mode,
                rule="reclaim" if reclaim else rule,
                on_step=lambda s: log.info("migrate %s: %s", job_id, s),
            )
        except CancelledError as exc:  # the job runs on the source: the cancel stops it
            if target_inst is not None:
                self.instances.end(target_inst.id, "failed")
            self._cancelled(job_id, exc)
            return
        except JobLostError as exc:
            if target_inst is not None:
                self.instances.end(target_inst.id, "failed")
            self.instances.end(source.id, "failed")
            self.store.update_job(job_id, current_instance_id=None)
            self._to(job_id, S.FAIL_TO_COMPLETE, str(exc))
            return
        except OutgrowError as exc:
            if target_inst is not None:
                self.instances.end(target_inst.id, "failed")
            self.store.add_event(
                job_id, "error", f"migration failed, job kept on {source.id}: {exc}"
            )
            self._to(job_id, S.EXECUTING, "migration failed; still on the source")
            return
        self.instances.end(source.id, "reclaimed" if reclaim else "migrated-from")
        self.store.update_instance(target_inst.id, status="normal")
        self.store.update_job(
            job_id, current_instance_id=target_inst.id, last_migration_at=time.time()
        )
        self.store.add_event(
            job_id,
            event_type,
            reason,
            from_type=result.from_type,
            to_type=result.to_type,
            downtime_s=result.downtime_s,
            checkpoint_bytes=result.checkpoint_bytes,
            transfer=result.transfer,
            mode=result.mode,
            mode_reason=result.mode_reason,
            lazy_pages=result.lazy_pages,
            timings={k: getattr(result, k) for k in MIGRATION_TIMINGS},
            source_instance=source.id,
            target_instance=target_inst.id,
        )
        how = "post-copy" if result.mode == "postcopy" else "plain"
        self._to(
            job_id,
            S.EXECUTING,
            f"running on {target_inst.id} ({target.name}) after {reason}: moved in "
            f"{result.downtime_s:.2f} s ({how})",
        )
        move = MoveNote(
            at=time.time(),
            reason=reason[:500],
            from_type=result.from_type,
            to_type=result.to_type,
            downtime_s=result.downtime_s,
            to_mem_bytes=target_inst.type.memory_bytes,
        )
        self._note(job_id, target_inst, move)

    # ---- suspend / resume -------------------------------------------------------------
    def suspend(self, job_id: str, reason: str, ended: str = "released") -> None:
        job = self.job(job_id)
        if job.status != S.EXECUTING or job.current_instance_id is None:
            return
        inst = self.provider.describe_instance(job.current_instance_id)
        if inst is None:
            return
        self._to(job_id, S.SUSPENDING, reason)
        self.instances.drop_warm(job_id)  # a suspended job holds no instance, warm or not
        self.lifecycle.before_checkpoint(job_id)
        # Object storage on a cloud (the instance goes away), a directory of the control
        # plane's host the agents share on the local provider.
        where = self.provider.checkpoint_location(job_id, secrets.token_hex(4))
        try:
            with self.connect(inst, 30.0) as a:
                ck = a.checkpoint(CheckpointRequest.into(where))
                a.commit()
        except OutgrowError as exc:
            with self.connect(inst, 30.0) as a, contextlib.suppress(OutgrowError):
                a.abort()
            self.drop_checkpoint(where)
            self._to(job_id, S.EXECUTING, f"suspend failed, job kept running: {exc}")
            return
        self.jobdirs.release_quietly(job_id, inst, keep_logs=True)
        self.instances.end(inst.id, ended)
        self.store.update_job(job_id, current_instance_id=None, checkpoint_dir=where)
        self.store.add_event(
            job_id,
            "info",
            f"checkpoint {ck.local_bytes} bytes in {ck.total_s:.2f} s",
            checkpoint_bytes=ck.local_bytes,
        )
        self._to(job_id, S.SUSPENDED, "checkpoint saved; instance released")

    def resume(
        self,
        job_id: str,
        reason: str,
        itype: InstanceType | None = None,
        spot: bool | None = None,
    ) -> None:
        job = self.job(job_id)
        if job.status != S.SUSPENDED or not job.checkpoint_dir:
            return
        self._to(job_id, S.RESUMING, reason)
        if itype is None:
            # The size the job had when it was suspended (its last released instance).
            released = [r for r in self.store.instances(job_id) if r.status == "released"]
            catalog = self.instances.catalog
            itype = catalog.get(released[-1].type) if released else self.instances.initial_type(job)
        try:
            inst = self.instances.create(job, itype, spot=spot, cancel=self.token(job_id))
        except CancelledError as exc:  # the checkpoint goes with the job (terminal hook)
            self._cancelled(job_id, exc)
            return
        except OutgrowError as exc:
            self._to(job_id, S.SUSPENDED, f"resume failed: {exc}")
            return
        self.instances.record(job_id, inst)
        where = job.checkpoint_dir
        try:
            self.jobdirs.mount(job_id, inst)
            with self.connect(inst, 30.0) as a:
                a.restore(RestoreRequest.out_of(where))
        except OutgrowError as exc:
            self.jobdirs.release_quietly(job_id, inst, keep_logs=False)
            self.instances.end(inst.id, "failed")
            self._to(job_id, S.SUSPENDED, f"resume failed, checkpoint kept: {exc}")
            return
        self.drop_checkpoint(where)
        self.store.update_job(
            job_id, current_instance_id=inst.id, checkpoint_dir=None, last_migration_at=time.time()
        )
        self._to(job_id, S.EXECUTING, f"restored on {inst.id} ({itype.name}) at {inst.address}")
        self._note(job_id, inst)

    def evacuate(self, job_id: str, target: InstanceType, reason: str) -> None:
        """A spot reclaim with no time to create a target first: checkpoint at once (the
        instance may go any second), then restore on a new instance — on-demand unless the
        job is spotOnly."""
        self.store.add_event(
            job_id, "info", f"{reason}: too little time to create a target, checkpointing now"
        )
        self.suspend(job_id, reason, ended="reclaimed")
        job = self.job(job_id)
        if job.status == S.SUSPENDED:
            spot = not job.spec.vm().allows_on_demand
            self.resume(job_id, f"restoring after {reason}", itype=target, spot=spot)

    # ---- ending -----------------------------------------------------------------------
    def cancel(self, job_id: str, reason: str) -> None:
        job = self.job(job_id)
        self._cancel_reasons.pop(job_id, None)
        if is_terminal(job.status):  # it ended on its own while the cancel waited its turn
            return
        if job.status in (S.SUBMITTED, S.SUSPENDED, S.NO_AVAILABLE_HOST):
            self._to(job_id, S.CANCELLED, reason)
            return
        if job.status != S.CANCELLING:
            self._to(job_id, S.CANCELLING, reason)
        for rec in self.store.instances(job_id):
            if rec.ended_at is None:
                try:
                    inst = self.provider.describe_instance(rec.id)
                    if inst is not None:
                        with self.connect(inst, 30.0) as a:
                            a.stop_job(grace_s=3)
                        if rec.id == job.current_instance_id:
                            self.jobdirs.release_quietly(job_id, inst, keep_logs=True)
                except OutgrowError as exc:
                    log.warning("stopping job %s on %s: %s", job_id, rec.id, exc)
                self.instances.end(rec.id, "released")
        self.store.update_job(job_id, current_instance_id=None)
        self._to(job_id, S.CANCELLED, reason)

    def finish(self, job_id: str, phase: AgentPhase, exit_code: int | None, message: str) -> None:
        """The job's process ended on its own: record how and release the instance."""
        job = self.job(job_id)
        self.instances.drop_warm(job_id)
        if job.current_instance_id:
            inst = self.provider.describe_instance(job.current_instance_id)
            if inst is not None:
                self.jobdirs.release_quietly(job_id, inst, keep_logs=True)
            self.instances.end(job.current_instance_id, "released")
        self.store.update_job(job_id, current_instance_id=None, exit_code=exit_code)
        ok = phase == AgentPhase.EXITED and exit_code == 0
        self._to(job_id, S.COMPLETED if ok else S.FAIL_TO_COMPLETE, message or phase.value)

    def lost(self, job_id: str, instance_id: str, status: str, reason: str) -> None:
        """The job's instance went away under it (a reclaim deadline passed, the instance
        is gone): the job failed, and everything it held is released."""
        with contextlib.suppress(NotFoundError):
            self.store.update_instance(instance_id, status=status, ended_at=now())
        self.store.update_job(job_id, current_instance_id=None)
        self._to(job_id, S.FAIL_TO_COMPLETE, reason)
