"""`outgrow cancel` interrupts a start wherever it waits (a real control plane on the
local provider): an image build, an agent that does not answer, a vmPolicy retry pause.
The cancel acts within seconds, nothing the start made is left, the job is Cancelled."""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cp_server import Server, control_plane
from outgrow.agent.images import ImageCache
from outgrow.providers.local.provider import packaged_catalog
from waiting import wait_for_value, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

SCRIPT = "import time\nwhile True:\n    time.sleep(1)\n"


def submit(cp: Server, **fields: Any) -> str:
    body = {"name": f"c{secrets.token_hex(3)}", "image": "python", "script": SCRIPT}
    r = cp.post("/jobs", {**body, "mem": "0.25", **fields})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def cancel_and_time(cp: Server, job: str) -> tuple[dict[str, Any], float]:
    """Cancel ``job``; its view once Cancelled and the seconds that took."""
    t = time.monotonic()
    r = cp.post(f"/jobs/{job}/cancel")
    assert r.status_code == 202, r.text
    view = cp.wait(job, {"Cancelled", "FailToExecute", "Executing"}, timeout=60)
    assert view["status"] == "Cancelled", view
    assert view["status_reason"] == "cancelled by admin", view
    return view, time.monotonic() - t


def procs_mentioning(text: str) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(f"{d.name}: {cmd[:200]}")
    return found


def test_cancel_stops_an_image_build(tmp_path: Path) -> None:
    """A derived image no one has built (unique requirements): the build is under way
    when the cancel comes; pip is killed, the half-built image removed, no instance made."""
    with control_plane(tmp_path) as cp:
        n = secrets.randbelow(10**6)  # unique spec, same packages: never a cached build
        name = f"slow{secrets.token_hex(3)}"
        pip = f"scipy>=0.0.{n} pandas>=0.0.{n}"
        r = cp.post("/images", {"name": name, "pip": pip, "base": "python"})
        assert r.status_code == 201, r.text
        cache = ImageCache(cp.plane.settings.image_cache_dir)
        built = cache.root / cache.hash_of(cp.plane.images.spec(name))
        assert not built.exists()
        job = submit(cp, image=name)
        wait_until(
            lambda: procs_mentioning(f"{built}/venv/bin/python -m pip install"),
            timeout=120,
            interval=0.05,
            what="pip to be installing the image's packages",
        )
        view, took = cancel_and_time(cp, job)
        assert took < 10, took
        assert view["instances"] == []
        assert not built.exists() and cache.get(cp.plane.images.spec(name)) is None
        assert procs_mentioning(str(built)) == []


def test_cancel_during_the_agent_health_wait(tmp_path: Path) -> None:
    """The new instance's agent is stopped (SIGSTOP) before it answers, as an agent that
    boots slowly: the control plane waits for it (30 s) — the cancel ends that wait and
    deletes the instance (agent, netns, cgroup) at once."""
    with control_plane(tmp_path) as cp:
        job = submit(cp)
        instances = cp.plane.settings.data_dir / "instances"
        pidfile = wait_for_value(
            lambda: next(instances.glob("*/agent.pid"), None),
            lambda p: p is not None and p.read_text().strip() != "",
            timeout=300,
            interval=0.005,
            what="the instance's agent to be started",
        )
        assert pidfile is not None
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGSTOP)
        iid = pidfile.parent.name
        status = cp.job(job)["status"]
        assert status == "Initializing", f"the agent answered before it was stopped: {status}"
        view, took = cancel_and_time(cp, job)
        assert took < 15, took
        assert view["instances"] == []  # never recorded: the create undid itself
        assert cp.provider.describe_instance(iid) is None
        assert not Path(f"/run/netns/{cp.prefix}-{iid}").exists()
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_cancel_during_a_retry_pause(tmp_path: Path) -> None:
    """No capacity for the job's type (a catalog type bigger than this host): the start
    pauses retryInterval (600 s) before retrying; the cancel ends the pause."""
    catalog = tmp_path / "catalog.yaml"
    rows = [t.to_dict() for t in packaged_catalog()]
    rows.append(
        {
            "name": "lc.huge",
            "vcpus": 2,
            "memory_gib": 4096,
            "price_per_hour": 9.0,
            "spot_price_per_hour": 3.0,
        }
    )
    catalog.write_text(yaml.safe_dump({"types": rows}))
    (tmp_path / "cp").mkdir()
    with control_plane(tmp_path / "cp", catalog_path=catalog) as cp:
        job = submit(cp, instance_type="lc.huge", vm_policy="[retryLimit=3,retryInterval=600s]")
        wait_until(
            lambda: any("retry 1/3 in 600 s" in e["reason"] for e in cp.job(job)["events"]),
            timeout=60,
            what="the start to pause before its first retry",
        )
        view, took = cancel_and_time(cp, job)
        assert took < 5, took
        assert view["instances"] == []
