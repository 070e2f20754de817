"""The App Library lists OCI images (description, digest, size, command) and one click
starts them: a Jupyter image with its own Jupyter (``jupyter``: lab, else server), any
other with its command. Debian's Chromium through Playwright against a real in-process
control plane; the job submissions are caught in the browser (running jobs from OCI
images is the runtime's part)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cp_server import Server, control_plane
from oci_image import oci_archive

pytestmark = [pytest.mark.root, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "console"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("cp")
    with control_plane(tmp, image_cache_dir=tmp / "images") as server:
        yield server
    shutil.rmtree(tmp / "images", ignore_errors=True)  # hundreds of MiB of rootfs


def upload(cp: Server, path: Path, name: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        r = httpx.post(
            cp.api + "/images/import",
            params={"name": name},
            content=f.read(),
            headers=cp.headers(),
            timeout=600,
        )
    assert r.status_code == 201, r.text
    view: dict[str, Any] = r.json()
    return view


def test_library_lists_and_starts_oci_images(
    cp: Server, tiny_oci: Path, jupyter_oci_archive: Path, tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (make setup)")
    sync_api = pytest.importorskip("playwright.sync_api")
    tiny = upload(cp, oci_archive(tiny_oci, tmp_path / "tiny.tar"), "tiny")
    jup = upload(cp, jupyter_oci_archive, "jupyter-test")
    submitted: list[dict[str, Any]] = []

    def catch(route: Any) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        submitted.append(json.loads(route.request.post_data))
        body = json.dumps({"error": "invalid", "message": "caught by the test"})
        route.fulfill(status=422, content_type="application/json", body=body)

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless=new", "--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(f"{cp.url}/#/login")
            page.fill("input[name=password]", "admin-password-1")
            page.click("form.login-form button[type=submit]")
            page.wait_for_selector("h1.page-title:text('Jobs')")
            page.goto(f"{cp.url}/#/library")
            card = page.wait_for_selector("[data-image=jupyter-test][data-format=oci]")
            text = card.inner_text()
            assert jup["description"] in text and "its own Jupyter Server" in text
            assert jup["oci"]["digest"][:19] in text and "MiB" in text
            assert "jupyter server --ip=0.0.0.0" in text and "this host" in text
            tiny_text = page.inner_text("[data-image=tiny]")
            assert "tiny: no shell" in tiny_text and "runs its command" in tiny_text
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "oci-app-library.png"))
            page.route("**/api/v1/jobs", catch)
            page.click("[data-image=jupyter-test] [data-action=start]")
            page.wait_for_selector("text=caught by the test")
            page.click("[data-image=tiny] [data-action=start]")
            # two toasts (a selector: a polled JS string is eval, which the CSP refuses)
            page.locator(".toast").nth(1).wait_for(state="attached")
        finally:
            browser.close()
    assert len(submitted) == 2, submitted
    lab, batch = submitted
    assert lab["image"] == "jupyter-test" and lab["jupyter"] == "server"
    assert lab["publish"] == ["8888:8888"] and not lab.get("script")
    assert batch["image"] == "tiny" and "jupyter" not in batch and not batch.get("script")
    assert tiny["jupyter"] == []
