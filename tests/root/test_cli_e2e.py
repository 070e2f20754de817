"""The control plane for real, driven only through the `outgrow` command: a real
`outgrow up` subprocess (own prefix, address pool, data dir, credentials), a Jupyter job
that grows by policy in the middle of a cell and keeps its kernel state, a manual shrink,
suspend/resume, idle auto-suspend, templates, restart, cancel, tokens, images; nothing may
be left on the machine afterwards."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_pool, leftovers, unique_prefix
from jupyter_ws import KernelSession, create_kernel
from waiting import wait_for_value

pytestmark = [pytest.mark.root, pytest.mark.slow]

_CONSOLE = Path(sys.executable).parent / "outgrow"
OUTGROW = [str(_CONSOLE)] if _CONSOLE.exists() else [sys.executable, "-m", "outgrow.cli"]
POLICY = "[mem.upperBoundRatio=60,mem.upperBoundDuration=2s,mem.step=100,evadeOOM=true,cooldown=5s]"

# Grows past 60% of a 512 MiB instance and holds there (the policy moves the job to 1 GiB),
# then past 60% of 1 GiB and holds again (→ 2 GiB); the kernel never notices.
ALLOC_CELL = """
import time
chunks = []
for phase, (steps, hold) in enumerate([(6, 10), (6, 15)]):
    for _ in range(steps):
        chunks.append(b"x" * (50 * 1024 * 1024))
        time.sleep(0.3)
    time.sleep(hold)
print("allocated", 50 * len(chunks), "MiB")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Plane:
    """A running `outgrow up` and the CLI pointed at it."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.prefix = unique_prefix()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.password = "pw-" + secrets.token_hex(8)
        self.config = tmp / "config"
        self.data = tmp / "data"
        self.log_path = tmp / "server.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OUTGROW_")},
            "OUTGROW_RESOURCE_PREFIX": self.prefix,
            "OUTGROW_ADDRESS_POOL": free_pool(self.prefix),
            "OUTGROW_ADMIN_PASSWORD": self.password,
            "XDG_CONFIG_HOME": str(self.config),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""

    def start(self) -> None:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*OUTGROW, "up", "--port", str(self.port), "--data-dir", str(self.data)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        proc = self.proc

        def health() -> int:
            assert proc.poll() is None, f"outgrow up exited:\n{self.log()}"
            return httpx.get(self.url + "/api/v1/health", timeout=2).status_code

        wait_for_value(
            health,
            lambda code: code == 200,
            timeout=90,
            interval=0.3,
            what=f"outgrow up to answer at {self.url}",
            ignore=(httpx.HTTPError,),
            context=self.log,
        )
        m = re.search(r"API token: (og_\S+)", self.log())
        assert m, self.log()
        self.token = m.group(1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def run(
        self, *args: str, env: dict[str, str] | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*OUTGROW, *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=600,
            input=input,
        )

    def ok(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        r = self.run(*args, **kw)
        assert r.returncode == 0, (
            f"outgrow {' '.join(args)} → {r.returncode}\nstdout: {r.stdout}\nstderr: "
            f"{r.stderr}\n--- server log (tail) ---\n{self.log()[-4000:]}"
        )
        return r

    def json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self.ok(*args, "--json", **kw).stdout)

    def fails(self, *args: str) -> str:
        """Run a command that must fail: exit 1 and one error line; returns the message."""
        r = self.run(*args)
        assert r.returncode == 1, (args, r.returncode, r.stdout, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("outgrow: error: "), r.stderr
        assert r.stdout == ""
        return lines[0].removeprefix("outgrow: error: ")

    def wait_status(self, ref: str, status: str, timeout: float) -> dict[str, Any]:
        job: dict[str, Any] = wait_for_value(
            lambda: self.json("show", ref),
            lambda job: job["status"] == status,
            timeout=timeout,
            interval=2,
            what=f"job {ref} to be {status} (outgrow show)",
        )
        return job

    def settle(self, ref: str, quiet_s: float = 8, timeout: float = 120) -> dict[str, Any]:
        """Wait until the job is Executing and nothing happened to it for ``quiet_s``."""

        def quiet(job: dict[str, Any]) -> bool:
            last = max(e["time"] for e in job["events"])
            return job["status"] == "Executing" and time.time() - _ts(last) >= quiet_s

        job: dict[str, Any] = wait_for_value(
            lambda: self.json("show", ref),
            quiet,
            timeout=timeout,
            interval=1,
            what=f"job {ref} Executing with no event for {quiet_s:g} s",
        )
        return job


def _ts(text: str) -> float:
    from datetime import UTC, datetime

    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    p = Plane(tmp_path_factory.mktemp("cli-e2e"))
    try:
        p.start()
        yield p
    finally:
        for job in ("nb", "idler", "other"):
            p.run("cancel", job, "--wait", "--timeout", "120")
        p.stop()
        r = p.run("cleanup", "--all")
        assert r.returncode == 0, r.stderr
        left = leftovers(p.prefix)
        assert left == [], f"leaked: {left}\n{p.log()[-3000:]}"


# ---- the tests (in order; they share the control plane) -----------------------------------


def test_up_prints_and_saves_credentials(plane: Plane) -> None:
    log = plane.log()
    assert f"outgrow control plane: {plane.url}" in log
    assert f"password: {plane.password}" in log
    path = plane.config / "outgrow" / "credentials.json"
    assert f"CLI credentials written to {path}" in log
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text()) == {"url": plane.url, "token": plane.token}
    r = plane.ok("instance-types")
    assert r.stderr == f"instance types from the control plane at {plane.url}\n"
    types = plane.json("instance-types")
    assert "lc.micro" in [t["name"] for t in types]


def test_login_tokens_and_images(plane: Plane) -> None:
    other = {"XDG_CONFIG_HOME": str(plane.tmp / "config2")}
    out = plane.json("login", plane.url, "--password-stdin", env=other, input=plane.password + "\n")
    cred = Path(out["credentials"])
    assert cred == plane.tmp / "config2" / "outgrow" / "credentials.json"
    assert cred.stat().st_mode & 0o777 == 0o600
    assert plane.json("ls", env=other) == []
    r = plane.run("login", plane.url, "--password-stdin", env=other, input="wrong\n")
    assert r.returncode == 1 and r.stderr == "outgrow: error: wrong user name or password\n"

    created = plane.json("token", "create", "ci")
    assert created["token"].startswith("og_") and created["name"] == "ci"
    assert "ci" in [t["name"] for t in plane.json("token", "ls")]
    as_ci = {"OUTGROW_URL": plane.url, "OUTGROW_TOKEN": created["token"]}
    assert plane.json("ls", env=as_ci) == []
    plane.ok("token", "revoke", str(created["id"]))
    r = plane.run("ls", env=as_ci)
    assert r.returncode == 1 and r.stderr == "outgrow: error: missing or invalid API token\n"

    img = plane.json("image", "add", "og-tqdm", "--pip", "tqdm", "--base", "python")
    assert (img["name"], img["base"], img["kind"]) == ("og-tqdm", "python", "python")
    names = [i["name"] for i in plane.json("image", "ls")]
    assert {"jupyter-lab", "jupyter-server", "python", "og-tqdm"} <= set(names)
    assert "already exists" in plane.fails("image", "add", "python", "--pip", "x")
    plane.ok("image", "rm", "og-tqdm")
    assert "og-tqdm" not in [i["name"] for i in plane.json("image", "ls")]


def test_bad_requests_name_the_problem(plane: Plane) -> None:
    assert plane.fails("show", "nope") == "no job 'nope'"
    msg = plane.fails("submit", "-n", "x", "-i", "nope-image")
    assert msg == "unknown image 'nope-image'"
    msg = plane.fails("submit", "-n", "x", "-i", "python", "--migrate-policy", "[mem.stp=1]")
    assert msg == "migratePolicy: unknown key 'mem.stp' (did you mean 'mem.step'?)"
    msg = plane.fails("submit", "-n", "x", "-i", "jupyter-server", "-m", "100")
    assert "no instance type fits" in msg


def test_jupyter_job_grows_by_policy_and_keeps_its_state(plane: Plane) -> None:
    r = plane.ok(
        "submit", "-n", "nb", "-i", "jupyter-server", "-c", "0.5", "-m", "0.5",
        "--migrate-policy", POLICY, "--wait", "--json",
    )  # fmt: skip
    job = json.loads(r.stdout)
    assert job["status"] == "Executing" and job["instance"]["type"] == "lc.micro"
    assert "Executing" in r.stderr  # the spinner's status lines
    assert job["spec"]["migrate_policy"] == (
        "[mem.upperBoundRatio=60,mem.upperBoundDuration=2s,mem.step=100,cooldown=5s]"
    )
    # The job's stable URL goes through the control plane's proxy, which takes the API token.
    base = plane.json("show", "nb")["url"]
    assert base == f"{plane.url}/jobs/{job['id']}/" == job["url"]
    kid = create_kernel(base, plane.token)
    ks = KernelSession(base, plane.token, kid)
    try:
        assert ks.run("x = 41\nprint(x)").text == "41\n"
        out = ks.run(ALLOC_CELL, timeout=300)
        assert out.error is None, out.error
        assert "allocated 600 MiB" in out.text
        assert ks.run("print(x)").text == "41\n"
        assert ks.run("del chunks\nimport gc\ngc.collect()\nprint('freed')").text == "freed\n"
    finally:
        ks.close()

    job = plane.settle("nb")
    moves = [e for e in job["events"] if e["type"] == "migration"]
    assert moves, job["events"]
    by_policy = [e for e in moves if re.search(r"^mem \d+% ≥ 60% for 2 s → ", e["reason"])]
    assert by_policy, [e["reason"] for e in moves]
    first = moves[0]
    assert first["from_type"] == "lc.micro" and first["to_type"] == "lc.small"
    assert first["downtime_s"] > 0 and first["checkpoint_bytes"] > 0
    states = [e["to_state"] for e in job["events"] if e["type"] == "state"]
    i = states.index("Floating")
    assert states[i + 1] == "Executing", states
    assert job["instances"][0]["type"] == "lc.micro"
    assert job["instances"][0]["status"] == "migrated-from"
    assert job["instance"]["memory_gib"] == 2, job["instance"]  # grown twice: 0.5 → 1 → 2

    # A manual shrink back to 1 GiB, waiting for it.
    r = plane.ok("migrate", "nb", "--mem", "1", "--mode", "plain", "--wait", "--json")
    moved = json.loads(r.stdout)
    assert moved["status"] == "Executing" and moved["instance"]["type"] == "lc.small"
    assert moved["mode"] == "plain"
    ev = moved["migration"]
    assert (ev["from_type"], ev["to_type"]) == ("lc.medium", "lc.small")
    assert (
        ev["reason"].startswith("manual") and ev["data"]["mode_reason"] == "plain: moveMode=plain"
    )
    # The same job moved post-copy: its memory follows the restored kernel.
    r = plane.ok("migrate", "nb", "--instance-type", "lc.medium", "--mode", "postcopy", "--wait")
    assert re.match(
        r"job nb moved lc.small → lc.medium: downtime \d+\.\d\d s \(post-copy\), checkpoint ",
        r.stdout,
    ), r.stdout
    ks = KernelSession(base, plane.token, kid)
    try:
        assert ks.run("print(x)").text == "41\n"
    finally:
        ks.close()
    assert plane.fails("migrate", "nb", "--instance-type", "lc.medium") == (
        "job nb already runs on lc.medium"
    )

    # Suspend and resume: the kernel keeps its variables.
    assert plane.json("suspend", "nb", "--wait")["status"] == "Suspended"
    assert plane.json("show", "nb")["instance"] is None
    job = plane.json("resume", "nb", "--wait")
    assert job["status"] == "Executing" and job["instance"]["type"] == "lc.medium"
    assert job["url"] == base  # stable across moves and suspends
    ks = KernelSession(base, plane.token, kid)
    try:
        assert ks.run("print(x)").text == "41\n"
    finally:
        ks.close()


def test_idle_jupyter_job_suspends_itself(plane: Plane) -> None:
    job = plane.json(
        "submit", "-n", "idler", "-i", "jupyter-server", "-c", "0.5", "-m", "0.5",
        "--idle-timeout", "20s",
        "--wait",
    )  # fmt: skip
    assert job["status"] == "Executing" and job["spec"]["idle_timeout_s"] == 20
    job = plane.wait_status("idler", "Suspended", timeout=120)
    reasons = [e["reason"] for e in job["events"] if e["type"] == "state"]
    assert any("idle" in r for r in reasons), reasons


def test_templates_restart_and_cancel(plane: Plane) -> None:
    t = plane.json("template", "save", "nb", "tpl")
    assert t["name"] == "tpl" and t["spec"]["image"] == "jupyter-server"
    assert "tpl" in [x["name"] for x in plane.json("template", "ls")]
    assert plane.json("template", "show", "tpl")["spec"]["migrate_policy"].startswith(
        "[mem.upperBoundRatio=60"
    )
    job = plane.json("submit", "--template", "tpl", "-n", "other", "--wait")
    assert (job["name"], job["status"], job["run"]) == ("other", "Executing", 1)
    assert job["spec"]["migrate_policy"] == t["spec"]["migrate_policy"]
    assert plane.json("cancel", "other", "--wait")["status"] == "Cancelled"
    assert "cannot suspend a job that is Cancelled" in plane.fails("suspend", "other")
    job = plane.json("restart", "other", "--wait")
    assert (job["status"], job["run"]) == ("Executing", 2)
    assert plane.json("cancel", "other", "--wait")["status"] == "Cancelled"
    plane.ok("template", "rm", "tpl")
    assert plane.fails("template", "show", "tpl") == "no template 'tpl'"


def test_ls_show_log(plane: Plane) -> None:
    jobs = {j["name"]: j for j in plane.json("ls")}
    assert {"nb", "idler", "other"} <= set(jobs)
    assert (jobs["nb"]["status"], jobs["idler"]["status"]) == ("Executing", "Suspended")
    running = plane.json("ls", "--status", "Executing")
    assert [j["name"] for j in running] == ["nb"]
    table = plane.ok("ls").stdout
    row = next(ln for ln in table.splitlines() if ln.startswith("nb "))
    assert jobs["nb"]["id"] in row and "Executing" in row and "lc.medium" in row
    human = plane.ok("show", "nb").stdout
    assert "migrate policy" in human and "instances" in human and "events" in human
    assert "lc.micro → lc.small" in human
    logs = plane.ok("log", "nb").stdout + plane.ok("log", "nb", "--stderr").stdout
    assert "Jupyter Server" in logs or "jupyter" in logs.lower(), logs[-2000:]
    chunk = plane.json("log", "nb", "--stderr")
    assert chunk["stream"] == "stderr" and chunk["offset"] == chunk["size"]
    assert plane.json("cancel", "nb", "--wait")["status"] == "Cancelled"
    assert plane.json("cancel", "idler", "--wait")["status"] == "Cancelled"
    # Follow a finished job's log: prints what there is and returns.
    assert (
        plane.ok("log", "-f", "nb", "--stderr").stdout == plane.ok("log", "nb", "--stderr").stdout
    )
