"""FAKES, named as such: an in-memory provider and scripted agents, for unit tests of the
control plane's decisions (reconciler, lifecycle hooks, scheduler paths). They stand in
for what the root tests run for real (netns instances, agents, CRIU); they never pretend
to move a job. Every call they receive is recorded so tests can assert what was done."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from outgrow.agentapi.models import (
    AgentPhase,
    CheckpointRequest,
    CheckpointResult,
    DrainResult,
    Health,
    ImageBody,
    JobNote,
    JobStatus,
    LogChunk,
    Metrics,
    MetricsSample,
    Ok,
    ReceiveTicket,
    ReclaimAnswer,
    RestoreRequest,
    RestoreResult,
    StartJob,
    StorageResult,
    Uploaded,
)
from outgrow.domain.instance_types import Catalog
from outgrow.domain.security import SecurityGroup
from outgrow.domain.storage import JobStorage, StorageKind
from outgrow.errors import AgentError, ProviderError
from outgrow.providers.base import Capability, InstanceInfo, Provider
from outgrow.providers.local.provider import packaged_catalog


@dataclass
class FakeAgent:
    """A scripted agent: answers ``status`` and records every call."""

    url: str
    status: JobStatus = field(default_factory=lambda: JobStatus(phase=AgentPhase.NONE))
    reachable: bool = True
    fail: set[str] = field(default_factory=set)  # calls that raise
    die_on: set[str] = field(default_factory=set)  # calls during which the agent dies
    calls: list[str] = field(default_factory=list)
    mem_used_bytes: int = 0  # what metrics() reports now
    drain_ok: bool = True  # a post-copy drain's answer

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.die_on:
            self.reachable = False
        if not self.reachable:
            raise AgentError(f"fake agent at {self.url} unreachable")
        if name in self.fail:
            raise AgentError(f"fake agent at {self.url}: {name} fails")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def health(self, timeout: float = 3.0) -> Health:
        self._call("health")
        return Health(instance_id=self.url, address=self.url, cgroup_version=1)

    def start_job(self, body: StartJob) -> JobStatus:
        self._call("start_job")
        self.status = JobStatus(phase=AgentPhase.RUNNING, job_id=body.job_id)
        return self.status

    def job(self) -> JobStatus:
        self._call("job")
        return self.status

    def stop_job(self, grace_s: float = 5.0) -> JobStatus:
        self._call("stop_job")
        self.status = self.status.model_copy(update={"phase": AgentPhase.STOPPED})
        return self.status

    def note_job(self, note: JobNote) -> JobStatus:
        self._call("note_job")
        return self.status

    def forget_job(self) -> Ok:
        self._call("forget_job")
        return Ok()

    def logs(self, stream: str = "stdout", offset: int = 0) -> LogChunk:
        self._call("logs")
        return LogChunk(data="", offset=offset, size=offset)

    def reclaim_notice(self, in_s: float, source: str = "provider") -> ReclaimAnswer:
        self._call("reclaim_notice")
        return ReclaimAnswer(reclaim_at=time.time() + in_s)

    def metrics(self, since: float = 0.0) -> Metrics:
        self._call("metrics")
        now = MetricsSample(
            t=time.time(),
            mem_used_bytes=self.mem_used_bytes,
            mem_rss_bytes=self.mem_used_bytes,
            mem_cache_bytes=0,
            mem_swap_bytes=0,
            mem_limit_bytes=None,
            cpu_used_vcpus=0.0,
            cpu_quota_vcpus=None,
            cpu_throttled_ns=0,
        )
        return Metrics(samples=[], now=now)

    def checkpoint(self, req: CheckpointRequest, timeout: float = 900) -> CheckpointResult:
        self._call("checkpoint-lazy" if req.lazy else "checkpoint")
        return CheckpointResult(
            freeze_s=0,
            dump_s=0,
            transfer_s=0,
            local_bytes=0,
            rss_bytes=0,
            mem_used_bytes=0,
            total_s=0,
            images_dir="",
            mode="postcopy" if req.lazy else "plain",
            lazy_address=self.url if req.lazy else None,
            lazy_port=7100 if req.lazy else None,
        )

    def snapshot(self, req: CheckpointRequest, timeout: float = 900) -> CheckpointResult:
        self._call("snapshot")
        return self.checkpoint(req)

    def abort(self) -> JobStatus:
        self._call("abort")
        self.status = self.status.model_copy(update={"phase": AgentPhase.RUNNING})
        return self.status

    def commit(self, keep_images: bool = False) -> JobStatus:
        self._call("commit")
        self.status = self.status.model_copy(update={"phase": AgentPhase.STOPPED})
        return self.status

    def discard_images(self) -> Ok:
        self._call("discard_images")
        return Ok()

    def mount_storage(
        self, job_id: str, storage: JobStorage, timeout: float = 900
    ) -> StorageResult:
        self._call("mount_storage")
        return StorageResult(kind=storage.kind, seconds=0.0)

    def release_storage(
        self, job_id: str, storage: JobStorage, timeout: float = 900
    ) -> StorageResult:
        self._call("release_storage")
        return StorageResult(kind=storage.kind, seconds=0.0)

    def prepare_receive(
        self, page_server: bool = True, image: ImageBody | None = None
    ) -> ReceiveTicket:
        self._call("prepare_receive")
        return ReceiveTicket(receive_id="rx")

    def drop_receive(self, rid: str) -> Ok:
        self._call("drop_receive")
        return Ok()

    def upload(self, rid: str, path: Path) -> Uploaded:
        self._call("upload")
        return Uploaded(name=path.name, bytes=0)

    def restore(self, req: RestoreRequest, timeout: float = 900) -> RestoreResult:
        lazy = "-lazy" if req.lazy_port else ""
        self._call(f"restore{'-kept' if req.local_checkpoint else ''}{lazy}")
        self.status = self.status.model_copy(
            update={"phase": AgentPhase.RUNNING, "kept_checkpoint": False}
        )
        return RestoreResult(restore_s=0, images_bytes=0, healthy_s=0, pid=1, lazy=bool(lazy))

    def drain(self, timeout: float = 900) -> DrainResult:
        self._call("drain")
        if self.drain_ok:
            return DrainResult(ok=True, drain_s=1.5, pages=1000)
        self.status = self.status.model_copy(update={"phase": AgentPhase.FAILED})
        return DrainResult(ok=False, drain_s=0.5, pages=10, message="post-copy page transfer broke")


class FakeProvider(Provider):
    """An in-memory provider: instances are records, each with a FakeAgent."""

    name = "fake"
    capabilities = frozenset({Capability.SECURITY_GROUPS, Capability.RESTART_AGENT})
    create_estimate_s = 1.0

    def __init__(self, storage: StorageKind = StorageKind.SHARED) -> None:
        self.catalog = packaged_catalog()
        self.instances: dict[str, InstanceInfo] = {}
        self.agents: dict[str, FakeAgent] = {}
        self.storage_kind = storage
        self.calls: list[str] = []
        self.reclaimed: list[str] = []  # enforce_reclaims() hands these out once
        self._n = 0

    def instance_types(self) -> Catalog:
        return self.catalog

    def create_instance(
        self,
        type_name: str,
        *,
        spot: bool = False,
        tags: Mapping[str, str] | None = None,
        security_group: SecurityGroup | None = None,
        cancel: threading.Event | None = None,
    ) -> InstanceInfo:
        self._n += 1
        iid = f"fake{self._n:04d}"
        info = InstanceInfo(
            id=iid,
            provider=self.name,
            type=self.catalog.get(type_name),
            address=f"fake-{iid}",
            agent_url=f"fake://{iid}",
            agent_token="t",
            spot=spot,
            created_at=time.time(),
            state="running",
            tags=dict(tags or {}),
        )
        self.instances[iid] = info
        self.agents[iid] = FakeAgent(info.agent_url)
        self.calls.append(f"create {iid}")
        return info

    def add(self, type_name: str, status: JobStatus, reachable: bool = True) -> InstanceInfo:
        """An instance found already running (what a restarted control plane finds)."""
        info = self.create_instance(type_name)
        self.agents[info.id].status = status
        self.agents[info.id].reachable = reachable
        self.calls.clear()
        return info

    def restart_agent(self, instance_id: str, cancel: object = None) -> None:
        self.calls.append(f"restart-agent {instance_id}")
        self.agents[instance_id].reachable = True

    def delete_instance(self, instance_id: str) -> None:
        self.calls.append(f"delete {instance_id}")
        self.instances.pop(instance_id, None)

    def describe_instance(self, instance_id: str) -> InstanceInfo | None:
        return self.instances.get(instance_id)

    def list_instances(self) -> list[InstanceInfo]:
        return list(self.instances.values())

    def enforce_reclaims(self) -> list[str]:
        gone, self.reclaimed = self.reclaimed, []
        for iid in gone:
            self.instances.pop(iid, None)
        return gone

    def attach_job_storage(self, job_id: str, instance: InstanceInfo) -> JobStorage:
        self.calls.append(f"attach-storage {job_id} {instance.id}")
        return JobStorage(self.storage_kind, device="fake")

    def detach_job_storage(self, job_id: str, instance: InstanceInfo) -> None:
        self.calls.append(f"detach-storage {job_id} {instance.id}")

    def delete_job_storage(self, job_id: str) -> None:
        self.calls.append(f"delete-storage {job_id}")

    def delete_security_group(self, job_id: str) -> None:
        self.calls.append(f"delete-sg {job_id}")

    def checkpoint_location(self, job_id: str, checkpoint_id: str) -> str:
        return f"s3://fake/{job_id}/{checkpoint_id}"

    def delete_checkpoint(self, location: str) -> None:
        self.calls.append(f"delete-checkpoint {location}")

    def cleanup(self, keep: Collection[str] = ()) -> list[str]:
        raise ProviderError("the fake provider has nothing to clean up")

    def connect(self, inst: InstanceInfo, timeout: float = 30.0) -> FakeAgent:
        """The control plane's ``connect``: this instance's fake agent."""
        agent = self.agents.get(inst.id)
        if agent is None:
            raise AgentError(f"fake instance {inst.id} has no agent")
        return agent
