"""The web console, for real: a control plane (API, scheduler, local provider, proxy) served
by uvicorn in a thread, driven by Debian's Chromium through Playwright.

Flow: the session cookie API (CSRF rules), log in, start JupyterLab from the App Library
with one click and see it Executing, Open it through the stable URL, submit from the form
and check that the generated command line is what the API received (and, with bash and
the real CLI, that running it gives the same spec), trigger a migration with the Migrate
button and find its marker (and reason) on the WaveWatcher graph, save a template and
submit from it, bulk-cancel, log out. A screenshot of every page goes to
``artifacts/console/``.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import leftovers, make_settings, unique_prefix
from waiting import wait_for_value, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "console"
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
PASSWORD = "console-pw-1"
CSRF = {"X-Outgrow-CSRF": "1"}


@dataclass
class Console:
    url: str
    token: str  # the bootstrap API token of admin
    api: httpx.Client
    app: Any
    state: dict[str, Any] = field(default_factory=dict)

    def job(self, ref: str) -> dict[str, Any]:
        r = self.api.get(f"/api/v1/jobs/{ref}")
        r.raise_for_status()
        return dict(r.json())

    def wait_job(
        self, ref: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 180, what: str = ""
    ) -> dict[str, Any]:
        return wait_for_value(
            lambda: self.job(ref), pred, timeout=timeout, interval=0.5, what=f"job {ref} {what}"
        )

    def wait_samples(self, ref: str, n: int, instance_id: str | None = None) -> None:
        """Until the job has ``n`` WaveWatcher samples (of ``instance_id``, if given)."""

        def samples() -> list[dict[str, Any]]:
            r = self.api.get(f"/api/v1/jobs/{ref}/metrics")
            r.raise_for_status()
            points: list[dict[str, Any]] = r.json()["points"]
            return [p for p in points if instance_id in (None, p["instance_id"])]

        of = f" of instance {instance_id}" if instance_id else ""
        wait_for_value(
            samples,
            lambda points: len(points) >= n,
            timeout=60,
            interval=0.5,
            what=f"{n} WaveWatcher samples{of} for job {ref}",
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    import uvicorn

    from outgrow.controlplane.service import ControlPlane
    from outgrow.providers.local.provider import LocalProvider
    from outgrow.server import create_app
    from outgrow.store import Store

    tmp = tmp_path_factory.mktemp("console")
    prefix = unique_prefix()
    settings = make_settings(tmp, prefix)
    store = Store.open(f"sqlite:///{tmp}/outgrow.db")
    provider = LocalProvider(settings)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    plane = ControlPlane(settings, store, provider, public_url=url)
    boot = plane.accounts.bootstrap(PASSWORD)
    assert boot is not None
    plane.start()
    app = create_app(plane)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:

        def started() -> bool:
            assert thread.is_alive(), "uvicorn exited while starting"
            return bool(server.started)

        wait_until(started, timeout=20, what="uvicorn to start")
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {boot[1]}"}, timeout=30
        ) as api:
            yield Console(url=url, token=boot[1], api=api, app=app)
            # Cancel whatever a failed test left running, so the teardown is clean.
            for j in api.get("/api/v1/jobs").json():
                if "cancel" in j["actions"]:
                    api.post(f"/api/v1/jobs/{j['id']}/cancel")
            wait_until(
                lambda: (
                    not any(
                        j["status"] in ("Cancelling",) or "cancel" in j["actions"]
                        for j in api.get("/api/v1/jobs").json()
                    )
                ),
                timeout=60,
                interval=0.5,
                what="every job left by the tests to be cancelled",
            )
    finally:
        server.should_exit = True
        thread.join(15)
        plane.stop()
        provider.teardown()
        store.close()
        assert leftovers(prefix) == []


@pytest.fixture(scope="module")
def browser(console: Console) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (make setup installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def page(browser: Any, console: Console) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.set_default_timeout(30_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    pg.on(
        "console",
        lambda m: (
            errors.append(f"console: {m.text}")
            if m.type == "error" and "401" not in m.text and "Failed to load resource" not in m.text
            else None
        ),
    )
    console.state["errors"] = errors
    yield pg
    context.close()
    assert not errors, errors


def shot(pg: Any, name: str, *, full: bool = True) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    size = pg.viewport_size
    if full:
        # As a window that tall would show it (sticky sidebar and panels included).
        pg.evaluate("window.scrollTo(0, 0)")
        height = int(pg.evaluate("document.documentElement.scrollHeight"))
        pg.set_viewport_size({"width": size["width"], "height": max(height, size["height"])})
    pg.evaluate(SETTLED)
    try:
        pg.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    finally:
        pg.set_viewport_size(size)


# Resolves once the page is still: fonts loaded, two frames drawn (charts re-render on a
# resize in the frame after it) and every finite CSS transition or animation finished.
SETTLED = """async () => {
  await document.fonts.ready;
  await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
  const finite = document.getAnimations().filter(
    (a) => a.effect && a.effect.getTiming().iterations !== Infinity,
  );
  await Promise.all(finite.map((a) => a.finished.catch(() => null)));
}"""


def goto(pg: Any, console: Console, hash_: str) -> None:
    pg.goto(f"{console.url}/#{hash_}")


def job_id_from(pg: Any) -> str:
    m = re.search(r"#/jobs/([^/?]+)", pg.url)
    assert m, pg.url
    return m.group(1)


# ---- the API the console uses ---------------------------------------------------------------


def test_session_cookie_and_csrf(console: Console) -> None:
    with httpx.Client(base_url=console.url, timeout=30) as c:
        index = c.get("/")
        assert index.status_code == 200 and 'src="/static/js/app.js"' in index.text
        assert "frame-ancestors 'none'" in index.headers["content-security-policy"]
        js = c.get("/static/js/app.js")
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]

        body = {"name": "admin", "password": PASSWORD}
        assert c.post("/api/v1/session", json=body).status_code == 403  # no CSRF header
        assert (
            c.post("/api/v1/session", json={**body, "password": "x"}, headers=CSRF).status_code
            == 401
        )
        r = c.post("/api/v1/session", json=body, headers=CSRF)
        assert r.status_code == 200 and r.json()["name"] == "admin"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("outgrow_session=og_")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        secret = c.cookies["outgrow_session"]

        assert c.get("/api/v1/me").json()["name"] == "admin"  # GET: the cookie suffices
        spec = {"name": "csrf-probe", "image": "nope"}
        refused = c.post("/api/v1/jobs", json=spec)
        assert refused.status_code == 403 and "X-Outgrow-CSRF" in refused.json()["message"]
        # with the header the request is authenticated (and fails on its own merits)
        assert c.post("/api/v1/jobs", json=spec, headers=CSRF).status_code == 404
        # a bearer token needs no CSRF header
        assert console.api.post("/api/v1/jobs", json=spec).status_code == 404

        assert c.delete("/api/v1/session").status_code == 403
        assert c.delete("/api/v1/session", headers=CSRF).status_code == 204
        assert c.get("/api/v1/me").status_code == 401  # cookie cleared
        replay = httpx.get(
            f"{console.url}/api/v1/me", cookies={"outgrow_session": secret}, timeout=30
        )
        assert replay.status_code == 401  # and its token revoked


# ---- the browser flow ------------------------------------------------------------------------


def test_login_and_empty_pages(page: Any, console: Console) -> None:
    goto(page, console, "/jobs")
    page.wait_for_selector("input[name=password]")
    assert "#/login" in page.url
    shot(page, "01-login", full=False)
    page.fill("input[name=password]", "wrong")
    page.click("form.login-form button[type=submit]")
    page.wait_for_selector(".login-form .form-error:not([hidden])")
    page.fill("input[name=password]", PASSWORD)
    page.click("form.login-form button[type=submit]")
    page.wait_for_selector("h1.page-title:text('Jobs')")
    page.wait_for_selector(".empty h3:text('No jobs yet')")
    shot(page, "02-jobs-empty", full=False)
    cookie = next(c for c in page.context.cookies() if c["name"] == "outgrow_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    goto(page, console, "/library")
    page.wait_for_selector("[data-image=jupyter-lab]")
    for kind in ("jupyter-lab", "jupyter-server", "python"):
        assert page.is_visible(f"[data-image={kind}]")
    shot(page, "03-app-library", full=False)
    page.click("[data-image=jupyter-server] [data-action=docs]")
    page.wait_for_selector("dialog[open] .md h3")
    assert "--gateway-url" in page.inner_text("dialog[open] .md")
    shot(page, "04-app-library-docs", full=False)
    page.keyboard.press("Escape")
    page.wait_for_selector("dialog[open]", state="detached")


def test_app_library_add_image(page: Any, console: Console) -> None:
    goto(page, console, "/library")
    page.click(".lib-add")
    page.wait_for_selector("dialog[open]")
    page.fill("dialog[open] [data-field=name] input", "Bad Name")
    page.fill("dialog[open] [data-field=pip] textarea", "requests")
    page.click("dialog[open] [data-value=ok]")
    page.wait_for_selector("dialog[open] [data-field=name].has-error")  # API error, in place
    page.fill("dialog[open] [data-field=name] input", "lab-requests")
    page.fill("dialog[open] [data-field=description] input", "JupyterLab with requests")
    shot(page, "04b-app-library-add-image", full=False)
    page.click("dialog[open] [data-value=ok]")
    page.wait_for_selector("[data-image=lab-requests]")
    image = next(i for i in console.api.get("/api/v1/images").json() if i["name"] == "lab-requests")
    assert image["base"] == "jupyter-lab" and image["kind"] == "jupyter-lab"
    assert "requests" in image["pip"]
    page.click("[aria-label='Remove lab-requests']")
    page.click("dialog[open] [data-value=ok]")
    page.wait_for_selector("[data-image=lab-requests]", state="detached")


def test_one_click_jupyter_lab(page: Any, console: Console) -> None:
    goto(page, console, "/library")
    page.click("[data-image=jupyter-lab] [data-action=start]")
    page.wait_for_selector(".job-page")
    job_id = job_id_from(page)
    console.state["lab"] = job_id
    job = console.wait_job(job_id, lambda j: j["status"] == "Executing", what="Executing")
    assert job["spec"]["image"] == "jupyter-lab" and job["spec"]["publish"] == ["8888:8888"]
    assert set(job["actions"]) >= {"migrate", "modify", "suspend", "cancel", "open"}
    page.wait_for_selector(".badge-slot [data-status=Executing]")
    assert page.is_enabled("[data-action=migrate]") and page.is_visible("[data-action=open]")
    console.wait_samples(job_id, 3)  # a few WaveWatcher samples
    shot(page, "05-job-instances", full=False)


def test_open_through_stable_url(page: Any, console: Console) -> None:
    # Without the proxy /jobs/... is no route (404); with it, an unauthenticated call is 401.
    mounted = httpx.get(f"{console.url}/jobs/jprobe/", timeout=30).status_code != 404
    if not mounted:
        pytest.skip("the stable-URL proxy (/jobs/<id>/) is not mounted in this build")
    job_id = console.state["lab"]
    goto(page, console, f"/jobs/{job_id}")
    page.wait_for_selector(".badge-slot [data-status=Executing]")
    href = page.get_attribute("[data-action=open]", "href")
    assert href == f"{console.url}/jobs/{job_id}/lab"
    with page.context.expect_page() as new:
        page.click("[data-action=open]")
    lab = new.value
    try:
        lab.wait_for_load_state()
        lab.wait_for_selector(".jp-LauncherCard", timeout=90_000)  # JupyterLab's launcher
        assert lab.title() == "JupyterLab"
        assert lab.url.startswith(f"{console.url}/jobs/{job_id}/lab")
        shot(lab, "06-jupyterlab-through-stable-url", full=False)
    finally:
        lab.close()


def parse_submit(command: str) -> dict[str, Any]:
    """The spec an `outgrow submit …` line (as the console prints it) stands for."""
    from outgrow.domain.policy_parse import parse_duration

    script = ""
    m = re.search(r" <<'(\w+)'\n(.*\n)\1$", command, re.S)
    if m:
        script, command = m.group(2), command[: m.start()]
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[:2] == ["outgrow", "submit"], argv
    spec: dict[str, Any] = {"env": {}, "publish": [], "allow_cidr": []}
    it = iter(argv[2:])
    for flag in it:
        value = next(it)
        if flag == "-n":
            spec["name"] = value
        elif flag == "-i":
            spec["image"] = value
        elif flag == "-c":
            spec["cpu"] = value
        elif flag == "-m":
            spec["mem"] = value
        elif flag == "--instance-type":
            spec["instance_type"] = value
        elif flag == "--migrate-policy":
            spec["migrate_policy"] = value
        elif flag == "--vm-policy":
            spec["vm_policy"] = value
        elif flag == "-e":
            k, _, v = value.partition("=")
            spec["env"][k] = v
        elif flag == "--publish":
            spec["publish"].append(value)
        elif flag == "--allow-cidr":
            spec["allow_cidr"].append(value)
        elif flag == "--idle-timeout":
            spec["idle_timeout_s"] = parse_duration(value)
        elif flag == "--script":
            assert value == "/dev/stdin" and m, "inline scripts come as a here-document"
            spec["script"] = script
        else:
            raise AssertionError(f"unexpected flag {flag}")
    return spec


def test_submit_form_command_matches_api(page: Any, console: Console) -> None:
    from outgrow.domain.jobs import JobSpec

    goto(page, console, "/submit?image=jupyter-server")
    page.wait_for_selector("[data-testid=command]")
    shot(page, "07-submit-form")
    assert page.input_value("select[name=image]") == "jupyter-server"
    # Jupyter images come with 8888 published
    assert page.input_value("[data-field=publish] input[aria-label='Host port']") == "8888"
    page.fill("input[name=name]", "gateway-nyc")
    page.fill("textarea[name=script]", "echo 'it''s alive' > started.txt\n# second line")
    page.fill("[aria-label='vCPU max']", "2")
    page.fill("[aria-label='Memory min (GiB)']", "0.5")
    page.fill("[aria-label='Memory max (GiB)']", "4")
    page.check("input[type=radio][value=onDemand]")
    page.fill("[data-policy='mem.upperBoundRatio']", "80")
    page.fill("[data-policy='mem.upperBoundDuration']", "20")
    page.fill("[data-policy='cpu.step']", "100")
    page.click("[data-field=env] .add-row")
    page.fill("[aria-label='Variable name']", "GREETING")
    page.fill("[aria-label='Variable value']", "hello world")
    page.click("[data-field=allow_cidr] .add-row")
    page.fill("[aria-label='Allowed CIDR']", "300.1.2.3/8")  # refused by the API
    page.fill("[data-field=idle_timeout_s] input", "45m")

    # an API validation error is shown next to the field it names
    page.click("[data-testid=submit-job]")
    err = page.wait_for_selector("[data-field=allow_cidr].has-error .field-error")
    assert "not a CIDR range" in err.inner_text()
    shot(page, "08-submit-validation-error", full=False)
    page.fill("[aria-label='Allowed CIDR']", "203.0.113.0/24")

    command = page.inner_text("[data-testid=command]")
    assert command.startswith("outgrow submit")
    expected = parse_submit(command)
    shot(page, "09-submit-form-filled")
    page.click("[data-testid=submit-job]")
    page.wait_for_selector(".job-page")
    job_id = job_id_from(page)
    console.state["server"] = job_id
    got = console.job(job_id)["spec"]
    # The API canonicalises (policies: only non-default keys); so does JobSpec.
    assert JobSpec(**expected).model_dump() == got
    assert (
        got["migrate_policy"] == "[cpu.step=100,mem.upperBoundRatio=80,mem.upperBoundDuration=20s]"
    )
    assert got["vm_policy"] == "[onDemand=true]"
    assert got["cpu"] == "1:2" and got["mem"] == "0.5:4" and got["idle_timeout_s"] == 2700
    assert got["env"] == {"GREETING": "hello world"}
    assert got["script"] == "echo 'it''s alive' > started.txt\n# second line\n"

    # The command runs as printed (bash, the real CLI) and submits the same spec.
    outgrow = REPO / ".venv" / "bin" / "outgrow"
    if outgrow.exists():
        renamed = command.replace("-n gateway-nyc", "-n gateway-nyc-cli", 1)
        env = {
            **os.environ,
            "OUTGROW_URL": console.url,
            "OUTGROW_TOKEN": console.token,
            "PATH": f"{outgrow.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        }
        env.pop("XDG_CONFIG_HOME", None)
        r = subprocess.run(
            ["bash", "-c", renamed + "\n"], env=env, capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stderr
        cli_job = next(
            j for j in console.api.get("/api/v1/jobs").json() if j["name"] == "gateway-nyc-cli"
        )
        assert {**cli_job["spec"], "name": "gateway-nyc"} == got
        console.api.post(f"/api/v1/jobs/{cli_job['id']}/cancel")

    console.wait_job(job_id, lambda j: j["status"] == "Executing", what="Executing")
    page.wait_for_selector(".badge-slot [data-status=Executing]")
    page.click("[data-tab=connect]")
    cmd = page.inner_text("[data-testid=gateway-command]")
    assert cmd == (
        f"jupyter lab --gateway-url={console.url}/jobs/{job_id}/ --GatewayClient.auth_token=<token>"
    )
    page.click(".connect-token button")
    page.wait_for_selector(".connect-token .hint.warn")
    token = page.inner_text("[data-testid=gateway-command]").rsplit("=", 1)[1]
    assert token.startswith("og_")
    # that token opens the job's Jupyter Server through the stable URL, as a gateway would
    status = httpx.get(
        f"{console.url}/jobs/{job_id}/api/status",
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert status.status_code == 200, status.text
    shot(page, "10-job-connect", full=False)
    page.click("[data-tab=security]")
    page.wait_for_selector(".sg-table")
    assert "203.0.113.0/24" in page.inner_text(".sg-table")
    shot(page, "11-job-security-group")
    page.click("[data-tab=logs]")
    page.wait_for_selector("[data-testid=logs]")
    shot(page, "12-job-logs", full=False)


def test_python_batch_job(page: Any, console: Console) -> None:
    goto(page, console, "/library")
    page.click("[data-image=python] [data-action=start]")  # a batch job needs a script
    page.wait_for_selector("[data-testid=command]")
    assert page.input_value("select[name=image]") == "python"
    assert page.locator("[data-field=publish] input").count() == 0  # nothing to publish
    page.fill("input[name=name]", "count")
    page.click("[data-testid=submit-job]")  # without a script: refused, next to the script
    err = page.wait_for_selector("[data-field=script].has-error .field-error")
    assert "script" in err.inner_text()
    page.fill(
        "textarea[name=script]",
        "import sys\nfor i in range(3):\n    print('step', i)\nprint('done', file=sys.stderr)",
    )
    page.click("[data-testid=submit-job]")
    page.wait_for_selector(".job-page")
    job_id = job_id_from(page)
    job = console.wait_job(job_id, lambda j: j["status"] == "Completed", what="Completed")
    assert job["exit_code"] == 0 and job["actions"] == ["restart"]
    page.wait_for_selector(".badge-slot [data-status=Completed]")
    assert page.is_visible("[data-tab=logs][aria-selected=true]")  # batch jobs open on Logs
    # A selector, not wait_for_function: polling a JS string is eval, which the console's
    # Content-Security-Policy (script-src 'self') refuses.
    page.wait_for_selector("[data-testid=logs]:has-text('step 2')")
    shot(page, "12b-python-job-logs", full=False)


def test_migrate_button_and_wavewatcher_marker(page: Any, console: Console) -> None:
    job_id = console.state["lab"]
    goto(page, console, f"/jobs/{job_id}/wavewatcher")
    page.wait_for_selector(".badge-slot [data-status=Executing]")
    page.wait_for_selector(".chart-svg .line.s-used")
    assert page.locator(".marker").count() == 0
    page.click("[data-action=migrate]")
    page.wait_for_selector("dialog[open] .type-list")
    page.check("dialog[open] input[value='lc.medium']")
    assert "--instance-type lc.medium" in page.inner_text("dialog[open] .cmd-inline")
    shot(page, "13-migrate-dialog", full=False)
    page.click("dialog[open] [data-value=ok]")
    page.wait_for_selector("dialog[open]", state="detached")
    job = console.wait_job(
        job_id,
        lambda j: j["status"] == "Executing" and any(e["type"] == "migration" for e in j["events"]),
        timeout=180,
        what="migrated",
    )
    assert job["instance"]["type"] == "lc.medium" and len(job["instances"]) == 2
    page.wait_for_selector(".chart-svg .marker", timeout=30_000)
    # samples from the new instance, drawn as a line of their own
    console.wait_samples(job_id, 2, instance_id=job["instance"]["id"])
    page.locator(".chart-card").nth(0).locator(".line.s-used").nth(1).wait_for()
    page.locator(".chart-card").nth(0).locator(".marker").first.hover()
    tip = page.wait_for_selector(".chart-tip.tip-marker:not([hidden])")
    text = tip.inner_text()
    assert "manual → lc.medium" in text and "lc.small → lc.medium" in text
    assert "Downtime" in text and "Checkpoint" in text
    shot(page, "14-wavewatcher-migration")
    # the marker is reachable and pinnable from the keyboard
    page.mouse.move(0, 0)
    marker = page.locator(".chart-card").nth(1).locator(".marker").first
    marker.focus()
    page.keyboard.press("Enter")
    assert page.locator(".chart-card").nth(1).locator(".chart-tip:not([hidden])").count() == 1
    page.keyboard.press("Escape")
    # tabs move with the arrow keys
    page.focus("[data-tab=wavewatcher]")
    page.keyboard.press("ArrowRight")
    page.wait_for_selector("[data-tab=events][aria-selected=true]")
    assert page.url.endswith(f"/jobs/{job_id}/events")
    page.wait_for_selector(".timeline .ev-migration")
    shot(page, "16-job-events")
    page.click("[data-tab=instances]")
    page.wait_for_selector("[data-instance] .inst-migrated-from")
    shot(page, "17-job-instances-after-move")


def test_evade_oom_moves_the_job_and_says_why(page: Any, console: Console) -> None:
    """A notebook fills its instance: evadeOOM moves it to a bigger one; WaveWatcher shows
    the climb to the limit, the move and its reason; the kernel keeps its state."""
    from jupyter_ws import KernelSession, create_kernel

    spec = {"name": "nyc-taxi", "image": "jupyter-lab", "cpu": "1", "mem": "1"}
    r = console.api.post("/api/v1/jobs", json={**spec, "publish": ["8888:8888"]})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    console.state["oom"] = job_id
    console.wait_job(job_id, lambda j: j["status"] == "Executing", what="Executing")
    goto(page, console, f"/jobs/{job_id}/wavewatcher")
    page.wait_for_selector(".chart-svg .line.s-used")
    base = f"{console.url}/jobs/{job_id}/"  # through the stable URL, with an API token
    ks = KernelSession(base, console.token, create_kernel(base, console.token))
    try:
        assert ks.run("x = 41").error is None
        console.wait_samples(job_id, 3)  # the level before the climb
        # 1.25 GiB in 64 MiB steps into a 1 GiB instance: it reaches its limit, stalls
        # (evadeOOM) instead of being killed, and finishes on a bigger instance.
        out = ks.run(
            "import numpy as np, time\n"
            "chunks = []\n"
            "for _ in range(20):\n"
            "    chunks.append(np.ones(64 * 1024**2 // 8)); time.sleep(0.4)\n"
            "print(sum(c.nbytes for c in chunks) >> 20, 'MiB', x)",
            timeout=240,
        )
        assert out.error is None and "1280 MiB 41" in out.text, out
    finally:
        ks.close()
    job = console.wait_job(
        job_id,
        lambda j: j["status"] == "Executing" and any(e["type"] == "migration" for e in j["events"]),
        what="moved by evadeOOM",
    )
    move = next(e for e in job["events"] if e["type"] == "migration")
    assert move["reason"].startswith("evadeOOM") and move["from_type"] == "lc.small", move
    page.wait_for_selector(".chart-svg .marker.rk-oom", timeout=30_000)
    # the new instance's samples, drawn as a line of their own
    console.wait_samples(job_id, 3, instance_id=job["instance"]["id"])
    page.locator(".chart-card").nth(0).locator(".line.s-used").nth(1).wait_for()
    page.locator(".chart-card").nth(0).locator(".marker").first.hover()
    tip = page.wait_for_selector(".chart-tip.tip-marker:not([hidden])")
    assert "evadeOOM" in tip.inner_text() and move["to_type"] in tip.inner_text()
    shot(page, "15-wavewatcher-evadeoom")


def test_modify_policy(page: Any, console: Console) -> None:
    job_id = console.state["lab"]
    goto(page, console, f"/jobs/{job_id}")
    page.wait_for_selector(".badge-slot [data-status=Executing]")
    page.click("[data-action=modify]")
    page.wait_for_selector("dialog[open] .amp")
    page.fill("dialog[open] [data-policy='mem.upperBoundRatio']", "85")
    assert "mem.upperBoundRatio=85" in page.inner_text("dialog[open] .cmd-inline")
    shot(page, "18-modify-dialog", full=False)
    page.click("dialog[open] [data-value=ok]")
    page.wait_for_selector("dialog[open]", state="detached")
    assert console.job(job_id)["spec"]["migrate_policy"] == "[mem.upperBoundRatio=85]"


def test_template_save_and_submit(page: Any, console: Console) -> None:
    job_id = console.state["lab"]
    goto(page, console, f"/jobs/{job_id}")
    page.wait_for_selector(".badge-slot [data-status]")
    page.click(".menu > summary")
    page.click("[data-action=template]")
    page.wait_for_selector("dialog[open] input")
    page.fill("dialog[open] input", "lab-small")
    page.click("dialog[open] [data-value=ok]")
    page.wait_for_selector("dialog[open]", state="detached")
    template = console.api.get("/api/v1/templates/lab-small").json()
    assert template["spec"] == console.job(job_id)["spec"]

    goto(page, console, "/templates")
    page.wait_for_selector("[data-template=lab-small]")
    shot(page, "19-templates", full=False)
    page.click("[data-template=lab-small] [data-action=view]")
    page.wait_for_selector("dialog[open] .cmd")
    assert "outgrow submit" in page.inner_text("dialog[open] .cmd")
    shot(page, "20-template-view", full=False)
    page.keyboard.press("Escape")
    page.click("[data-template=lab-small] [data-action=submit]")
    page.wait_for_selector("dialog[open] input")
    page.fill("dialog[open] input", "lab-from-template")
    page.click("dialog[open] [data-value=ok]")
    page.wait_for_selector(".job-page")
    new_id = job_id_from(page)
    assert new_id != job_id
    spec = console.job(new_id)["spec"]
    assert {**spec, "name": template["spec"]["name"]} == template["spec"]
    console.state["from_template"] = new_id

    goto(page, console, "/templates")
    page.click("[data-template=lab-small] [data-action=delete]")
    page.click("dialog[open] [data-value=ok]")
    page.wait_for_selector("[data-template=lab-small]", state="detached")
    assert console.api.get("/api/v1/templates/lab-small").status_code == 404


def test_suspend_and_resume(page: Any, console: Console) -> None:
    job_id = console.state["server"]
    goto(page, console, f"/jobs/{job_id}")
    page.wait_for_selector(".badge-slot [data-status=Executing]")
    assert not page.is_visible("[data-action=resume]")
    page.click("[data-action=suspend]")
    page.wait_for_selector("dialog[open]")
    assert "outgrow suspend gateway-nyc" in page.inner_text("dialog[open]")
    page.click("dialog[open] [data-value=ok]")
    console.wait_job(job_id, lambda j: j["status"] == "Suspended", what="Suspended")
    page.wait_for_selector(".badge-slot [data-status=Suspended]")
    assert page.is_enabled("[data-action=resume]") and page.is_disabled("[data-action=migrate]")
    assert not page.is_visible("[data-action=suspend]")
    shot(page, "21-job-suspended", full=False)
    page.click("[data-action=resume]")
    page.click("dialog[open] [data-value=ok]")
    job = console.wait_job(job_id, lambda j: j["status"] == "Executing", what="resumed")
    assert [i["status"] for i in job["instances"]] == ["released", "normal"]
    page.wait_for_selector(".badge-slot [data-status=Executing]")


def test_jobs_table_bulk_cancel(page: Any, console: Console) -> None:
    ids = [console.state[k] for k in ("lab", "server", "from_template", "oom")]
    for i in ids:
        console.wait_job(i, lambda j: j["status"] == "Executing", what="Executing")
    goto(page, console, "/jobs")
    for i in ids:
        page.wait_for_selector(f"tr[data-job={i}] [data-status=Executing]")
    assert page.is_visible(f"tr[data-job={ids[0]}] a[aria-label^='Open']")
    shot(page, "22-jobs", full=False)
    page.click("[data-filter=Executing]")
    assert page.locator("tbody tr[data-job]").count() == len(ids)
    page.click("[data-filter=all]")
    # small screens: the table scrolls, the navigation becomes a bar
    page.set_viewport_size({"width": 760, "height": 900})
    shot(page, "23-jobs-narrow", full=False)
    page.set_viewport_size({"width": 1440, "height": 900})

    page.check("thead input[type=checkbox]")
    page.wait_for_selector(".bulk.shown")
    page.click(".bulk button:has-text('Cancel')")
    page.wait_for_selector("dialog[open] .bulk-list")
    shot(page, "24-bulk-cancel-confirm", full=False)
    page.click("dialog[open] [data-value=ok]")
    for i in ids:
        console.wait_job(i, lambda j: j["status"] == "Cancelled", timeout=90, what="Cancelled")
    page.wait_for_selector(f"tr[data-job={ids[0]}] [data-status=Cancelled]")

    goto(page, console, f"/jobs/{ids[0]}")
    page.wait_for_selector(".badge-slot [data-status=Cancelled]")
    job = console.job(ids[0])
    assert job["actions"] == ["restart"]
    assert page.is_disabled("[data-action=migrate]") and page.is_disabled("[data-action=suspend]")
    assert page.is_enabled("[data-action=restart]") and not page.is_visible("[data-action=cancel]")
    assert page.get_attribute("[data-action=open]", "aria-disabled") == "true"
    shot(page, "25-job-cancelled", full=False)

    # Restart: a new run of the same spec; then cancel it from its page.
    page.click("[data-action=restart]")
    page.click("dialog[open] [data-value=ok]")
    job = console.wait_job(ids[0], lambda j: j["status"] == "Executing", what="restarted")
    assert job["run"] == 2
    page.wait_for_selector(".badge-slot [data-status=Executing]")
    page.click("[data-action=cancel]")
    page.wait_for_selector("dialog[open] [data-value=cancel]:has-text('Keep running')")
    page.click("dialog[open] [data-value=ok]")
    console.wait_job(ids[0], lambda j: j["status"] == "Cancelled", timeout=90, what="Cancelled")


def test_logout(page: Any, console: Console) -> None:
    goto(page, console, "/jobs")
    page.wait_for_selector("h1.page-title:text('Jobs')")
    secret = next(c["value"] for c in page.context.cookies() if c["name"] == "outgrow_session")
    page.click("[data-testid=logout]")
    page.wait_for_selector("input[name=password]")
    assert not [c for c in page.context.cookies() if c["name"] == "outgrow_session"]
    r = httpx.get(f"{console.url}/api/v1/me", cookies={"outgrow_session": secret}, timeout=30)
    assert r.status_code == 401
