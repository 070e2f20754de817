"""The provider interface: one small ABC plus a capability set, looked up by short name.

A provider makes and removes *instances*. Each instance runs one agent, reachable at
``agent_url`` with ``agent_token``; everything else (jobs, checkpoints) goes through the
agent, so the control plane is the same on every provider.

Every method a caller uses is declared here; the optional ones have a default that does
nothing (or refuses with a ProviderError) and a :class:`Capability` saying whether the
provider really offers them (``provider.supports(Capability.X)``), as in SkyPilot's
provision interface. Providers are found by short name (:func:`get_provider`).

Methods that wait (for an agent, an image build) take ``cancel``, the job action's
cancellation token (``outgrow.cancel``): once it is set they undo what they made and
raise CancelledError within seconds.
"""

from __future__ import annotations

import importlib
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import ClassVar

from outgrow.agent.oci import OciCache
from outgrow.cancel import Cancel
from outgrow.domain.images import ImageSpec
from outgrow.domain.instance_types import Catalog, InstanceType
from outgrow.domain.oci import OciImage, RootfsFacts
from outgrow.domain.security import SecurityGroup
from outgrow.domain.storage import JobStorage, is_object_url
from outgrow.errors import ConfigError, ProviderError
from outgrow.settings import Settings


class Capability(StrEnum):
    SPOT = "spot"  # spot/preemptible instances exist
    RECLAIM_NOTICE = "reclaim_notice"  # the agent can be told an instance will be reclaimed
    SHARED_JOB_STORAGE = "shared_job_storage"  # job dirs have the same content on every instance
    SECURITY_GROUPS = "security_groups"  # per-job inbound rules (update_security_group)
    RESTART_AGENT = "restart_agent"  # the control plane restarts a dead agent itself


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

    def public_dict(self) -> dict[str, object]:
        """Everything but the agent's token (for output and logs)."""
        d = asdict(self)
        d.pop("agent_token")
        return d


class Provider(ABC):
    name: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]]
    # Typical seconds from create_instance to an answering agent. A spot reclaim notice
    # shorter than this checkpoints the job at once and restores it on a new instance
    # (instead of creating the target first while the job runs).
    create_estimate_s: ClassVar[float] = 60.0

    def supports(self, capability: Capability) -> bool:
        return capability in self.capabilities

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
        cancel: Cancel | None = None,
    ) -> InstanceInfo:
        """Create an instance and return once its agent answers (ProviderError otherwise).
        ``security_group`` (providers with Capability.SECURITY_GROUPS) limits inbound
        traffic from the start; None leaves the instance open. A set ``cancel`` deletes
        the half-made instance and raises CancelledError."""

    @abstractmethod
    def delete_instance(self, instance_id: str) -> None:
        """Delete an instance and everything it holds; idempotent."""

    @abstractmethod
    def describe_instance(self, instance_id: str) -> InstanceInfo | None: ...

    @abstractmethod
    def list_instances(self) -> list[InstanceInfo]: ...

    def restart_agent(self, instance_id: str, cancel: Cancel | None = None) -> None:
        """Start the agent of an existing instance again; it re-adopts its job
        (Capability.RESTART_AGENT). Default: nothing (the instance's init system does)."""
        return None

    def update_security_group(self, instance_id: str, sg: SecurityGroup | None) -> None:
        """Replace the instance's security group (None: remove it, all open)
        (Capability.SECURITY_GROUPS)."""
        raise ProviderError(f"provider {self.name} has no security groups")

    def ensure_network(self) -> None:
        """Make the address instances reach this host at exist now, before any instance
        does (a service on the host that instances call, e.g. JupyterHub's API, listens
        there). Default: nothing to do."""
        return None

    def network_ranges(self) -> tuple[str | None, str | None]:
        """(address of the control plane as instances see it, pool of instance addresses),
        for showing a security group's rules; (None, None) when not known."""
        return None, None

    def local_job_dir(self, job_id: str) -> Path | None:
        """Where this host can read the job's directory while no agent holds it (the local
        provider's shared directory), or None (it lives on the instances)."""
        return None

    def prepare_image(
        self,
        spec: ImageSpec,
        progress: Callable[[str], None] | None = None,
        cancel: Cancel | None = None,
    ) -> None:
        """Make an image available to this provider's instances before a job starts (never
        inside a move's downtime; a set ``cancel`` stops a build: CancelledError).
        Default: nothing (the agent builds it on its instance)."""
        return None

    # ---- OCI images: the control plane host's cache (agent/oci.py) ----------------------
    # Every image is imported, verified and unpacked here first, whatever the provider: the
    # API answers with its config and what its rootfs offers (shell, python, jupyter).
    settings: Settings  # every provider keeps the settings it was made with

    def oci_cache(self) -> OciCache:
        return OciCache(
            self.settings.image_cache_dir,
            insecure_registries=self.settings.oci_insecure_registries,
        )

    def import_image(
        self, archive: Path, name: str, progress: Callable[[str], None] | None = None
    ) -> tuple[OciImage, RootfsFacts]:
        """Import an image archive (or OCI layout directory) into the host cache and unpack
        it: the image and what its rootfs offers."""
        cache = self.oci_cache()
        image = cache.import_archive(archive, name, label=f"'{name}'")
        return image, self._unpacked(cache, image, progress)

    def pull_image(
        self, reference: str, progress: Callable[[str], None] | None = None
    ) -> tuple[OciImage, RootfsFacts]:
        """Pull an image from its registry into the host cache and unpack it."""
        cache = self.oci_cache()
        image = cache.pull(reference)
        return image, self._unpacked(cache, image, progress)

    @staticmethod
    def _unpacked(
        cache: OciCache, image: OciImage, progress: Callable[[str], None] | None
    ) -> RootfsFacts:
        cache.ensure_rootfs(image.digest, progress)
        facts = cache.facts(image.digest)
        assert facts is not None  # just unpacked
        return facts

    def image_facts(self, digest: str) -> RootfsFacts | None:
        """What the image's rootfs offers, when it is unpacked on this host (else None)."""
        return self.oci_cache().facts(digest)

    def image_locations(self, digest: str) -> list[str]:
        """Where image ``digest`` is cached, for people (``outgrow image ls``)."""
        cache = self.oci_cache()
        if cache.get(digest) is None:
            return []
        if cache.unpacked(digest):
            return [f"host:{cache.rootfs_path(digest)}"]
        return [f"host:{cache.layout} (not unpacked)"]

    def image_archive_url(self, digest: str) -> str | None:
        """Where an instance fetches the image's archive from (aws: S3), or None: the
        instance reads this host's cache (local) or pulls the image itself."""
        return None

    def remove_image(self, digest: str) -> None:
        """Delete image ``digest`` from the host cache (and wherever the provider shipped
        it); the caller knows no job uses it. Idempotent."""
        cache = self.oci_cache()
        if cache.get(digest) is not None:
            cache.remove(digest)

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

    def checkpoint_location(self, job_id: str, checkpoint_id: str) -> str:
        """Where a suspended job's checkpoint is kept: an object URL (``s3://…``) the agent
        uploads to, or a directory the agents of this host share (local)."""
        raise ProviderError(f"provider {self.name} has nowhere to keep checkpoints")

    def transfer_url(self, job_id: str, checkpoint_id: str) -> str | None:
        """Where a migration's checkpoint goes when the two agents cannot reach each other
        (an s3:// URL, deleted after the move), or None: no fallback, the move fails."""
        return None

    def delete_checkpoint(self, location: str) -> None:
        """Delete a checkpoint kept at ``location`` (from checkpoint_location or
        transfer_url); idempotent. Default: a directory is removed, URLs are kept."""
        if not is_object_url(location):
            shutil.rmtree(location, ignore_errors=True)

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

    def teardown(self) -> list[str]:
        """Remove every instance and whatever the provider set up around them (tests and
        `outgrow cleanup --all`); returns what was removed."""
        return self.cleanup()


# Short name → "module:factory". Imported on use: a provider's dependencies (boto3 for aws)
# are needed only when it is chosen.
_BUILTIN = {
    "local": "outgrow.providers.local.provider:LocalProvider.from_settings",
    "aws": "outgrow.providers.aws.provider:AwsProvider.from_settings",
}
_REGISTRY: dict[str, Callable[[Settings], Provider]] = {}


def register(name: str, factory: Callable[[Settings], Provider]) -> None:
    _REGISTRY[name] = factory


def _factory(name: str) -> Callable[[Settings], Provider]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name not in _BUILTIN:
        known = ", ".join(sorted({*_BUILTIN, *_REGISTRY}))
        raise ConfigError(f"unknown provider {name!r} (available: {known})", field="provider")
    module, _, attr = _BUILTIN[name].partition(":")
    obj: object = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    assert callable(obj)
    factory: Callable[[Settings], Provider] = obj
    return factory


def get_provider(name: str, settings: Settings) -> Provider:
    return _factory(name)(settings)
