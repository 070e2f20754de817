"""``GET /metrics``'s text from a real store, read back with Prometheus' own parser
(prometheus_client): HELP/TYPE for every family, the values the store implies (jobs by
status, cost, live instances, migrations by cause and transfer, the downtime histogram),
and the migration causes as the policy rules actually word them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample as PromSample

from outgrow.controlplane import prometheus
from outgrow.domain.instance_types import Catalog
from outgrow.domain.jobs import JobSpec
from outgrow.domain.policy import parse_cpu_range, parse_mem_range, parse_migrate_policy
from outgrow.domain.rules import (
    Context,
    EvadeOomRule,
    MemLowerRule,
    MemUpperRule,
    ReclaimRule,
    Sample,
)
from outgrow.providers.local.provider import packaged_catalog
from outgrow.store import InstanceRecord, Store

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=2)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path / 'outgrow.db'}")
    yield s
    s.close()


def inst(job: str, iid: str, itype: str, price: float, hours: float, ended: bool) -> InstanceRecord:
    return InstanceRecord(
        id=iid,
        job_id=job,
        provider="local",
        type=itype,
        vcpus=1.0,
        memory_gib=1.0,
        spot=False,
        price_per_hour=price,
        address=None,
        agent_url=None,
        agent_token=None,
        started_at=T0,
        ended_at=T0 + timedelta(hours=hours) if ended else None,
        status="migrated-from" if ended else "normal",
    )


def families(text: str) -> dict[str, list[PromSample]]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(samples: list[PromSample], metric: str, /, **labels: str) -> float:
    found = [s.value for s in samples if s.name == metric and s.labels == labels]
    assert len(found) == 1, (metric, labels, samples)
    return float(found[0])


def test_metrics_from_the_store(store: Store) -> None:
    uid = store.create_user("alice", "pw").id
    etl = store.create_job(uid, JobSpec(name="etl", image="python", script="1"), "t")
    nb = store.create_job(uid, JobSpec(name="nb", image="jupyter-lab"), "t")
    for st in ("Initializing", "Starting", "Executing"):
        store.set_status(etl, st, "go")
    store.add_instance(etl, inst(etl, "i-1", "lc.small", 0.02, 1.0, ended=True))
    store.add_instance(etl, inst(etl, "i-2", "lc.large", 0.1, 0, ended=False))
    store.add_instance(nb, inst(nb, "i-3", "lc.small", 0.02, 0, ended=False))
    moves = [
        ("manual → lc.large (2 vCPU, 4 GiB)", "page-server", 0.3, 100),
        ("evadeOOM: memory limit reached (1.00 GiB) → lc.large", "page-server", 3.0, 200),
        ("mem 95% ≥ 90% for 30 s → lc.large", "copy", 12.0, 300),
    ]
    for reason, transfer, downtime, size in moves:
        store.add_event(
            etl, "migration", reason, transfer=transfer, downtime_s=downtime, checkpoint_bytes=size
        )
    store.add_event(etl, "info", "not a migration")
    sample = Sample(t=1.0, mem_used_bytes=5 << 20, mem_limit_bytes=1 << 30, cpu_used_vcpus=0.5,
                    cpu_quota_vcpus=1.0)  # fmt: skip

    text = prometheus.render(
        store.list_jobs(None),
        store.all_instances(),
        [e for _, e in store.events_of_type("migration")],
        lambda job_id: sample if job_id == etl else None,
        now=NOW,
    )
    for line in text.splitlines():  # every sample belongs to a family declared before it
        assert line.startswith(("# HELP outgrow_", "# TYPE outgrow_", "outgrow_")), line
    declared = [ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE")]
    helped = [ln.split()[2] for ln in text.splitlines() if ln.startswith("# HELP")]
    assert declared == helped and len(set(declared)) == len(declared)

    fam = families(text)
    assert value(fam["outgrow_jobs"], "outgrow_jobs", status="Executing") == 1
    assert value(fam["outgrow_jobs"], "outgrow_jobs", status="Submitted") == 1
    assert value(fam["outgrow_jobs"], "outgrow_jobs", status="Completed") == 0
    mem = fam["outgrow_job_memory_bytes"]
    assert value(mem, "outgrow_job_memory_bytes", job=etl, name="etl") == 5 << 20
    assert len(mem) == 1  # nb is not executing
    assert value(fam["outgrow_job_cpu_vcpus"], "outgrow_job_cpu_vcpus", job=etl, name="etl") == 0.5
    cost = fam["outgrow_job_cost_usd"]
    # i-1: 1 h at 0.02 (ended); i-2: 2 h at 0.1 so far; i-3: 2 h at 0.02
    assert value(cost, "outgrow_job_cost_usd", job=etl, name="etl") == pytest.approx(0.22)
    assert value(cost, "outgrow_job_cost_usd", job=nb, name="nb") == pytest.approx(0.04)
    live = fam["outgrow_instances"]
    assert value(live, "outgrow_instances", provider="local", type="lc.small") == 1
    assert value(live, "outgrow_instances", provider="local", type="lc.large") == 1
    rate = fam["outgrow_instances_price_per_hour_usd"]
    assert sum(s.value for s in rate) == pytest.approx(0.12)

    # prometheus_client names a counter family without its _total suffix
    moved = fam["outgrow_migrations"]
    assert (
        value(moved, "outgrow_migrations_total", reason_kind="manual", transfer="page-server") == 1
    )
    assert (
        value(moved, "outgrow_migrations_total", reason_kind="evadeOOM", transfer="page-server")
        == 1
    )
    assert value(moved, "outgrow_migrations_total", reason_kind="upperBound", transfer="copy") == 1
    bytes_moved = fam["outgrow_migration_checkpoint_bytes"]
    assert value(bytes_moved, "outgrow_migration_checkpoint_bytes_total") == 600
    hist = fam["outgrow_migration_downtime_seconds"]
    name = "outgrow_migration_downtime_seconds"
    assert value(hist, f"{name}_count") == 3
    assert value(hist, f"{name}_sum") == pytest.approx(15.3)
    buckets = [(s.labels["le"], s.value) for s in hist if s.name == f"{name}_bucket"]
    assert buckets[-1] == ("+Inf", 3)
    assert dict(buckets)["0.25"] == 0 and dict(buckets)["0.5"] == 1
    assert dict(buckets)["4.0"] == 2 and dict(buckets)["16.0"] == 3
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)  # cumulative


def test_an_empty_store_still_declares_every_family(store: Store) -> None:
    text = prometheus.render([], [], [], lambda _job: None, now=NOW)
    fam = families(text)
    assert (
        value(fam["outgrow_migration_downtime_seconds"], "outgrow_migration_downtime_seconds_count")
        == 0
    )
    for name in ("outgrow_migrations", "outgrow_job_cost_usd", "outgrow_instances"):
        assert fam[name] == []
    assert sum(s.value for s in fam["outgrow_jobs"]) == 0


def test_label_values_are_escaped() -> None:
    job = '"quoted"\\back\nline'
    text = prometheus.Text()
    text.family("outgrow_x", "gauge", "x")
    text.sample("outgrow_x", 1, name=job)
    (fam,) = text_string_to_metric_families(text.render())
    assert fam.samples[0].labels == {"name": job}


def _ctx(catalog: Catalog, current: str, policy: str, **kw: object) -> Context:
    return Context(
        policy=parse_migrate_policy(policy),
        current=catalog.get(current),
        catalog=catalog,
        cpu_range=parse_cpu_range("0.25:4"),
        mem_range=parse_mem_range("0.25:16"),
        now=100.0,
        **kw,  # type: ignore[arg-type]
    )


def test_reason_kinds_of_the_rules_own_reasons() -> None:
    catalog = packaged_catalog()
    small = catalog.get("lc.small")
    full = Sample(100.0, small.memory_bytes, small.memory_bytes, 0.1, small.vcpus, True)
    d = EvadeOomRule().evaluate(_ctx(catalog, "lc.small", "[evadeOOM=true]"), [full])
    assert d is not None and prometheus.reason_kind(d.reason) == "evadeOOM"

    d = ReclaimRule().evaluate(_ctx(catalog, "lc.small", "[]", reclaim_notice=True), [full])
    assert d is not None and prometheus.reason_kind(d.reason) == "reclaim"

    policy = "[mem.upperBoundRatio=80,mem.upperBoundDuration=10s,mem.lowerBoundRatio=20,"
    policy += "mem.lowerBoundDuration=10s]"
    hot = [Sample(t, int(small.memory_bytes * 0.9), small.memory_bytes, 0.1, 1.0) for t in
           range(85, 101)]  # fmt: skip
    d = MemUpperRule().evaluate(_ctx(catalog, "lc.small", policy), hot)
    assert d is not None and d.target is not None
    assert prometheus.reason_kind(d.reason) == "upperBound"

    large = catalog.get("lc.large")
    cold = [Sample(t, large.memory_bytes // 20, large.memory_bytes, 0.1, large.vcpus) for t in
            range(85, 101)]  # fmt: skip
    d = MemLowerRule().evaluate(_ctx(catalog, "lc.large", policy), cold)
    assert d is not None and d.target is not None
    assert prometheus.reason_kind(d.reason) == "lowerBound"

    assert prometheus.reason_kind("manual → lc.large (2 vCPU, 4 GiB)") == "manual"
    assert prometheus.reason_kind("something new") == "other"
