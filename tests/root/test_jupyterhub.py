"""JupyterHub on outgrow, for real: ``outgrow up``, configurable-http-proxy and a
JupyterHub process whose spawner is ``outgrow`` (tests/hub_stack.py), users who log in
with a browser-like HTTP client (cookies, XSRF, the hub's OAuth) and, once, with
Chromium.

alice: logs in, starts her server (the spawn's progress events), runs ``x = 41`` over the
kernel websocket through the hub's URL; her job is moved while a client polls her server
(the downtime it sees is measured); ``x`` is read back through the same websocket; bob is
refused her server; a hub restart keeps her server (same job, no second one); stopping it
ends the job. carol does the same in Chromium, in JupyterLab's own UI.
"""

from __future__ import annotations

import itertools
import json
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub_stack import CHP, HUB_ACCOUNT, PASSWORD, HubStack, hub_stack, sse_events
from jupyter_ws import KernelSession, create_kernel
from outgrow.client import APINotFoundError, Client
from waiting import holds_for, wait_for_value, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "jupyterhub"
ENDED = {"Completed", "Cancelled", "FailToComplete", "FailToExecute"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubStack]:
    if not CHP.exists():
        pytest.skip(f"{CHP} is not installed: run `make setup` (scripts/install-chp.sh)")
    with hub_stack(tmp_path_factory.mktemp("hub")) as s:
        yield s


class HubUser:
    """A browser-like client of the hub: a cookie jar, XSRF headers, redirects followed."""

    def __init__(self, stack: HubStack, name: str):
        self.stack = stack
        self.name = name
        self.http = httpx.Client(base_url=stack.hub_url, follow_redirects=True, timeout=60)

    @property
    def prefix(self) -> str:
        return f"/user/{self.name}/"

    def server_path(self, server: str = "") -> str:
        return (
            f"/users/{self.name}/server" if not server else f"/users/{self.name}/servers/{server}"
        )

    def xsrf(self, path: str) -> str:
        for c in self.http.cookies.jar:
            if c.name == "_xsrf" and c.path.rstrip("/") == path.rstrip("/"):
                return str(c.value)
        raise AssertionError(f"no _xsrf cookie for {path}: {list(self.http.cookies.jar)}")

    def cookie_header(self, path: str) -> str:
        return "; ".join(
            f"{c.name}={c.value}" for c in self.http.cookies.jar if path.startswith(c.path)
        )

    def login(self) -> None:
        self.http.get("/hub/login").raise_for_status()
        r = self.http.post(
            "/hub/login",
            data={"username": self.name, "password": PASSWORD, "_xsrf": self.xsrf("/hub/")},
        )
        assert r.status_code == 200 and "/hub/login" not in str(r.url), r.text[:500]

    def hub_api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"X-XSRFToken": self.xsrf("/hub/")}
        return self.http.request(method, "/hub/api" + path, headers=headers, **kw)

    def start_server(
        self, options: dict[str, Any] | None = None, server: str = ""
    ) -> list[dict[str, Any]]:
        """Start the (default or named) server and follow its progress events to the end."""
        r = self.hub_api("POST", self.server_path(server), json=options or {})
        assert r.status_code in (201, 202), r.text
        events: list[dict[str, Any]] = []
        headers = {"X-XSRFToken": self.xsrf("/hub/"), "Accept": "text/event-stream"}
        url = f"/hub/api{self.server_path(server)}/progress"
        with self.http.stream("GET", url, headers=headers, timeout=900) as stream:
            for ev in sse_events(stream):
                events.append(ev)
                if ev.get("ready") or ev.get("failed"):
                    break
        assert events and events[-1].get("ready"), events
        return events

    def open(self, server: str = "") -> httpx.Response:
        """The server's page: the hub's OAuth on the first visit (cookies follow)."""
        page = self.prefix + (f"{server}/" if server else "") + "lab"
        r = self.http.get(page)
        assert r.status_code == 200 and str(r.url).endswith(page), r.url
        return r

    def kernel(self) -> KernelSession:
        kid = create_kernel(self.stack.hub_url + self.prefix, self.xsrf(self.prefix), self.http)
        headers = {"Cookie": self.cookie_header(self.prefix), "Origin": self.stack.hub_url}
        return KernelSession(self.stack.hub_url + self.prefix, "", kid, headers=headers)


@dataclass
class Alice:
    user: HubUser
    job_id: str = ""
    kernel: KernelSession | None = None
    progress: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
def alice(stack: HubStack) -> Iterator[Alice]:
    a = Alice(HubUser(stack, "alice"))
    yield a
    if a.kernel is not None:
        a.kernel.close()


def hub_jobs(stack: HubStack) -> list[dict[str, Any]]:
    with stack.outgrow_api(stack.hub_token) as api:
        jobs: list[dict[str, Any]] = api.get("/jobs").json()
        return jobs


def test_outgrow_side_rules(stack: HubStack) -> None:
    """Who may create a hub job, with which prefix; what the pass-through serves."""
    spec = {
        "name": "not-a-hub",
        "image": "jupyterhub-singleuser",
        "hub_prefix": "/user/mallory/",
        "env": {"JUPYTERHUB_API_TOKEN": "x" * 32},
    }
    with stack.outgrow_api() as admin:  # admin is not the hub's account
        r = admin.post("/jobs", json=spec)
        assert r.status_code == 401 and "OUTGROW_JUPYTERHUB_USERS" in r.json()["message"]
    with stack.outgrow_api(stack.hub_token) as hub:
        for bad, field_ in (
            ({**spec, "hub_prefix": "/jobs/x/"}, "hub_prefix"),  # not under /user/
            ({**spec, "hub_prefix": "/user/a/b/c/"}, "hub_prefix"),  # too deep
            ({**spec, "image": "jupyter-lab"}, "image"),  # a prefix needs the hub kind
            ({**spec, "hub_prefix": None}, "hub_prefix"),  # the hub kind needs a prefix
            ({**spec, "env": {}}, "env"),  # no hub token
        ):
            r = hub.post("/jobs", json=bad)
            assert r.status_code == 422 and r.json()["field"] == field_, (bad, r.text)
    # unknown prefixes are 404, and nothing but hub jobs is reachable under /user/
    for path in ("/user/nobody/", "/user/nobody/api/status", "/user/"):
        r = httpx.get(stack.outgrow_url + path, timeout=10)
        assert r.status_code == 404, (path, r.status_code)


def test_login_and_spawn_with_progress(stack: HubStack, alice: Alice) -> None:
    alice.user.login()
    alice.progress = alice.user.start_server()
    messages = [e.get("message", "") for e in alice.progress]
    # the job's states and the image's preparation, in order, then the hub's own "ready"
    want = ["Submitted", "Initializing", "preparing image", "Starting: instance", "ready"]
    seen = [next(i for i, m in enumerate(messages) if w in m) for w in want]
    assert seen == sorted(seen), messages
    pct = [e["progress"] for e in alice.progress if "progress" in e]
    assert pct == sorted(pct), pct
    jobs = [j for j in hub_jobs(stack) if j["status"] not in ENDED]
    assert len(jobs) == 1 and jobs[0]["name"].startswith("hub-alice-"), jobs
    job = jobs[0]
    alice.job_id = job["id"]
    assert job["spec"]["hub_prefix"] == "/user/alice/"
    assert job["spec"]["mem"] == "1:2" and job["spec"]["cpu"] == "1:2"
    assert job["spec"]["env"]["JUPYTERHUB_API_TOKEN"] == "***"  # never shown
    assert job["url"] is None  # reached through the hub only
    # its security group lets outgrow's proxy (the bridge address) in, as for any job
    proxy_in = [r for r in job["security_group"] if "stable-URL proxy" in r["why"]]
    assert proxy_in and proxy_in[0]["from"] == f"{stack.gateway}/32", job["security_group"]
    # the job's own stable URL is not a way around the hub's auth
    with stack.outgrow_api(stack.hub_token) as hub:
        r = hub.get(f"{stack.outgrow_url}/jobs/{alice.job_id}/api/status")
        assert r.status_code == 404, r.text


def test_run_a_cell_through_the_hub(stack: HubStack, alice: Alice) -> None:
    page = alice.user.open()
    assert "jupyter" in page.text.lower()
    status = alice.user.http.get(alice.user.prefix + "api/status")
    assert status.status_code == 200 and "kernels" in status.json()
    alice.kernel = alice.user.kernel()
    out = alice.kernel.run("x = 41; import os; os.getpid()", timeout=120)
    assert out.error is None, out


def test_another_user_is_refused(stack: HubStack, alice: Alice) -> None:
    bob = HubUser(stack, "bob")
    bob.login()
    r = bob.http.get(alice.user.prefix + "api/kernels")
    assert r.status_code == 403, (r.status_code, r.url, r.text[:300])
    assert "kernels" not in r.text or alice.user.name not in str(r.url)
    # nor without any credentials: the hub's login, not alice's kernels
    r = httpx.get(stack.hub_url + alice.user.prefix + "api/kernels", timeout=30)
    assert r.status_code in (302, 403), r.status_code


@dataclass
class Poll:
    start: float
    end: float
    status: int
    wall: float  # time.time() at the start


def poll_server(user: HubUser, url: str, stop: threading.Event, out: list[Poll]) -> None:
    """A browser-like client asking the server every 50 ms (its cookies, the hub's URL)."""
    with httpx.Client(base_url=user.stack.hub_url, cookies=user.http.cookies, timeout=150) as c:
        while not stop.is_set():
            t0, wall = time.monotonic(), time.time()
            try:
                status = c.get(url).status_code
            except httpx.HTTPError:
                status = 0
            out.append(Poll(t0, time.monotonic(), status, wall))
            stop.wait(0.05)  # the sleep is what is tested: a browser's 50 ms cadence


def test_the_server_moves_and_the_notebook_goes_on(stack: HubStack, alice: Alice) -> None:
    assert alice.kernel is not None
    with Client(stack.outgrow_url, stack.admin_token) as og:
        before = og.job(alice.job_id)
        assert before.status == "Executing" and before.instance is not None
        polls: list[Poll] = []
        stop = threading.Event()
        url = f"{alice.user.prefix}api/kernels/{alice.kernel.kernel_id}"
        poller = threading.Thread(target=poll_server, args=(alice.user, url, stop, polls))
        poller.start()
        try:
            wait_until(lambda: len(polls) >= 5, timeout=30, what="the poller to get going")
            og.migrate(alice.job_id, mem=2)
            after = wait_for_value(
                lambda: og.job(alice.job_id),
                lambda j: (
                    j.status == "Executing"
                    and j.instance is not None
                    and j.instance.id != before.instance.id
                ),
                timeout=180,
                interval=0.2,
                what="alice's job to run on a new instance",
                context=stack.logs,
            )
            moved_at = time.monotonic()
            wait_until(
                lambda: any(p.start > moved_at for p in polls),
                timeout=60,
                what="a poll after the move",
            )
        finally:
            stop.set()
            poller.join(60)
        move = next(e for e in after.events if e.type == "migration")
    assert after.instance is not None and after.instance.memory_gib == 2
    failed = [p for p in polls if p.status != 200]
    assert failed == [], failed[:5]
    longest = max(p.end - p.start for p in polls)
    gaps = [b.end - a.end for a, b in itertools.pairwise(polls)]
    report = {
        "polls": len(polls),
        "longest_request_s": round(longest, 3),
        "longest_gap_between_answers_s": round(max(gaps), 3),
        "median_request_s": round(statistics.median(p.end - p.start for p in polls), 4),
        "outgrow_downtime_s": move.downtime_s,
        "checkpoint_bytes": move.checkpoint_bytes,
        "move": move.data,
        # wall-clock seconds: each poll (start, duration) and the job's state changes
        "polls_at": [[round(p.wall, 3), round(p.end - p.start, 3)] for p in polls],
        "states_at": [
            [round(e.time.timestamp(), 3), e.to_state]
            for e in after.events
            if e.type == "state" and e.time.timestamp() >= polls[0].wall
        ],
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "downtime.json").write_text(json.dumps(report, indent=2) + "\n")
    print("downtime through the hub URL:", report)
    # The same kernel, over the same websocket: its state came along.
    out = alice.kernel.run("print(x + 1)", timeout=120)
    assert out.error is None and out.text.strip() == "42", out


def test_a_hub_restart_keeps_the_server(stack: HubStack, alice: Alice) -> None:
    assert alice.kernel is not None
    stack.stop_hub()
    stack.start_hub()
    with stack.hub_api() as api:
        user = wait_for_value(
            lambda: api.get("/users/alice").json(),
            lambda u: u["servers"].get("", {}).get("ready"),
            timeout=60,
            what="the hub to see alice's server again",
            context=stack.logs,
        )
    assert user["servers"][""]["url"] == "/user/alice/"
    live = [j for j in hub_jobs(stack) if j["status"] not in ENDED]
    assert [j["id"] for j in live] == [alice.job_id]  # the same job, no second one
    out = alice.kernel.run("print(x)", timeout=120)
    assert out.error is None and out.text.strip() == "41", out
    assert alice.user.http.get(alice.user.prefix + "api/status").status_code == 200


def test_stopping_the_server_ends_the_job(stack: HubStack, alice: Alice) -> None:
    r = alice.user.hub_api("DELETE", "/users/alice/server")
    assert r.status_code in (202, 204), r.text
    with stack.hub_api() as api:
        wait_for_value(
            lambda: api.get("/users/alice").json()["servers"],
            lambda servers: "" not in servers,
            timeout=120,
            what="the hub to see alice's server stopped",
            context=stack.logs,
        )
    with Client(stack.outgrow_url, stack.hub_token) as og:
        assert og.job(alice.job_id).status == "Cancelled"
    r = httpx.get(stack.outgrow_url + "/user/alice/api/status", timeout=10)
    assert r.status_code == 404
    assert HUB_ACCOUNT  # the jobs were the hub account's all along


def test_starting_again_makes_a_new_job_under_the_same_name(stack: HubStack, alice: Alice) -> None:
    with Client(stack.outgrow_url, stack.hub_token) as og:
        old = og.job(alice.job_id)
        alice.user.start_server()
        live = [j for j in og.jobs() if j.status not in ENDED]
        assert len(live) == 1 and live[0].name == old.name and live[0].id != old.id
        with pytest.raises(APINotFoundError):
            og.job(old.id)  # the ended one was deleted to free its name
        alice.kernel = None  # that kernel is gone with its server
        assert alice.user.hub_api("DELETE", "/users/alice/server").status_code in (202, 204)
        wait_for_value(
            lambda: og.job(live[0].id).status,
            lambda s: s in ENDED,
            timeout=120,
            what="alice's second job to end",
        )


def hub_says_ready(stack: HubStack, name: str) -> bool:
    with stack.hub_api() as api:
        server = api.get(f"/users/{name}").json()["servers"].get("", {})
        return bool(server.get("ready"))


def test_an_idle_server_is_suspended_and_its_url_resumes_it(stack: HubStack) -> None:
    dave = HubUser(stack, "dave")
    dave.login()
    r = dave.hub_api("POST", "/users/dave/server", json={"profile": "nope"})
    assert r.status_code == 400 and "unknown profile" in r.text, r.text
    dave.start_server({"profile": "sleepy"})
    job = next(j for j in hub_jobs(stack) if j["spec"].get("hub_prefix") == "/user/dave/")
    assert job["spec"]["mem"] == "1:3" and job["spec"]["idle_timeout_s"] == 10  # the profile
    dave.open()
    with Client(stack.outgrow_url, stack.hub_token) as og:
        wait_for_value(
            lambda: og.job(job["id"]).status,
            lambda s: s == "Suspended",
            timeout=180,
            interval=0.5,
            what="dave's idle server to be suspended by outgrow",
            context=stack.logs,
        )
        assert og.job(job["id"]).instance is None  # no instance, no cost
        # The hub polls every 2 s meanwhile: to it, the server still runs.
        holds_for(lambda: hub_says_ready(stack, "dave"), duration=6, what="the hub's 'ready'")
        t0 = time.monotonic()
        r = dave.http.get(dave.prefix + "api/status")
        resumed_in = time.monotonic() - t0
        assert r.status_code == 200, r.text
        assert og.job(job["id"]).status == "Executing"
    print(f"a request through the hub URL resumed the suspended server in {resumed_in:.2f} s")
    assert dave.hub_api("DELETE", "/users/dave/server").status_code in (202, 204)


def test_named_servers_have_their_own_jobs_and_routes(stack: HubStack) -> None:
    """/user/dave/ and /user/dave/gpu/ at once: two jobs, each prefix to its own."""
    dave = HubUser(stack, "dave")
    dave.login()
    dave.start_server({"profile": "small"})  # the same spawner as "sleepy" above
    dave.start_server({"profile": "small"}, server="gpu")
    live = {
        j["spec"]["hub_prefix"]: j
        for j in hub_jobs(stack)
        if j["status"] not in ENDED and j["spec"]["hub_prefix"].startswith("/user/dave/")
    }
    assert set(live) == {"/user/dave/", "/user/dave/gpu/"}, live
    assert live["/user/dave/gpu/"]["name"].startswith("hub-dave-gpu-")
    assert live["/user/dave/"]["name"] != live["/user/dave/gpu/"]["name"]
    # the "sleepy" profile of the previous start did not stick to the spawner
    assert live["/user/dave/"]["spec"]["mem"] == "1:2"
    assert live["/user/dave/"]["spec"]["idle_timeout_s"] == 7200  # outgrow's default
    dave.open()
    dave.open("gpu")
    kid = create_kernel(stack.hub_url + "/user/dave/gpu/", dave.xsrf("/user/dave/gpu/"), dave.http)
    on_gpu = dave.http.get("/user/dave/gpu/api/kernels").json()
    on_default = dave.http.get("/user/dave/api/kernels").json()
    assert kid in [k["id"] for k in on_gpu] and kid not in [k["id"] for k in on_default]
    for server in ("", "gpu"):
        assert dave.hub_api("DELETE", dave.server_path(server)).status_code in (202, 204)


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"]


def shot(pg: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def run_cell(pg: Any, code: str) -> None:
    """Type ``code`` into the notebook's last (empty) cell and run it."""
    editor = pg.locator(".jp-Notebook .jp-Cell").last.locator(".cm-content")
    editor.click()
    pg.keyboard.type(code)
    wait_until(
        lambda: editor.inner_text().strip() == code,
        timeout=30,
        what=f"the cell to hold {code!r}",
    )
    pg.keyboard.press("Shift+Enter")


def test_a_browser_works_in_jupyterlab_across_a_move(stack: HubStack) -> None:
    """carol, in Chromium: the hub's login page, the spawn form and its progress page,
    JupyterLab at the hub's URL, a notebook cell before and after her server moves."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (make setup installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.set_default_timeout(120_000)
            pg = context.new_page()
            errors: list[str] = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            try:
                browse(stack, pg, errors)
            except Exception:
                shot(pg, "failure")
                raise
            context.close()
        finally:
            browser.close()
    with stack.hub_api() as api:
        assert api.delete("/users/carol/server").status_code in (202, 204)


def browse(stack: HubStack, pg: Any, errors: list[str]) -> None:
    pg.goto(stack.hub_url + "/hub/login")
    pg.fill("#username_input", "carol")
    pg.fill("#password_input", PASSWORD)
    shot(pg, "1-login")
    pg.click("#login_submit")
    # The spawn form: the admin's profiles, the default one chosen.
    pg.wait_for_selector("input[name=profile][value=small]:checked")
    shot(pg, "2-spawn-form")
    pg.click("#spawn_form input[type=submit], #spawn_form button[type=submit]")
    # The hub's progress page lists the job's states as they come.
    pg.wait_for_url("**/hub/spawn-pending/carol**")
    pg.click("#progress-details summary")  # open the event log
    pg.locator(".progress-log-event", has_text="Initializing").wait_for()
    shot(pg, "3-spawn-progress")
    pg.wait_for_url("**/user/carol/lab**", timeout=600_000)
    pg.wait_for_selector(".jp-LauncherCard[data-category=Notebook]")
    shot(pg, "4-jupyterlab")
    pg.click(".jp-LauncherCard[data-category=Notebook]")
    # the new notebook's kernel is up (status bar: "Python 3 (ipykernel) | Idle")
    pg.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for()
    run_cell(pg, "x = 41; x")
    outputs = pg.locator(".jp-Notebook .jp-OutputArea-output")
    outputs.first.wait_for()
    assert outputs.first.inner_text().strip() == "41"
    shot(pg, "5-cell-before-the-move")

    with Client(stack.outgrow_url, stack.admin_token) as og:
        job = next(j for j in og.jobs("Executing") if j.spec.hub_prefix == "/user/carol/")
        assert job.instance is not None
        og.migrate(job.id, mem=2)
        wait_for_value(
            lambda: og.job(job.id),
            lambda j: (
                j.status == "Executing"
                and j.instance is not None
                and j.instance.id != job.instance.id
            ),
            timeout=180,
            interval=0.5,
            what="carol's server to run on a new instance",
        )
    # The same page and kernel: no reload, the variable is still there.
    run_cell(pg, "x + 1")
    wait_until(
        lambda: outputs.count() >= 2 and outputs.nth(1).inner_text().strip() == "42",
        timeout=120,
        what="the cell after the move to print 42",
    )
    shot(pg, "6-cell-after-the-move")
    assert not errors, errors
