"""What the API shows of jobs: their views (instances, cost, URL, security group, legal
actions), WaveWatcher's series with the policy's thresholds, and Prometheus' text."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from outgrow.controlplane import prometheus
from outgrow.controlplane.hub import masked
from outgrow.controlplane.images import Images
from outgrow.domain.images import ImageSpec
from outgrow.domain.jobs import InstanceView, JobView, MetricPoint
from outgrow.domain.rules import Sample
from outgrow.domain.security import SecurityGroup, default_ports
from outgrow.domain.snapshots import effective_interval
from outgrow.domain.states import ACTIONS, is_terminal
from outgrow.errors import NotFoundError, ValidationError
from outgrow.providers.base import Capability, Provider
from outgrow.store import InstanceRecord, JobRecord, Store


def instance_view(r: InstanceRecord) -> InstanceView:
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


class Views:
    def __init__(
        self,
        store: Store,
        provider: Provider,
        images: Images,
        public_url: str,
        agent_port: int,
        last_sample: Callable[[str], Sample | None],
        checkpoint_interval_s: float = 0.0,
    ):
        self.store = store
        self.provider = provider
        self.images = images
        self.public_url = public_url
        self.agent_port = agent_port
        self.last_sample = last_sample
        self.checkpoint_interval_s = checkpoint_interval_s  # the default, for Jupyter jobs

    def image_of(self, rec: JobRecord) -> ImageSpec | None:
        try:
            return self.images.for_job(rec.spec)
        except (NotFoundError, ValidationError):  # removed (or replaced) since submitted
            return None

    def url(self, rec: JobRecord, image: ImageSpec | None) -> str | None:
        """The stable URL (outgrow.proxy, mounted at /jobs): the same across moves, and
        opening it resumes a suspended job."""
        if image is None or not image.is_jupyter or is_terminal(rec.status):
            return None
        if rec.spec.hub_prefix is not None:  # a JupyterHub server: reached through the hub
            return None
        return f"{self.public_url}/jobs/{rec.id}/"

    def security_group_rules(self, rec: JobRecord, image: ImageSpec | None) -> list[dict[str, Any]]:
        if not self.provider.supports(Capability.SECURITY_GROUPS):
            return []
        gateway, pool = self.provider.network_ranges()
        try:
            ports = default_ports(image.kind, image.default_port) if image else ()
            sg = SecurityGroup.from_spec(rec.id, rec.spec, ports)
            rules = sg.rules(gateway=gateway, pool=pool, agent_port=self.agent_port)
        except ValidationError:
            return []
        return [dict(r) for r in rules]

    def job(self, rec: JobRecord, with_events: bool = True) -> JobView:
        insts = [instance_view(r) for r in self.store.instances(rec.id)]
        current = next((i for i in insts if i.id == rec.current_instance_id), None)
        image = self.image_of(rec)
        url = self.url(rec, image)
        return JobView(
            id=rec.id,
            name=rec.name,
            owner=rec.owner,
            status=rec.status,
            status_reason=rec.status_reason,
            image=rec.spec.image,
            spec=masked(rec.spec),
            run=rec.run,
            instance=current,
            instances=insts,
            url=url,
            cost_usd=round(sum(i.cost_usd for i in insts), 6),
            submitted_at=rec.created_at,
            updated_at=rec.updated_at,
            exit_code=rec.exit_code,
            events=self.store.events(rec.id) if with_events else [],
            security_group=self.security_group_rules(rec, image),
            checkpoint_interval_s=effective_interval(
                rec.spec.checkpoint_interval,
                image is not None and image.is_jupyter,
                self.checkpoint_interval_s,
            ),
            actions=[
                a
                for a, states in ACTIONS.items()
                if rec.status in states and (a != "open" or url is not None)
            ],
        )

    def metrics(self, rec: JobRecord, points: list[MetricPoint]) -> dict[str, Any]:
        """WaveWatcher: the samples, the policy's thresholds and the moves."""
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

    def prometheus(self) -> str:
        """The Prometheus text of ``GET /metrics`` (controlplane/prometheus.py)."""
        return prometheus.render(
            self.store.list_jobs(None),
            self.store.all_instances(),
            [e for _, e in self.store.events_of_type("migration")],
            self.last_sample,
        )


def downsample(points: list[MetricPoint], step: float) -> list[MetricPoint]:
    """The last point of every ``step`` seconds (and of every instance)."""
    out: list[MetricPoint] = []
    bucket: list[MetricPoint] = []
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
