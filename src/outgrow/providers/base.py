"""The provider interface: one small ABC plus a capability set, looked up by short name.

A provider makes and removes *instances*. Each instance runs one agent, reachable at
``agent_url`` with ``agent_token``; everything else (jobs, checkpoints) goes through the
agent, so the control plane is the same on every provider.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from outgrow.agent.images import ImageSpec
from outgrow.domain.instance_types import Catalog, InstanceType
from outgrow.domain.security import SecurityGroup
from outgrow.domain.storage import JobStorage, StorageKind  # noqa: F401 (re-exported)
from outgrow.errors import ConfigError, ProviderError
from outgrow.settings import Settings


class Capability(StrEnum):
    SPOT = "spot"  # spot/preemptible instances exist
    RECLAIM_NOTICE = "reclaim_notice"  # the agent can be told an instance will be reclaimed
    SHARED_JOB_STORAGE = "shared_job_storage"  # job dirs have the same content on every instance
    SECURITY_GROUPS = "security_groups"  # per-job inbound rules


@dataclass(frozen=True)
class InstanceInfo:
    id: str
    provider: str
    type: InstanceType
    address: str
    agent_url: str
    agent_token: str
    spot: bool
    created_at: float
    state: str  # "running" | "unhealthy" | "gone"
    tags: Mapping[str, str] = field(default_factory=dict)


class Provider(ABC):
    name: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]]
    # Typical seconds from create_instance to an answering agent. A spot reclaim notice
    # shorter than this checkpoints the job at once and restores it on a new instance
    # (instead of creating the target first while the job runs).
    create_estimate_s: ClassVar[float] = 60.0

    @abstractmethod
    def instance_types(self) -> Catalog: ...

    @abstractmethod
    def create_instance(
        self,
        type_name: str,
        *,
        spot: bool = False,
        tags: Mapping[str, str] | None = None,
        security_group: SecurityGroup | None = None,
    ) -> InstanceInfo:
        """Create an instance and return once its agent answers (ProviderError otherwise).
        ``security_group`` (providers with Capability.SECURITY_GROUPS) limits inbound
        traffic from the start; None leaves the instance open."""

    @abstractmethod
    def delete_instance(self, instance_id: str) -> None:
        """Delete an instance and everything it holds; idempotent."""

    @abstractmethod
    def describe_instance(self, instance_id: str) -> InstanceInfo | None: ...

    @abstractmethod
    def list_instances(self) -> list[InstanceInfo]: ...

    def prepare_image(self, spec: ImageSpec, progress: Callable[[str], None] | None = None) -> None:
        """Make an image available to this provider's instances before a job starts.
        Default: nothing (the agent builds it on its instance)."""
        return None

    def reclaim(self, instance_id: str, in_s: float) -> float:
        """Announce that a (spot) instance will be taken away in ``in_s`` seconds; returns
        the deadline. Providers whose cloud sends the notice itself need not offer it."""
        raise ProviderError(f"provider {self.name} cannot reclaim instances on demand")

    def enforce_reclaims(self) -> list[str]:
        """Take away instances whose reclaim deadline passed (simulating providers only)."""
        return []

    # ---- job storage: where a job's directory lives while it moves --------------------
    def attach_job_storage(self, job_id: str, instance: InstanceInfo) -> JobStorage:
        """Make the job's storage reachable from ``instance`` (creating it on first use)
        and say how its agent mounts it. Default: shared, nothing to move."""
        return JobStorage()

    def detach_job_storage(self, job_id: str, instance: InstanceInfo) -> None:
        """Take the job's storage away from ``instance`` once its agent released it
        (unmounted or uploaded); idempotent. Default: nothing to do."""
        return None

    def delete_job_storage(self, job_id: str) -> None:
        """The job ended: delete its storage (volume, objects); idempotent."""
        return None

    def checkpoint_url(self, job_id: str, checkpoint_id: str) -> str | None:
        """Where a suspended job's checkpoint is kept: an ``s3://`` URL the agent uploads
        to, or None for a directory in the control plane's data dir (instances on the
        control plane's host)."""
        return None

    def transfer_url(self, job_id: str, checkpoint_id: str) -> str | None:
        """Where a migration's checkpoint goes when the two agents cannot reach each other
        (an s3:// URL, deleted after the move), or None: no fallback, the move fails."""
        return None

    def delete_checkpoint(self, url: str) -> None:
        """Delete a checkpoint kept at ``url`` (from checkpoint_url or transfer_url);
        idempotent."""
        return None

    def delete_security_group(self, job_id: str) -> None:
        """Remove the job's security group once the job has ended (providers whose
        groups outlive instances, e.g. aws). Default: nothing to remove."""
        return None

    def cleanup(self, keep: Collection[str] = ()) -> list[str]:
        """Remove leftovers of instances not in ``keep``; return what was removed."""
        removed = []
        for inst in self.list_instances():
            if inst.id not in keep:
                self.delete_instance(inst.id)
                removed.append(inst.id)
        return removed


_REGISTRY: dict[str, Callable[[Settings], Provider]] = {}


def register(name: str, factory: Callable[[Settings], Provider]) -> None:
    _REGISTRY[name] = factory


def get_provider(name: str, settings: Settings) -> Provider:
    if not _REGISTRY:
        _load_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown provider {name!r} (available: {', '.join(sorted(_REGISTRY))})",
            field="provider",
        ) from None
    return factory(settings)


def _load_builtin() -> None:
    from outgrow.providers.local.provider import LocalProvider

    register("local", LocalProvider.from_settings)
    register("aws", _aws)


def _aws(settings: Settings) -> Provider:
    # Imported on use: the aws provider needs the optional extra outgrow[aws] (boto3).
    from outgrow.providers.aws.provider import AwsProvider

    return AwsProvider.from_settings(settings)
