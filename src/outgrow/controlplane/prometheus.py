"""``GET /metrics``: the control plane in Prometheus' text format (version 0.0.4), every
family with its HELP and TYPE lines. Built in one pass over the store (jobs, instances,
migration events: three queries) and the scheduler's latest samples, so a scrape stays
cheap however often it comes. docs/monitoring.md lists the families; the dashboard
(docs/grafana-dashboard.json) uses them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

from outgrow import __version__
from outgrow.domain.jobs import EventView
from outgrow.domain.rules import Sample
from outgrow.domain.states import JobState
from outgrow.store import InstanceRecord, JobRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Downtime of a move: a small kernel moves in well under 1 s, 1 GiB in about 4 s.
DOWNTIME_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)


def reason_kind(reason: str) -> str:
    """What caused a migration, from its event's reason (written by domain/rules.py and
    the manual migrate): manual, evadeOOM, reclaim, upperBound, lowerBound or other."""
    head = reason.split("→", 1)[0]
    if reason.startswith("manual"):
        return "manual"
    if reason.startswith("evadeOOM"):
        return "evadeOOM"
    if reason.startswith("spot reclaim"):
        return "reclaim"
    if "≥" in head:
        return "upperBound"
    if "≤" in head:
        return "lowerBound"
    return "other"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return "+Inf" if value == float("inf") else repr(float(value))


class Text:
    """Prometheus text: families, each with its HELP and TYPE lines before its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help: str) -> None:
        self.lines += [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]

    def sample(self, metric: str, value: float, /, **labels: str) -> None:
        self.lines.append(f"{metric}{_labels(**labels)} {_num(value)}")

    def render(self) -> str:
        return "\n".join(self.lines) + "\n"


def hours(inst: InstanceRecord, now: datetime) -> float:
    end = inst.ended_at or now
    return max((end - inst.started_at).total_seconds(), 0.0) / 3600


def render(
    jobs: Sequence[JobRecord],
    instances: Iterable[InstanceRecord],
    migrations: Iterable[EventView],
    last_sample: Callable[[str], Sample | None],
    now: datetime | None = None,
) -> str:
    now = now or datetime.now(UTC)
    out = Text()
    out.family("outgrow_info", "gauge", "The control plane's version (always 1).")
    out.sample("outgrow_info", 1, version=__version__)

    by_status = Counter(j.status for j in jobs)
    out.family("outgrow_jobs", "gauge", "Jobs by status (deleted jobs are not counted).")
    for st in JobState:
        out.sample("outgrow_jobs", by_status.get(st.value, 0), status=st.value)

    _samples(out, jobs, last_sample)
    _instances(out, jobs, list(instances), now)
    _migrations(out, list(migrations))
    return out.render()


def _samples(out: Text, jobs: Sequence[JobRecord], last: Callable[[str], Sample | None]) -> None:
    latest = [(j, s) for j in jobs if j.status == JobState.EXECUTING and (s := last(j.id))]
    families = (
        ("outgrow_job_memory_bytes", "Memory an executing job uses (its latest sample)."),
        ("outgrow_job_memory_limit_bytes", "The memory limit of an executing job's instance."),
        ("outgrow_job_cpu_vcpus", "CPU an executing job uses, in vCPUs (its latest sample)."),
        ("outgrow_job_cpu_quota_vcpus", "The CPU quota of an executing job's instance."),
    )
    for name, help in families:
        out.family(name, "gauge", help)
        for j, s in latest:
            value = {
                "outgrow_job_memory_bytes": s.mem_used_bytes,
                "outgrow_job_memory_limit_bytes": s.mem_limit_bytes,
                "outgrow_job_cpu_vcpus": s.cpu_used_vcpus,
                "outgrow_job_cpu_quota_vcpus": s.cpu_quota_vcpus,
            }[name]
            out.sample(name, value, job=j.id, name=j.name)


def _instances(
    out: Text, jobs: Sequence[JobRecord], instances: list[InstanceRecord], now: datetime
) -> None:
    cost: dict[str, float] = {}
    live: Counter[tuple[str, str]] = Counter()
    rate: dict[tuple[str, str], float] = {}
    for inst in instances:
        cost[inst.job_id] = cost.get(inst.job_id, 0.0) + hours(inst, now) * inst.price_per_hour
        if inst.ended_at is None:
            live[(inst.provider, inst.type)] += 1
            key = (inst.provider, inst.type)
            rate[key] = rate.get(key, 0.0) + inst.price_per_hour
    out.family(
        "outgrow_job_cost_usd",
        "gauge",
        "What a job's instances have cost so far, in USD (hours × price per hour, every "
        "instance of every run).",
    )
    for j in jobs:
        out.sample("outgrow_job_cost_usd", round(cost.get(j.id, 0.0), 6), job=j.id, name=j.name)
    out.family("outgrow_instances", "gauge", "Live instances by provider and instance type.")
    for (provider, itype), n in sorted(live.items()):
        out.sample("outgrow_instances", n, provider=provider, type=itype)
    name = "outgrow_instances_price_per_hour_usd"
    out.family(name, "gauge", "What the live instances cost per hour, in USD, by type.")
    for (provider, itype), usd in sorted(rate.items()):
        out.sample(name, round(usd, 6), provider=provider, type=itype)


def _migrations(out: Text, events: list[EventView]) -> None:
    counts: Counter[tuple[str, str]] = Counter()
    moved_bytes = 0
    downtimes: list[float] = []
    for e in events:
        transfer = str(e.data.get("transfer") or "unknown")
        counts[(reason_kind(e.reason), transfer)] += 1
        moved_bytes += e.checkpoint_bytes or 0
        if e.downtime_s is not None:
            downtimes.append(e.downtime_s)
    out.family(
        "outgrow_migrations_total",
        "counter",
        "Live migrations that completed, by what caused them (reason_kind: manual, "
        "evadeOOM, reclaim, upperBound, lowerBound, other) and how the pages moved.",
    )
    for (kind, transfer), n in sorted(counts.items()):
        out.sample("outgrow_migrations_total", n, reason_kind=kind, transfer=transfer)
    out.family(
        "outgrow_migration_checkpoint_bytes_total",
        "counter",
        "Bytes of checkpoint images that migrations moved.",
    )
    out.sample("outgrow_migration_checkpoint_bytes_total", moved_bytes)
    name = "outgrow_migration_downtime_seconds"
    out.family(name, "histogram", "How long a migration kept its job frozen, in seconds.")
    for le in DOWNTIME_BUCKETS:
        out.sample(f"{name}_bucket", sum(1 for d in downtimes if d <= le), le=_num(le))
    out.sample(f"{name}_bucket", len(downtimes), le="+Inf")
    out.sample(f"{name}_sum", float(sum(downtimes)))
    out.sample(f"{name}_count", len(downtimes))
