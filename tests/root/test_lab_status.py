"""outgrow in JupyterLab, for real: a control plane on the local provider, a ``jupyter-lab``
job (its image built with outgrow's extension), the stable URL open in Debian's Chromium
through Playwright. The status bar shows the job's memory against its limit (1 GiB on
lc.small); ``outgrow migrate`` (the real CLI) moves the running JupyterLab with CRIU to
lc.large; within 10 s the same page shows the new limit (4 GiB) and a notification with
the move's reason and downtime. Screenshots go to ``artifacts/labext/``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cp_server import Server, control_plane
from waiting import wait_for_value

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "labext"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_CONSOLE = Path(sys.executable).with_name("outgrow")
OUTGROW = [str(_CONSOLE)] if _CONSOLE.exists() else [sys.executable, "-m", "outgrow.cli"]


def outgrow(cp: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTGROW_")}
    env.update(OUTGROW_URL=cp.url, OUTGROW_TOKEN=cp.token)
    r = subprocess.run(
        [*OUTGROW, *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def status_file(cp: Server, job_id: str) -> dict[str, Any]:
    path = cp.provider.settings.data_dir / "jobs" / job_id / "outgrow" / "status.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_status_bar_and_move_notification(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (make setup installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with control_plane(tmp_path) as cp:
        r = cp.post("/jobs", {"name": "lab", "image": "jupyter-lab", "instance_type": "lc.small"})
        assert r.status_code in (200, 201), r.text
        job_id = r.json()["id"]
        try:
            cp.wait(job_id, {"Executing"}, timeout=900)
            # The agent's status file, as the job reads it: type and limit of lc.small.
            st = wait_for_value(
                lambda: status_file(cp, job_id),
                lambda s: s["instance_type"] == "lc.small",
                timeout=30,
                ignore=(OSError, ValueError),
                what="the status file to name lc.small",
            )
            assert st["mem_limit_bytes"] == 1024**3 and st["last_move"] is None
            with sync_api.sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                try:
                    check_lab(sync_api, browser, cp, job_id)
                finally:
                    browser.close()
        finally:
            cp.post(f"/jobs/{job_id}/cancel")
            cp.wait(job_id, {"Cancelled"}, timeout=120)


def check_lab(sync_api: Any, browser: Any, cp: Server, job_id: str) -> None:
    expect = sync_api.expect
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.goto(f"{cp.url}/jobs/{job_id}/lab?token={cp.token}")
    item = page.locator("#outgrow-lab-memory")
    expect(item).to_have_text(re.compile(r"^Mem: \d+\.\d / 1\.0 GiB$"), timeout=120_000)
    assert item.get_attribute("data-instance-type") == "lc.small"
    page.wait_for_selector(".jp-LauncherCard", timeout=60_000)  # JupyterLab's launcher
    shot(page, "01-status-bar-lc-small")

    # The real CLI, as a user would: the running JupyterLab moves with CRIU.
    out = outgrow(cp, "migrate", job_id, "--instance-type", "lc.large", "--wait", "--json")
    assert job_id in out.stdout

    # The page was never reloaded: the same status bar shows the new limit...
    expect(item).to_have_text(re.compile(r"^Mem: \d+\.\d / 4\.0 GiB"), timeout=10_000)
    expect(item).to_have_attribute("data-instance-type", "lc.large", timeout=10_000)
    # ...and the notification says where to, how long it took, and why.
    toast = page.get_by_text(re.compile(r"^Moved to lc\.large \(4 GiB\) in \d+\.\d s: ")).first
    expect(toast).to_be_visible(timeout=10_000)
    text = toast.inner_text()
    move = status_file(cp, job_id)["last_move"]
    assert move["from_type"] == "lc.small" and move["to_type"] == "lc.large"
    assert f"in {move['downtime_s']:.1f} s: {move['reason']}" in text, text
    assert move["reason"].startswith("manual"), move
    expect(item).to_have_text(re.compile(r"^Mem: \d+\.\d / 4\.0 GiB$"), timeout=10_000)
    shot(page, "02-after-move-lc-large")
    assert not errors, errors


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), animations="disabled")
