"""Every metric docs/grafana-dashboard.json queries has samples in the /metrics answer of a
real control plane (local provider) whose job has run and moved once."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cp_server import control_plane
from promql import exposed, expressions, metric_names
from waiting import wait_for_value

pytestmark = [pytest.mark.root, pytest.mark.slow]

LOOP = "import time\nwhile True:\n    print(1, flush=True)\n    time.sleep(0.2)\n"


def test_dashboard_metrics_have_samples(tmp_path: Path) -> None:
    used = set().union(*(metric_names(e) for e in expressions()))
    with control_plane(tmp_path) as cp:
        r = cp.post("/jobs", {"name": "dash", "image": "python", "script": LOOP, "mem": "0.25"})
        assert r.status_code == 201, r.text
        ref = r.json()["id"]
        cp.wait(ref, {"Executing"})
        assert cp.post(f"/jobs/{ref}/migrate", {"mem": 0.5}).status_code == 202
        wait_for_value(
            lambda: cp.job(ref),
            lambda j: (
                j["status"] == "Executing" and any(e["type"] == "migration" for e in j["events"])
            ),
            timeout=180,
            interval=0.2,
            what=f"job {ref} to move and run again",
        )

        def scrape() -> str:
            r = httpx.get(cp.url + "/metrics", headers=cp.headers(), timeout=15)
            r.raise_for_status()
            return r.text

        text = wait_for_value(
            scrape,
            lambda t: used <= exposed(t)[1],
            timeout=60,
            what="a sample of every metric the dashboard uses",
        )
        assert 'outgrow_migrations_total{reason_kind="manual",transfer="page-server"} 1' in text
        assert "outgrow_migration_downtime_seconds_count 1" in text
        cp.post(f"/jobs/{ref}/cancel")
        cp.wait(ref, {"Cancelled"})
