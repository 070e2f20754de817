"""What the store hands out: the domain views and two frozen records, built from ORM rows
(which never leave the store)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from outgrow.domain.jobs import (
    EventView,
    ImageView,
    JobSpec,
    MetricPoint,
    TemplateView,
    TokenView,
    UserView,
)
from outgrow.store import models as m

# Migration fields are kept in events.data and lifted into EventView's own fields.
LIFTED_EVENT_FIELDS = ("from_type", "to_type", "downtime_s", "checkpoint_bytes")


@dataclass(frozen=True)
class JobRecord:
    """A job as the service works with it (has secrets the API never shows)."""

    id: str
    name: str
    owner_id: int
    owner: str
    spec: JobSpec
    status: str
    status_reason: str
    run: int
    jupyter_token: str
    current_instance_id: str | None
    exit_code: int | None
    checkpoint_dir: str | None
    last_migration_at: float | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class InstanceRecord:
    """One instance a job ran on (its history: one row per instance, ended ones kept)."""

    id: str
    job_id: str
    provider: str
    type: str
    vcpus: float
    memory_gib: float
    spot: bool
    price_per_hour: float
    address: str | None
    agent_url: str | None
    agent_token: str | None
    started_at: datetime
    ended_at: datetime | None
    status: str


def user_view(u: m.User) -> UserView:
    return UserView(id=u.id, name=u.name, is_admin=u.is_admin, created_at=u.created_at)


def token_view(t: m.Token) -> TokenView:
    return TokenView(
        id=t.id,
        name=t.name,
        prefix=t.prefix,
        created_at=t.created_at,
        last_used_at=t.last_used_at,
        revoked=t.revoked_at is not None,
    )


def job_record(j: m.Job, owner: str) -> JobRecord:
    return JobRecord(
        id=j.id,
        name=j.name,
        owner_id=j.owner_id,
        owner=owner,
        spec=JobSpec.model_validate(j.spec),
        status=j.status,
        status_reason=j.status_reason,
        run=j.run,
        jupyter_token=j.jupyter_token,
        current_instance_id=j.current_instance_id,
        exit_code=j.exit_code,
        checkpoint_dir=j.checkpoint_dir,
        last_migration_at=j.last_migration_at,
        created_at=j.created_at,
        updated_at=j.updated_at,
    )


def instance_record(i: m.Instance) -> InstanceRecord:
    return InstanceRecord(
        id=i.id,
        job_id=i.job_id,
        provider=i.provider,
        type=i.type,
        vcpus=i.vcpus,
        memory_gib=i.memory_gib,
        spot=i.spot,
        price_per_hour=i.price_per_hour,
        address=i.address,
        agent_url=i.agent_url,
        agent_token=i.agent_token,
        started_at=i.started_at,
        ended_at=i.ended_at,
        status=i.status,
    )


def event_view(e: m.Event) -> EventView:
    data = dict(e.data or {})
    lifted = {k: data.pop(k) for k in LIFTED_EVENT_FIELDS if k in data}
    return EventView(
        id=e.id,
        type=e.type,
        time=e.time,
        reason=e.reason,
        from_state=e.from_state,
        to_state=e.to_state,
        data=data,
        **lifted,
    )


def metric_point(p: m.Metric) -> MetricPoint:
    return MetricPoint(
        t=p.t,
        instance_id=p.instance_id,
        mem_used_bytes=p.mem_used,
        mem_cache_bytes=p.mem_cache,
        mem_swap_bytes=p.mem_swap,
        mem_limit_bytes=p.mem_limit,
        cpu_used_vcpus=p.cpu_used,
        cpu_quota_vcpus=p.cpu_quota,
    )


def template_view(t: m.Template, owner: str) -> TemplateView:
    return TemplateView(
        id=t.id,
        name=t.name,
        owner=owner,
        spec=JobSpec.model_validate(t.spec),
        created_at=t.created_at,
    )


def image_view(i: m.Image, owner: str | None) -> ImageView:
    return ImageView(
        name=i.name,
        kind=i.kind,
        pip=list(i.pip),
        description=i.description,
        docs=i.docs,
        default_port=i.default_port,
        builtin=i.builtin,
        base=i.base,
        owner=owner,
        format="oci" if i.format == "oci" else "venv",
        oci=(
            {"digest": i.oci_digest, "reference": i.oci_reference or ""} if i.oci_digest else None
        ),
        size_bytes=i.size_bytes,
        config=i.oci_config,
        labels=i.labels or {},
        facts=i.oci_facts,
    )
