"""Live migration of a job between instances: the commit/abort protocol.

target prepares to receive (page server) ─┐
source freezes, dumps (pages stream to the target), sends the other images
target restores in its netns + cgroup and checks the job answers
only then: source kills its stopped copy and the source instance is deleted
any failure before that: source resumes (nothing lost), target is discarded

When the job's directory is not shared between instances (a volume or an S3-synced
directory, see domain/storage.py) the tree must end before its directory can leave:

source dumps (copy mode: the source keeps its images), images go to the target
source kills the tree, keeps its images; releases the directory (unmount / upload)
provider moves the storage (detach / attach); the target mounts it and restores
any failure after the kill: the storage comes back and the job is restored on the
source from its kept images (the job keeps running where it was, after a pause)

Post-copy (domain/movemode.py chooses):

source freezes, dumps all but the memory pages, sends those images; its CRIU serves pages
target starts lazy-pages (pulling from the source) and restores: the job runs at once
any failure up to here: source resumes (nothing lost), target is discarded
target drains: every page arrives; only then the source kills its stopped copy
a broken drain: the restored job misses memory; it is killed and the job is lost
(JobLostError) — the risk the policy weighs against the shorter downtime
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from outgrow.agentapi.client import AgentApi, AgentClient
from outgrow.agentapi.models import (
    AgentPhase,
    CheckpointRequest,
    CheckpointResult,
    JobStatus,
    RestoreRequest,
    RestoreResult,
)
from outgrow.cancel import Cancel, check, pause
from outgrow.domain.movemode import ModeDecision, MoveModeChoice, choose_move_mode
from outgrow.domain.storage import JobStorage, StorageKind
from outgrow.errors import (
    CancelledError,
    JobLostError,
    MigrationError,
    OutgrowError,
    ProviderError,
)
from outgrow.providers.base import Capability, InstanceInfo, Provider

log = logging.getLogger("outgrow.migrate")
Transfer = Literal["page-server", "copy"]


@dataclass(frozen=True)
class MigrationResult:
    job_id: str
    reason: str
    source_instance: str
    target_instance: str
    from_type: str
    to_type: str
    transfer: str
    freeze_s: float
    dump_s: float
    transfer_s: float
    restore_s: float
    downtime_s: float  # job frozen → job answering on the target
    total_s: float  # including creating the target instance
    create_target_s: float
    checkpoint_bytes: int
    rss_bytes: int
    mem_used_bytes: int
    storage_s: float = 0.0  # releasing, moving and mounting the job directory (in downtime)
    mode: str = "plain"  # "postcopy": the memory followed the restored job
    mode_reason: str = ""
    drain_s: float = 0.0  # post-copy: restore → last page on the target (not downtime)
    lazy_pages: int = 0  # post-copy: pages the target pulled after the restore

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Connect = Callable[[InstanceInfo, float], AgentApi]


def agent(inst: InstanceInfo, timeout: float = 30.0) -> AgentApi:
    """A client of the instance's agent (the default ``Connect``)."""
    return AgentClient(inst.agent_url, inst.agent_token, timeout=timeout)


class Migrator:
    def __init__(self, provider: Provider, connect: Connect = agent):
        self.provider = provider
        self.connect = connect

    def migrate(
        self,
        source: InstanceInfo,
        *,
        target_type: str | None = None,
        target: InstanceInfo | None = None,
        reason: str = "manual",
        transfer: Transfer = "page-server",
        spot: bool | None = None,
        delete_source: bool = True,
        on_step: Callable[[str], None] | None = None,
        cancel: Cancel | None = None,
        mode: MoveModeChoice = "plain",
        rule: str = "",
    ) -> MigrationResult:
        """Move the job of ``source`` to ``target`` (or a new instance of ``target_type``).
        On failure the job keeps running on ``source`` and MigrationError says why. A set
        ``cancel`` stops the move between its steps (CancelledError, the job running on
        the source); a checkpoint under way (seconds) finishes and is rolled back first.
        ``mode`` (``rule``: the policy rule asking, for ``auto``): plain or post-copy; a
        post-copy move whose page transfer breaks after the restore raises JobLostError."""
        step = on_step or (lambda s: log.info("migrate: %s", s))
        t_all = time.monotonic()
        with self.connect(source, 30.0) as src:
            job_id = str(src.job().job_id)
            created = False
            if target is None:
                if target_type is None:
                    raise MigrationError("migrate needs a target type or a target instance")
                step(f"creating target instance ({target_type})")
                try:
                    target = self.provider.create_instance(
                        target_type,
                        spot=source.spot if spot is None else spot,
                        tags={**source.tags, "outgrow:migrating-from": source.id},
                        cancel=cancel,
                    )
                except CancelledError:
                    raise
                except OutgrowError as exc:
                    raise MigrationError(
                        f"could not create the target instance: {exc}", detail=exc.detail
                    ) from exc
                created = True
            create_s = time.monotonic() - t_all
            try:
                check(cancel, "moving the job")
                storage = self.provider.attach_job_storage(job_id, source)
                shared = storage.kind == StorageKind.SHARED
                decision = self._mode(src, mode, rule, storage_moves=not shared)
                step(f"move mode {decision.reason}")
                if shared and decision.mode == "postcopy":
                    result = self._postcopy(src, source, target, job_id, reason, step, cancel)
                elif shared:
                    result = self._move(src, source, target, job_id, reason, transfer, step, cancel)
                else:
                    result = self._move_with_storage(
                        src, source, target, job_id, reason, storage, step
                    )
            except BaseException as exc:
                if created:  # also on Ctrl-C: a target we made must not leak
                    self._discard(target)
                if not isinstance(exc, OutgrowError) or isinstance(
                    exc, JobLostError | CancelledError
                ):
                    raise
                self._revive_source(source)
                raise MigrationError(
                    f"migration of job {job_id} failed, the job keeps running on "
                    f"{source.id}: {exc}",
                    detail=exc.detail,
                ) from exc
        if delete_source:
            step(f"deleting source instance {source.id}")
            try:
                self.provider.delete_instance(source.id)
            except ProviderError as exc:  # the job has moved; a leftover is cleaned up later
                log.error("could not delete source instance %s: %s", source.id, exc)
        return MigrationResult(
            **{
                **result,
                "mode_reason": decision.reason,
                "create_target_s": round(create_s, 4),
                "total_s": round(time.monotonic() - t_all, 4),
            }
        )

    def _revive_source(self, source: InstanceInfo) -> None:
        """After a failed move: a source agent that died during it (it had frozen the job
        for the dump) is started again, and the new agent resumes the tree it finds frozen
        (agent.service.Agent.resume_interrupted). Otherwise the job would stay frozen."""
        try:
            with self.connect(source, 5.0) as a:
                a.health()
            return
        except OutgrowError as exc:
            log.warning("the agent of %s does not answer after the move: %s", source.id, exc)
        if not self.provider.supports(Capability.RESTART_AGENT):
            log.error("cannot restart the agent of %s: the job may stay frozen", source.id)
            return
        try:
            self.provider.restart_agent(source.id)
            log.warning("restarted the agent of %s: it resumes the job", source.id)
        except OutgrowError as exc:
            log.error("could not restart the agent of %s: %s", source.id, exc)

    def _mode(
        self, src: AgentApi, choice: MoveModeChoice, rule: str, storage_moves: bool
    ) -> ModeDecision:
        used = 0
        if choice == "auto" and not storage_moves:
            now = src.metrics(since=time.time()).now
            used = now.mem_used_bytes if now is not None else 0
        return choose_move_mode(choice, mem_used_bytes=used, rule=rule, storage_moves=storage_moves)

    def _postcopy(
        self,
        src: AgentApi,
        source: InstanceInfo,
        target: InstanceInfo,
        job_id: str,
        reason: str,
        step: Callable[[str], None],
        cancel: Cancel | None = None,
    ) -> dict[str, Any]:
        with self.connect(target, 30.0) as dst:
            t_down = time.monotonic()
            rx = dst.prepare_receive(page_server=False, image=src.job().image)
            step("checkpointing (post-copy: the memory stays on the source)")
            try:
                ck = src.checkpoint(
                    CheckpointRequest(
                        target_url=target.agent_url,
                        target_token=target.agent_token,
                        receive_id=rx.receive_id,
                        lazy=True,
                    )
                )
            except OutgrowError:
                _quietly(lambda: dst.drop_receive(rx.receive_id))
                _quietly(src.abort)
                raise
            step("restoring on the target (post-copy)")
            try:
                check(cancel, "checkpointing the job for a move")
                rs = dst.restore(
                    RestoreRequest(
                        receive_id=rx.receive_id,
                        lazy_address=ck.lazy_address,
                        lazy_port=ck.lazy_port,
                    )
                )
            except OutgrowError:
                _quietly(lambda: dst.drop_receive(rx.receive_id))
                _quietly(src.abort)
                raise
            downtime = time.monotonic() - t_down
            step(f"running on the target after {downtime:.2f} s; its memory follows (drain)")
            try:
                dr = dst.drain()
                lost = "" if dr.ok else dr.message
            except OutgrowError as exc:
                dr, lost = None, f"the drain could not be followed: {exc}"
            if lost:
                _quietly(src.commit)  # the stopped source copy is stale: end it
                raise JobLostError(
                    f"post-copy move of job {job_id} to {target.id} failed after the "
                    f"restore ({lost}); the job is lost"
                )
            assert dr is not None
            step(f"all memory on the target after {dr.drain_s:.2f} s ({dr.pages} pages)")
            step("committing")
            try:
                src.commit()
            except OutgrowError as exc:  # the target runs the job; the source copy dies on delete
                log.error("commit on %s failed: %s", source.id, exc)
        out = _result(job_id, reason, source, target, "page-server", ck, rs, downtime)
        return {**out, "mode": "postcopy", "drain_s": dr.drain_s, "lazy_pages": dr.pages}

    def _dump(
        self,
        src: AgentApi,
        dst: AgentApi,
        target: InstanceInfo,
        job_id: str,
        page_server: bool,
        step: Callable[[str], None],
    ) -> tuple[CheckpointResult, Callable[[], RestoreResult], str | None]:
        """Checkpoint the source straight into the target; if that fails (the agents
        cannot reach each other) and the provider has object storage, again through it.
        Returns the checkpoint answer, how to restore on the target, and the transfer
        URL used (None: direct). On failure the source job runs on (aborted)."""
        # The target makes the job's image present before anything freezes.
        rx = dst.prepare_receive(page_server=page_server, image=src.job().image)
        step("checkpointing")
        try:
            ck = src.checkpoint(
                CheckpointRequest(
                    target_url=target.agent_url,
                    target_token=target.agent_token,
                    receive_id=rx.receive_id,
                    page_server_port=rx.page_server_port,
                )
            )
            return ck, lambda: dst.restore(RestoreRequest(receive_id=rx.receive_id)), None
        except OutgrowError as exc:
            _quietly(lambda: dst.drop_receive(rx.receive_id))
            _quietly(src.abort)
            url = self.provider.transfer_url(job_id, secrets.token_hex(6))
            if url is None:
                raise
            step(f"direct transfer failed ({exc}); checkpointing through {url}")
        try:
            ck = src.checkpoint(CheckpointRequest(dest_url=url))
        except OutgrowError:
            _quietly(src.abort)
            _quietly(lambda: self.provider.delete_checkpoint(url))
            raise
        return ck, lambda: dst.restore(RestoreRequest(source_url=url)), url

    def _move(
        self,
        src: AgentApi,
        source: InstanceInfo,
        target: InstanceInfo,
        job_id: str,
        reason: str,
        transfer: Transfer,
        step: Callable[[str], None],
        cancel: Cancel | None = None,
    ) -> dict[str, Any]:
        with self.connect(target, 30.0) as dst:
            t_down = time.monotonic()
            ck, restore, url = self._dump(src, dst, target, job_id, transfer == "page-server", step)
            step("restoring on the target")
            try:
                # A cancel during the dump: resume the source rather than restore a copy
                # that would be stopped at once (the cancel stops the source's job).
                check(cancel, "checkpointing the job for a move")
                rs = restore()
            except OutgrowError:
                _quietly(src.abort)
                raise
            finally:
                if url:
                    _quietly(lambda: self.provider.delete_checkpoint(url))
            downtime = time.monotonic() - t_down
            step("committing")
            try:
                src.commit()
            except OutgrowError as exc:  # the target runs the job; the source copy dies on delete
                log.error("commit on %s failed: %s", source.id, exc)
        return _result(job_id, reason, source, target, "s3" if url else transfer, ck, rs, downtime)

    def _move_with_storage(
        self,
        src: AgentApi,
        source: InstanceInfo,
        target: InstanceInfo,
        job_id: str,
        reason: str,
        storage: JobStorage,
        step: Callable[[str], None],
    ) -> dict[str, Any]:
        with self.connect(target, 30.0) as dst:
            t_down = time.monotonic()
            # Copy mode: the source keeps its images to restore from if the move fails.
            ck, restore, url = self._dump(src, dst, target, job_id, False, step)
            try:
                try:
                    src.commit(keep_images=True)
                except OutgrowError:
                    _quietly(src.abort)
                    raise
                t_s = time.monotonic()
                moved: JobStorage | None = None
                try:
                    step(f"moving the job directory ({storage.kind.value})")
                    src.release_storage(job_id, storage)
                    self.provider.detach_job_storage(job_id, source)
                    moved = self.provider.attach_job_storage(job_id, target)
                    dst.mount_storage(job_id, moved)
                    storage_s = time.monotonic() - t_s
                    step("restoring on the target")
                    rs = restore()
                except OutgrowError as exc:
                    self._restore_on_source(src, dst, source, target, job_id, moved, step, exc)
                    raise
            finally:
                if url:
                    _quietly(lambda: self.provider.delete_checkpoint(url))
            downtime = time.monotonic() - t_down
            _quietly(src.discard_images)
        transfer = "s3" if url else "copy"
        return _result(job_id, reason, source, target, transfer, ck, rs, downtime, storage_s)

    def _restore_on_source(
        self,
        src: AgentApi,
        dst: AgentApi,
        source: InstanceInfo,
        target: InstanceInfo,
        job_id: str,
        moved: JobStorage | None,
        step: Callable[[str], None],
        cause: OutgrowError,
    ) -> None:
        """The tree on the source has ended: bring the storage back and restore the job
        from the images the source kept. Only if that fails too is the job lost."""
        step(f"move failed ({cause}); restoring the job on the source")
        try:
            if moved is not None:
                _quietly(lambda: dst.release_storage(job_id, moved))
            self.provider.detach_job_storage(job_id, target)
            back = self.provider.attach_job_storage(job_id, source)
            src.mount_storage(job_id, back)
            src.restore(RestoreRequest(local_checkpoint=True))
            _quietly(src.discard_images)
        except OutgrowError as exc:
            log.error("job %s could not be restored on %s: %s", job_id, source.id, exc)
            raise JobLostError(
                f"migration of job {job_id} failed ({cause}) and restoring it on the "
                f"source {source.id} failed too: {exc}",
                detail=exc.detail,
            ) from exc

    def _discard(self, target: InstanceInfo) -> None:
        try:
            self.provider.delete_instance(target.id)
        except OutgrowError as exc:
            log.error("could not delete target instance %s: %s", target.id, exc)


def _result(
    job_id: str,
    reason: str,
    source: InstanceInfo,
    target: InstanceInfo,
    transfer: str,
    ck: CheckpointResult,
    rs: RestoreResult,
    downtime: float,
    storage_s: float = 0.0,
) -> dict[str, Any]:
    """MigrationResult's fields from the agents' checkpoint and restore answers."""
    return {
        "job_id": job_id,
        "reason": reason,
        "source_instance": source.id,
        "target_instance": target.id,
        "from_type": source.type.name,
        "to_type": target.type.name,
        "transfer": transfer,
        "freeze_s": ck.freeze_s,
        "dump_s": ck.dump_s,
        "transfer_s": ck.transfer_s,
        "restore_s": rs.restore_s,
        "downtime_s": round(downtime, 4),
        "storage_s": round(storage_s, 4),
        "checkpoint_bytes": rs.images_bytes or ck.local_bytes,
        "rss_bytes": ck.rss_bytes,
        "mem_used_bytes": ck.mem_used_bytes,
    }


def _quietly(fn: Callable[[], object]) -> None:
    try:
        fn()
    except OutgrowError as exc:
        log.error("during rollback: %s", exc)


def wait_job(
    inst: InstanceInfo,
    phases: tuple[AgentPhase, ...] = (AgentPhase.RUNNING,),
    timeout: float = 600,
    progress: Callable[[str], None] | None = None,
    connect: Connect = agent,
    cancel: Cancel | None = None,
) -> JobStatus:
    """Poll the agent until its job reaches one of ``phases`` (or fails); CancelledError
    once ``cancel`` is set."""
    deadline = time.monotonic() + timeout
    seen = 0
    with connect(inst, 30.0) as a:
        while True:
            st = a.job()
            lines = st.image_progress
            total = st.image_progress_total or len(lines)
            if progress and total > seen:
                # The agent keeps the last lines only: show those not seen yet.
                for ln in lines[max(len(lines) - (total - seen), 0) :]:
                    progress(ln)
                seen = total
            if st.phase in phases:
                return st
            if st.phase.ended:
                raise OutgrowError(f"job {st.job_id} {st.phase.value}: {st.message}")
            if time.monotonic() > deadline:
                want = "/".join(p.value for p in phases)
                raise OutgrowError(f"job did not reach {want} within {timeout:g} s")
            pause(cancel, 0.2, f"waiting for the job to start on {inst.id}")
