"""Long job actions, run by per-job workers: start, migrate, suspend, resume, cancel.

Each action walks the job through the state machine (every transition is an event with
its cause) and really drives the provider and the agents. A failure never loses the job:
a failed migration or suspend leaves it Executing where it was.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from outgrow.agent.images import BUILTIN_IMAGES, ImageSpec
from outgrow.controlplane import jobdirs
from outgrow.domain.instance_types import InstanceType
from outgrow.domain.policy import parse_cpu_range, parse_mem_range
from outgrow.domain.states import JobState as S
from outgrow.domain.states import is_terminal
from outgrow.errors import CapacityError, JobLostError, NotFoundError, OutgrowError
from outgrow.orchestrator.migrate import agent, wait_job
from outgrow.providers.base import InstanceInfo
from outgrow.store import InstanceRecord, JobRecord

if TYPE_CHECKING:
    from outgrow.controlplane.service import ControlPlane

log = logging.getLogger("outgrow.controlplane")


def now() -> datetime:
    return datetime.now(UTC)


def image_spec(cp: ControlPlane, name: str) -> ImageSpec:
    view = cp.store.get_image(name)
    if view is None:
        if name in BUILTIN_IMAGES:
            return BUILTIN_IMAGES[name]
        raise NotFoundError(f"unknown image {name!r}", field="image")
    return ImageSpec(
        name=view.name,
        kind=view.kind,  # type: ignore[arg-type]
        pip=tuple(view.pip),
        description=view.description,
        docs=view.docs,
        default_port=view.default_port,
    )


def initial_type(cp: ControlPlane, job: JobRecord) -> InstanceType:
    """The cheapest type meeting the ranges' minimums (and not above their maximums)."""
    if job.spec.instance_type:
        return cp.catalog.get(job.spec.instance_type)
    cpu, mem = parse_cpu_range(job.spec.cpu), parse_mem_range(job.spec.mem)
    t = cp.catalog.cheapest(
        min_vcpus=cpu.min, min_memory_gib=mem.min, max_vcpus=cpu.max, max_memory_gib=mem.max
    )
    if t is None:
        raise CapacityError(
            f"no instance type has {cpu.min:g} vCPU and {mem.min:g} GiB "
            f"within -c {job.spec.cpu} -m {job.spec.mem}"
        )
    return t


def record_instance(
    cp: ControlPlane, job_id: str, inst: InstanceInfo, status: str = "normal"
) -> None:
    cp.store.add_instance(
        job_id,
        InstanceRecord(
            id=inst.id,
            job_id=job_id,
            provider=inst.provider,
            type=inst.type.name,
            vcpus=inst.type.vcpus,
            memory_gib=inst.type.memory_gib,
            spot=inst.spot,
            price_per_hour=inst.type.price(inst.spot),
            address=inst.address,
            agent_url=inst.agent_url,
            agent_token=inst.agent_token,
            started_at=now(),
            ended_at=None,
            status=status,
        ),
    )


def end_instance(cp: ControlPlane, instance_id: str, status: str) -> None:
    try:
        cp.provider.delete_instance(instance_id)
    except OutgrowError as exc:
        log.error("deleting instance %s failed: %s", instance_id, exc)
    with contextlib.suppress(NotFoundError):  # a warm (prepared) target is not recorded
        cp.store.update_instance(instance_id, status=status, ended_at=now())


def agent_body(cp: ControlPlane, job: JobRecord, image: ImageSpec) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "kind": image.kind,
        "image": {**asdict(image), "pip": list(image.pip)},
        "script": job.spec.script,
        "env": job.spec.env,
        "port": image.default_port or 8888,
        "jupyter_token": job.jupyter_token if image.kind != "python" else "",
        "base_url": f"/jobs/{job.id}/",
        "evade_oom": job.spec.migrate().evade_oom,
    }


def create_instance(
    cp: ControlPlane,
    job: JobRecord,
    itype: InstanceType,
    tags: dict[str, str] | None = None,
    spot: bool | None = None,
) -> InstanceInfo:
    """Create an instance per the job's vmPolicy: spot first (if asked), then on-demand,
    retrying capacity errors retryLimit times, retryInterval apart. The instance gets the
    job's security group (every instance of the job the same rules: they follow it)."""
    from outgrow.domain.security import JUPYTER_PORT, SecurityGroup, default_ports
    from outgrow.providers.base import Capability

    vm = job.spec.vm()
    modes = [True, False] if vm.mode == "spotFirst" else [vm.mode == "spotOnly"]
    if spot is not None:  # e.g. leaving a reclaimed spot instance for on-demand capacity
        modes = [spot]
    tags = {"outgrow:job": job.id, **(tags or {})}
    extra: dict[str, Any] = {}
    if Capability.SECURITY_GROUPS in cp.provider.capabilities:
        try:
            image = image_spec(cp, job.spec.image)
            sg = SecurityGroup.from_spec(
                job.id, job.spec, default_ports(image.kind, image.default_port)
            )
        except NotFoundError:  # image removed since: publish nothing new, keep the proxy
            sg = SecurityGroup.from_spec(job.id, job.spec)
            if JUPYTER_PORT not in sg.job_ports:
                sg = SecurityGroup(sg.job_id, sg.publish, sg.allow_cidrs, (JUPYTER_PORT,))
        extra["security_group"] = sg
    last: OutgrowError | None = None
    for attempt in range(vm.retry_limit + 1):
        for use_spot in modes:
            try:
                return cp.provider.create_instance(itype.name, spot=use_spot, tags=tags, **extra)
            except CapacityError as exc:
                last = exc
        if attempt < vm.retry_limit:
            cp.store.add_event(
                job.id,
                "info",
                f"no capacity for {itype.name} ({last}); "
                f"retry {attempt + 1}/{vm.retry_limit} in "
                f"{vm.retry_interval:g} s",
            )
            if cp.stopping.wait(min(vm.retry_interval, cp.settings_retry_cap)):
                break
    assert last is not None
    raise last


def start(cp: ControlPlane, job_id: str) -> None:
    job = cp.job(job_id)
    if job.status in (S.SUBMITTED, S.NO_AVAILABLE_HOST):
        cp.store.set_status(job_id, S.INITIALIZING, "choosing an instance")
    try:
        image = image_spec(cp, job.spec.image)
        itype = initial_type(cp, job)
        cp.store.add_event(job_id, "info", f"preparing image {image.name}")
        cp.provider.prepare_image(image)
        inst = create_instance(cp, job, itype)
    except CapacityError as exc:
        cp.store.set_status(job_id, S.NO_AVAILABLE_HOST, str(exc))
        return
    except OutgrowError as exc:
        cp.store.set_status(job_id, S.FAIL_TO_EXECUTE, str(exc))
        jobdirs.delete(cp, job_id)  # the job ended: its storage and security group go
        release_security_group(cp, job_id)
        return
    record_instance(cp, job_id, inst)
    cp.store.update_job(job_id, current_instance_id=inst.id)
    cp.store.set_status(
        job_id,
        S.STARTING,
        f"instance {inst.id} ({itype.name}, {itype.describe()}) at {inst.address}",
    )
    try:
        jobdirs.mount(cp, job_id, inst)
        with agent(inst) as a:
            a.start_job(agent_body(cp, job, image))
        st = wait_job(inst, phases=("running", "exited", "failed"), timeout=600)
    except OutgrowError as exc:
        jobdirs.release_quietly(cp, job_id, inst, keep_logs=True)
        end_instance(cp, inst.id, "failed")
        cp.store.update_job(job_id, current_instance_id=None)
        if cp.job(job_id).status == S.STARTING:
            cp.store.set_status(job_id, S.FAIL_TO_EXECUTE, str(exc))
            jobdirs.delete(cp, job_id)  # the job ended: its storage and security group go
            release_security_group(cp, job_id)
        return
    cp.store.set_status(job_id, S.EXECUTING, "job running")
    if st["phase"] != "running":  # a short batch job may end before we look
        finish(cp, job_id, st["phase"], st.get("exit_code"), st.get("message", ""))


def migrate(
    cp: ControlPlane,
    job_id: str,
    target: InstanceType,
    reason: str,
    event_type: str = "migration",
    reclaim: bool = False,
) -> None:
    job = cp.job(job_id)
    if job.status != S.EXECUTING or job.current_instance_id is None:
        return
    source = cp.provider.describe_instance(job.current_instance_id)
    if source is None:
        cp.store.add_event(
            job_id, "error", f"cannot migrate: instance {job.current_instance_id} is gone"
        )
        return
    cp.store.set_status(job_id, S.FLOATING, reason)
    warm = cp.take_warm(job_id, target.name)
    try:
        if warm is None:
            # Leaving a reclaimed spot instance: on-demand unless the job is spotOnly.
            spot = (job.spec.vm().mode == "spotOnly") if reclaim else None
            target_inst = create_instance(
                cp, job, target, {"outgrow:migrating-from": source.id}, spot=spot
            )
        else:
            target_inst = warm
        record_instance(cp, job_id, target_inst, status="starting")
        cp.before_checkpoint(job_id)
        result = cp.migrator.migrate(source, target=target_inst, reason=reason, delete_source=False)
    except JobLostError as exc:
        if "target_inst" in locals():
            end_instance(cp, target_inst.id, "failed")
        end_instance(cp, source.id, "failed")
        cp.store.update_job(job_id, current_instance_id=None)
        cp.store.set_status(job_id, S.FAIL_TO_COMPLETE, str(exc))
        jobdirs.delete(cp, job_id)
        release_security_group(cp, job_id)
        cp.after_move(job_id)
        return
    except OutgrowError as exc:
        if "target_inst" in locals():
            end_instance(cp, target_inst.id, "failed")
        cp.store.add_event(job_id, "error", f"migration failed, job kept on {source.id}: {exc}")
        cp.store.set_status(job_id, S.EXECUTING, "migration failed; still on the source")
        cp.after_move(job_id)
        return
    end_instance(cp, source.id, "reclaimed" if reclaim else "migrated-from")
    cp.store.update_instance(target_inst.id, status="normal")
    cp.store.update_job(job_id, current_instance_id=target_inst.id, last_migration_at=time.time())
    cp.store.add_event(
        job_id,
        event_type,
        reason,
        from_type=result.from_type,
        to_type=result.to_type,
        downtime_s=result.downtime_s,
        checkpoint_bytes=result.checkpoint_bytes,
        transfer=result.transfer,
        timings={
            k: getattr(result, k)
            for k in (
                "freeze_s",
                "dump_s",
                "transfer_s",
                "storage_s",
                "restore_s",
                "total_s",
                "create_target_s",
            )
        },
        source_instance=source.id,
        target_instance=target_inst.id,
    )
    cp.store.set_status(
        job_id, S.EXECUTING, f"running on {target_inst.id} ({target.name}) after {reason}"
    )
    cp.after_move(job_id)


def checkpoint_dir(cp: ControlPlane, job_id: str) -> Path:
    return cp.data_dir / "checkpoints" / job_id / secrets.token_hex(4)


def drop_checkpoint(cp: ControlPlane, where: str) -> None:
    """Delete a suspend checkpoint: an s3:// URL (through the provider) or a directory."""
    if where.startswith("s3://"):
        try:
            cp.provider.delete_checkpoint(where)
        except OutgrowError as exc:
            log.error("deleting checkpoint %s: %s", where, exc)
    else:
        shutil.rmtree(where, ignore_errors=True)


def suspend(cp: ControlPlane, job_id: str, reason: str, ended: str = "released") -> None:
    job = cp.job(job_id)
    if job.status != S.EXECUTING or job.current_instance_id is None:
        return
    inst = cp.provider.describe_instance(job.current_instance_id)
    if inst is None:
        return
    cp.store.set_status(job_id, S.SUSPENDING, reason)
    cp.drop_warm(job_id)  # a suspended job holds no instance, warm or not
    cp.before_checkpoint(job_id)
    dest = checkpoint_dir(cp, job_id)
    # On a cloud the checkpoint goes to object storage (the instance goes away); on the
    # local provider to the control plane's data dir, which the agents share.
    url: str | None = None
    try:
        url = cp.provider.checkpoint_url(job_id, dest.name)
        with agent(inst) as a:
            ck = a.checkpoint(dest_url=url) if url else a.checkpoint(dest_dir=str(dest))
            a.commit()
    except OutgrowError as exc:
        with agent(inst) as a, contextlib.suppress(OutgrowError):
            a.abort()
        shutil.rmtree(dest, ignore_errors=True)
        cp.store.set_status(job_id, S.EXECUTING, f"suspend failed, job kept running: {exc}")
        cp.after_move(job_id)
        return
    jobdirs.release_quietly(cp, job_id, inst, keep_logs=True)
    end_instance(cp, inst.id, ended)
    cp.store.update_job(job_id, current_instance_id=None, checkpoint_dir=url or str(dest))
    cp.store.add_event(
        job_id,
        "info",
        f"checkpoint {ck.get('local_bytes', 0)} bytes in {ck.get('total_s', 0):.2f} s",
        checkpoint_bytes=ck.get("local_bytes"),
    )
    cp.store.set_status(job_id, S.SUSPENDED, "checkpoint saved; instance released")
    cp.after_move(job_id)


def resume(
    cp: ControlPlane,
    job_id: str,
    reason: str,
    itype: InstanceType | None = None,
    spot: bool | None = None,
) -> None:
    job = cp.job(job_id)
    if job.status != S.SUSPENDED or not job.checkpoint_dir:
        return
    cp.store.set_status(job_id, S.RESUMING, reason)
    if itype is None:
        # The size the job had when it was suspended (its last released instance).
        released = [r for r in cp.store.instances(job_id) if r.status == "released"]
        itype = cp.catalog.get(released[-1].type) if released else initial_type(cp, job)
    try:
        inst = create_instance(cp, job, itype, spot=spot)
    except OutgrowError as exc:
        cp.store.set_status(job_id, S.SUSPENDED, f"resume failed: {exc}")
        cp.after_move(job_id)
        return
    record_instance(cp, job_id, inst)
    ckpt = job.checkpoint_dir
    try:
        jobdirs.mount(cp, job_id, inst)
        with agent(inst) as a:
            if ckpt.startswith("s3://"):
                a.restore(source_url=ckpt)
            else:
                a.restore(source_dir=ckpt)
    except OutgrowError as exc:
        jobdirs.release_quietly(cp, job_id, inst, keep_logs=False)
        end_instance(cp, inst.id, "failed")
        cp.store.set_status(job_id, S.SUSPENDED, f"resume failed, checkpoint kept: {exc}")
        cp.after_move(job_id)
        return
    drop_checkpoint(cp, ckpt)
    cp.store.update_job(
        job_id, current_instance_id=inst.id, checkpoint_dir=None, last_migration_at=time.time()
    )
    cp.store.set_status(
        job_id, S.EXECUTING, f"restored on {inst.id} ({itype.name}) at {inst.address}"
    )
    cp.after_move(job_id)


def evacuate(cp: ControlPlane, job_id: str, target: InstanceType, reason: str) -> None:
    """A spot reclaim with no time to create a target first: checkpoint at once (the
    instance may go any second), then restore on a new instance — on-demand unless the
    job is spotOnly."""
    cp.store.add_event(
        job_id, "info", f"{reason}: too little time to create a target, checkpointing now"
    )
    suspend(cp, job_id, reason, ended="reclaimed")
    if cp.job(job_id).status == S.SUSPENDED:
        spot = cp.job(job_id).spec.vm().mode == "spotOnly"
        resume(cp, job_id, f"restoring after {reason}", itype=target, spot=spot)


def cancel(cp: ControlPlane, job_id: str, reason: str) -> None:
    job = cp.job(job_id)
    if is_terminal(job.status):  # it ended on its own while the cancel waited its turn
        return
    if job.status in (S.SUBMITTED, S.SUSPENDED, S.NO_AVAILABLE_HOST):
        if job.checkpoint_dir:
            drop_checkpoint(cp, job.checkpoint_dir)
            cp.store.update_job(job_id, checkpoint_dir=None)
        cp.store.set_status(job_id, S.CANCELLED, reason)
        jobdirs.delete(cp, job_id)
        release_security_group(cp, job_id)
        return
    if job.status != S.CANCELLING:
        cp.store.set_status(job_id, S.CANCELLING, reason)
    for rec in cp.store.instances(job_id):
        if rec.ended_at is None:
            try:
                inst = cp.provider.describe_instance(rec.id)
                if inst is not None:
                    with agent(inst) as a:
                        a.stop_job(grace_s=3)
                    if rec.id == job.current_instance_id:
                        jobdirs.release_quietly(cp, job_id, inst, keep_logs=True)
            except OutgrowError as exc:
                log.warning("stopping job %s on %s: %s", job_id, rec.id, exc)
            end_instance(cp, rec.id, "released")
    cp.store.update_job(job_id, current_instance_id=None)
    cp.store.set_status(job_id, S.CANCELLED, reason)
    jobdirs.delete(cp, job_id)
    release_security_group(cp, job_id)


def release_security_group(cp: ControlPlane, job_id: str) -> None:
    """The job ended: providers whose groups outlive instances (aws) delete it now."""
    try:
        cp.provider.delete_security_group(job_id)
    except OutgrowError as exc:
        log.error("deleting the security group of job %s failed: %s", job_id, exc)


def finish(cp: ControlPlane, job_id: str, phase: str, exit_code: int | None, msg: str) -> None:
    """The job's process ended on its own: record how and release the instance."""
    job = cp.job(job_id)
    cp.drop_warm(job_id)
    if job.current_instance_id:
        inst = cp.provider.describe_instance(job.current_instance_id)
        if inst is not None:
            jobdirs.release_quietly(cp, job_id, inst, keep_logs=True)
        end_instance(cp, job.current_instance_id, "released")
    cp.store.update_job(job_id, current_instance_id=None, exit_code=exit_code)
    state = S.COMPLETED if phase == "exited" and exit_code == 0 else S.FAIL_TO_COMPLETE
    cp.store.set_status(job_id, state, msg or phase)
    jobdirs.delete(cp, job_id)
    release_security_group(cp, job_id)
