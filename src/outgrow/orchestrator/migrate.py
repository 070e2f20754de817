"""Live migration of a job between instances: the commit/abort protocol.

target prepares to receive (page server) ─┐
source freezes, dumps (pages stream to the target), sends the other images
target restores in its netns + cgroup and checks the job answers
only then: source kills its stopped copy and the source instance is deleted
any failure before that: source resumes (nothing lost), target is discarded
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from outgrow.agent.client import AgentClient
from outgrow.errors import MigrationError, OutgrowError, ProviderError
from outgrow.providers.base import InstanceInfo, Provider

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agent(inst: InstanceInfo, timeout: float = 30.0) -> AgentClient:
    return AgentClient(inst.agent_url, inst.agent_token, timeout=timeout)


class Migrator:
    def __init__(self, provider: Provider):
        self.provider = provider

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
    ) -> MigrationResult:
        """Move the job of ``source`` to ``target`` (or a new instance of ``target_type``).
        On failure the job keeps running on ``source`` and MigrationError says why."""
        step = on_step or (lambda s: log.info("migrate: %s", s))
        t_all = time.monotonic()
        with agent(source) as src:
            job_id = str(src.job().get("job_id"))
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
                    )
                except OutgrowError as exc:
                    raise MigrationError(
                        f"could not create the target instance: {exc}", detail=exc.detail
                    ) from exc
                created = True
            create_s = time.monotonic() - t_all
            try:
                result = self._move(src, source, target, job_id, reason, transfer, step)
            except BaseException as exc:
                if created:  # also on Ctrl-C: a target we made must not leak
                    self._discard(target)
                if not isinstance(exc, OutgrowError):
                    raise
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
                "create_target_s": round(create_s, 4),
                "total_s": round(time.monotonic() - t_all, 4),
            }
        )

    def _move(
        self,
        src: AgentClient,
        source: InstanceInfo,
        target: InstanceInfo,
        job_id: str,
        reason: str,
        transfer: Transfer,
        step: Callable[[str], None],
    ) -> dict[str, Any]:
        with agent(target) as dst:
            rx = dst.prepare_receive(page_server=transfer == "page-server")
            step("checkpointing")
            t_down = time.monotonic()
            try:
                ck = src.checkpoint(
                    target_url=target.agent_url,
                    target_token=target.agent_token,
                    receive_id=rx["receive_id"],
                    page_server_port=rx.get("page_server_port"),
                )
            except OutgrowError:
                _quietly(lambda: dst.drop_receive(rx["receive_id"]))
                _quietly(src.abort)
                raise
            step("restoring on the target")
            try:
                rs = dst.restore(receive_id=rx["receive_id"])
            except OutgrowError:
                _quietly(src.abort)
                raise
            downtime = time.monotonic() - t_down
            step("committing")
            try:
                src.commit()
            except (
                OutgrowError
            ) as exc:  # the target runs the job; the source copy is killed on delete
                log.error("commit on %s failed: %s", source.id, exc)
        return {
            "job_id": job_id,
            "reason": reason,
            "source_instance": source.id,
            "target_instance": target.id,
            "from_type": source.type.name,
            "to_type": target.type.name,
            "transfer": transfer,
            "freeze_s": ck["freeze_s"],
            "dump_s": ck["dump_s"],
            "transfer_s": ck["transfer_s"],
            "restore_s": rs["restore_s"],
            "downtime_s": round(downtime, 4),
            "checkpoint_bytes": int(rs.get("images_bytes") or ck["local_bytes"]),
            "rss_bytes": ck["rss_bytes"],
            "mem_used_bytes": ck["mem_used_bytes"],
        }

    def _discard(self, target: InstanceInfo) -> None:
        try:
            self.provider.delete_instance(target.id)
        except OutgrowError as exc:
            log.error("could not delete target instance %s: %s", target.id, exc)


def _quietly(fn: Callable[[], object]) -> None:
    try:
        fn()
    except OutgrowError as exc:
        log.error("during rollback: %s", exc)


def wait_job(
    inst: InstanceInfo,
    phases: tuple[str, ...] = ("running",),
    timeout: float = 600,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Poll the agent until its job reaches one of ``phases`` (or fails)."""
    deadline = time.monotonic() + timeout
    seen = 0
    with agent(inst) as a:
        while True:
            st = a.job()
            lines = st.get("image_progress") or []
            total = int(st.get("image_progress_total") or len(lines))
            if progress and total > seen:
                # The agent keeps the last lines only: show those not seen yet.
                for ln in lines[max(len(lines) - (total - seen), 0) :]:
                    progress(ln)
                seen = total
            if st["phase"] in phases:
                return st
            if st["phase"] in ("failed", "exited", "stopped") and st["phase"] not in phases:
                raise OutgrowError(f"job {st.get('job_id')} {st['phase']}: {st.get('message')}")
            if time.monotonic() > deadline:
                raise OutgrowError(f"job did not reach {'/'.join(phases)} within {timeout:g} s")
            time.sleep(0.2)
