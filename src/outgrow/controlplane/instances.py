"""The instances of jobs: create them per the job's vmPolicy (spot first, retries) with the
job's security group, record them, end them, and keep a warm one per job (the *prepare*
level of a policy creates the next size before the move needs it)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from datetime import UTC, datetime

from outgrow.cancel import Cancel, check
from outgrow.controlplane.images import Images
from outgrow.domain.images import DEFAULT_JUPYTER_PORT
from outgrow.domain.instance_types import Catalog, InstanceType
from outgrow.domain.policy import parse_cpu_range, parse_mem_range
from outgrow.domain.security import SecurityGroup, default_ports
from outgrow.errors import CapacityError, NotFoundError, OutgrowError
from outgrow.providers.base import Capability, InstanceInfo, Provider
from outgrow.store import InstanceRecord, JobRecord, Store

log = logging.getLogger("outgrow.controlplane")


def now() -> datetime:
    return datetime.now(UTC)


class Instances:
    def __init__(
        self,
        store: Store,
        provider: Provider,
        images: Images,
        stopping: threading.Event,
        retry_cap_s: float = 600.0,
    ):
        self.store = store
        self.provider = provider
        self.catalog: Catalog = provider.instance_types()
        self.images = images
        self.stopping = stopping
        self.retry_cap_s = retry_cap_s
        self._warm: dict[str, InstanceInfo] = {}  # job id → pre-created target
        self._guard = threading.Lock()

    # ---- choosing and creating ------------------------------------------------------
    def initial_type(self, job: JobRecord) -> InstanceType:
        """The cheapest type meeting the ranges' minimums (and not above their maximums)."""
        if job.spec.instance_type:
            return self.catalog.get(job.spec.instance_type)
        cpu, mem = parse_cpu_range(job.spec.cpu), parse_mem_range(job.spec.mem)
        t = self.catalog.cheapest(
            min_vcpus=cpu.min, min_memory_gib=mem.min, max_vcpus=cpu.max, max_memory_gib=mem.max
        )
        if t is None:
            raise CapacityError(
                f"no instance type has {cpu.min:g} vCPU and {mem.min:g} GiB "
                f"within -c {job.spec.cpu} -m {job.spec.mem}"
            )
        return t

    def security_group(self, job: JobRecord) -> SecurityGroup:
        """The job's security group: every instance of the job the same rules."""
        try:
            image = self.images.for_job(job.spec)
            return SecurityGroup.from_spec(
                job.id, job.spec, default_ports(image.kind, image.default_port)
            )
        except NotFoundError:  # image removed since: publish nothing new, keep the proxy
            sg = SecurityGroup.from_spec(job.id, job.spec)
            if DEFAULT_JUPYTER_PORT not in sg.job_ports:
                sg = SecurityGroup(sg.job_id, sg.publish, sg.allow_cidrs, (DEFAULT_JUPYTER_PORT,))
            return sg

    def create(
        self,
        job: JobRecord,
        itype: InstanceType,
        tags: dict[str, str] | None = None,
        spot: bool | None = None,
        cancel: Cancel | None = None,
    ) -> InstanceInfo:
        """Create an instance per the job's vmPolicy: spot first (if asked), then on-demand,
        retrying capacity errors retryLimit times, retryInterval apart. ``spot`` forces
        one kind (e.g. leaving a reclaimed spot instance for on-demand capacity). A set
        ``cancel`` ends the agent wait or the retry pause: CancelledError."""
        vm = job.spec.vm()
        modes = [True, False] if vm.mode == "spotFirst" else [not vm.allows_on_demand]
        if spot is not None:
            modes = [spot]
        tags = {"outgrow:job": job.id, **(tags or {})}
        sg = (
            self.security_group(job) if self.provider.supports(Capability.SECURITY_GROUPS) else None
        )
        last: OutgrowError | None = None
        for attempt in range(vm.retry_limit + 1):
            for use_spot in modes:
                check(cancel, f"creating a {itype.name} instance")
                try:
                    return self.provider.create_instance(
                        itype.name, spot=use_spot, tags=tags, security_group=sg, cancel=cancel
                    )
                except CapacityError as exc:
                    last = exc
            if attempt < vm.retry_limit:
                self.store.add_event(
                    job.id,
                    "info",
                    f"no capacity for {itype.name} ({last}); "
                    f"retry {attempt + 1}/{vm.retry_limit} in {vm.retry_interval:g} s",
                )
                if self._pause(min(vm.retry_interval, self.retry_cap_s), cancel):
                    break
        assert last is not None
        raise last

    def _pause(self, seconds: float, cancel: Cancel | None) -> bool:
        """Wait before a retry; True when the control plane stops, CancelledError on a
        cancel (both cut the wait short)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            check(cancel, "waiting to retry creating an instance")
            if self.stopping.wait(min(left, 0.2)):
                return True
        return False

    # ---- records --------------------------------------------------------------------
    def record(self, job_id: str, inst: InstanceInfo, status: str = "normal") -> None:
        self.store.add_instance(
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

    def end(self, instance_id: str, status: str) -> None:
        """Delete the instance (errors are logged: a leftover is swept later) and record
        how it ended."""
        try:
            self.provider.delete_instance(instance_id)
        except OutgrowError as exc:
            log.error("deleting instance %s failed: %s", instance_id, exc)
        with contextlib.suppress(NotFoundError):  # a warm (prepared) target is not recorded
            self.store.update_instance(instance_id, status=status, ended_at=now())

    def current_type(self, job: JobRecord) -> InstanceType | None:
        for r in self.store.instances(job.id):
            if r.id == job.current_instance_id:
                return self.catalog.get(r.type)
        return None

    # ---- warm targets (prepare level) -----------------------------------------------
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

    def put_warm(self, job_id: str, inst: InstanceInfo) -> None:
        """Remember a pre-created target (ending a previous one of another size)."""
        with self._guard:
            old = self._warm.get(job_id)
            self._warm[job_id] = inst
        if old is not None and old.id != inst.id:
            self.end(old.id, "released")

    def drop_warm(self, job_id: str) -> None:
        with self._guard:
            inst = self._warm.pop(job_id, None)
        if inst is not None:
            self.end(inst.id, "released")
