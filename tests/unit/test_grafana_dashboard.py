"""docs/grafana-dashboard.json: a dashboard Grafana can import (a Prometheus datasource
variable, unique panel ids, a query in every panel), and every metric its PromQL uses is
in the /metrics answer of a control plane (in-process here: a real store and the real
HTTP server over a FAKE provider; tests/root/test_grafana_dashboard_live.py checks the same
against a control plane running and moving a real job, with a sample for every name)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import uvicorn

from cp_server import free_port
from fakes import FakeProvider
from outgrow.controlplane.service import ControlPlane
from outgrow.domain.jobs import JobSpec
from outgrow.server import create_app
from outgrow.settings import Settings
from outgrow.store import InstanceRecord, Store
from promql import DASHBOARD, exposed, expressions, metric_names, panels
from waiting import wait_for_value


def test_the_dashboard_is_importable() -> None:
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 36
    ds = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
    assert ds == [
        {"name": "datasource", "label": "Prometheus", "type": "datasource",
         "query": "prometheus", "current": {}, "hide": 0}
    ]  # fmt: skip
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)) >= 10
    for p in panels(d):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, p["title"]


def test_metric_names_of_promql() -> None:
    assert metric_names('sum by (status) (outgrow_jobs{status=~"A|B"}) > 0') == {"outgrow_jobs"}
    assert metric_names(
        "histogram_quantile(0.95, sum by (le) (rate(x_bucket[$__rate_interval]))) * 1e3"
    ) == {"x_bucket"}
    assert metric_names("rate(a_sum[1h]) / on (job) rate(a_count[1h]) or vector(0)") == {
        "a_sum",
        "a_count",
    }


@pytest.fixture
def metrics_text(tmp_path: Path) -> Iterator[str]:
    """``GET /metrics`` of an in-process control plane with a job that moved once."""
    provider = FakeProvider()
    store = Store.open(f"sqlite:///{tmp_path / 'outgrow.db'}")
    plane = ControlPlane(Settings(data_dir=tmp_path), store, provider, connect=provider.connect)
    try:
        boot = plane.accounts.bootstrap("admin-password-1")
        assert boot is not None
        admin = store.get_user("admin")
        assert admin is not None
        job = store.create_job(admin.id, JobSpec(name="etl", image="python", script="1"), "t")
        now = datetime.now(UTC)
        store.add_instance(
            job,
            InstanceRecord(
                id="i-1", job_id=job, provider="local", type="lc.small", vcpus=1, memory_gib=1,
                spot=False, price_per_hour=0.0168, address=None, agent_url=None,
                agent_token=None, started_at=now, ended_at=None, status="normal",
            ),
        )  # fmt: skip
        store.add_event(
            job, "migration", "manual → lc.small", transfer="page-server", downtime_s=0.4,
            checkpoint_bytes=1 << 20,
        )  # fmt: skip
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(plane), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            r = wait_for_value(
                lambda: httpx.get(url, headers={"Authorization": f"Bearer {boot[1]}"}),
                lambda r: r.status_code == 200,
                timeout=30,
                what="the control plane to answer /metrics",
                ignore=(httpx.HTTPError,),
            )
            assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            yield r.text
        finally:
            server.should_exit = True
            thread.join(10)
    finally:
        plane.stop()
        store.close()


def test_every_dashboard_metric_is_in_metrics(metrics_text: str) -> None:
    used = set().union(*(metric_names(e) for e in expressions()))
    assert {"outgrow_jobs", "outgrow_migrations_total", "outgrow_job_cost_usd"} <= used
    assert "outgrow_migration_downtime_seconds_bucket" in used
    declared, sampled = exposed(metrics_text)
    assert used - declared == set(), "the dashboard uses metrics /metrics does not declare"
    # without a scheduler here, only the executing jobs' usage gauges have no sample
    usage = {n for n in used if n.startswith(("outgrow_job_memory", "outgrow_job_cpu"))}
    assert used - usage - sampled == set()
