"""Security checks of the reliability issue, for real: who reaches an agent's API, a job
reaching another job, tokens in logs, the session cookie's flags, path traversal in what
users send. (docs/security.md: the model; docs/reliability.md: where these run.)"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_pool, unique_prefix
from cp_server import Server, ServerProcess, control_plane, free_port
from jupyter_ws import KernelSession, create_kernel
from waiting import wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

AGENT_PORT = 7070
JUPYTER_PORT = 8888

# Run inside job A: connect to job B's instance on the agent and Jupyter ports.
REACH = """
import errno, json, socket
out = {{}}
for port in ({agent}, {jupyter}):
    try:
        socket.create_connection(({address!r}, port), timeout=3).close()
        out[port] = "ALLOWED"
    except OSError as exc:
        out[port] = errno.errorcode.get(exc.errno, "timeout") if exc.errno else "timeout"
print("REACH " + json.dumps(out), flush=True)
import time
while True:
    time.sleep(1)
"""


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with control_plane(tmp_path_factory.mktemp("sec")) as server:
        yield server


def _instance(cp: Server, job: str) -> Any:
    iid = cp.job(job)["instance"]["id"]
    inst = cp.provider.describe_instance(iid)
    assert inst is not None
    return inst


def test_a_job_cannot_reach_another_jobs_agent_or_jupyter(cp: Server) -> None:
    b = cp.post("/jobs", {"name": "sec-b", "image": "jupyter-server", "mem": "0.5"}).json()["id"]
    cp.wait(b, {"Executing"})
    target = _instance(cp, b)
    script = REACH.format(agent=AGENT_PORT, jupyter=JUPYTER_PORT, address=target.address)
    a = cp.post(
        "/jobs", {"name": "sec-a", "image": "python", "script": script, "mem": "0.25"}
    ).json()["id"]
    cp.wait(a, {"Executing"})
    try:
        line = wait_until(
            lambda: next(
                (
                    ln
                    for ln in cp.get(f"/jobs/{a}/logs").json()["data"].splitlines()
                    if "REACH" in ln
                ),
                None,
            ),
            timeout=60,
            what="job A's connection attempts to job B's ports",
        )
        out = json.loads(line.split(" ", 1)[1])
        # The control plane (the bridge's gateway) reaches both: the ports are open.
        assert httpx.get(f"{target.agent_url}/v1/health", timeout=5).status_code == 200
        assert out == {str(AGENT_PORT): "ECONNREFUSED", str(JUPYTER_PORT): out[str(JUPYTER_PORT)]}
        assert out[str(JUPYTER_PORT)] in ("ECONNREFUSED", "timeout", "ETIMEDOUT"), out
    finally:
        for j in (a, b):
            cp.post(f"/jobs/{j}/cancel")
            cp.wait(j, {"Cancelled"})


def _foreign_netns(cp: Server, name: str, address: str) -> None:
    """A namespace of this test's own on the control plane's bridge, not an instance."""
    ns, host_end = f"{cp.prefix}{name}", f"{cp.prefix}{name}h"
    bridge = f"{cp.prefix}-br0"
    prefixlen = cp.plane.settings.address_pool.split("/")[1]
    for cmd in (
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns],
        ["ip", "link", "set", host_end, "master", bridge, "up"],
        ["ip", "-n", ns, "addr", "add", f"{address}/{prefixlen}", "dev", "eth0"],
        ["ip", "-n", ns, "link", "set", "eth0", "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
    ):
        subprocess.run(cmd, check=True, capture_output=True)


def _drop_netns(cp: Server, name: str) -> None:
    subprocess.run(["ip", "link", "del", f"{cp.prefix}{name}h"], capture_output=True)
    subprocess.run(["ip", "netns", "del", f"{cp.prefix}{name}"], capture_output=True)


def _connect_from(cp: Server, name: str, address: str, port: int) -> str:
    code = (
        "import errno, socket\n"
        "try:\n"
        f"    socket.create_connection(({address!r}, {port}), timeout=3).close()\n"
        "    print('ALLOWED')\n"
        "except OSError as e:\n"
        "    print(errno.errorcode.get(e.errno, 'timeout') if e.errno else 'timeout')\n"
    )
    r = subprocess.run(
        ["ip", "netns", "exec", f"{cp.prefix}{name}", "python3", "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.stdout.strip() or r.stderr.strip()


def test_the_agent_api_from_a_namespace_that_is_not_an_instance(cp: Server) -> None:
    """A namespace on the bridge that is no instance: with an address outside the pool
    its packets are dropped; with a (free) pool address it gets a TCP connection — the
    firewall admits the whole pool, as peer agents need — but the agent answers nothing
    without the instance's own token (401) but its liveness check."""
    job = cp.post(
        "/jobs",
        {
            "name": "sec-ag",
            "image": "python",
            "script": "import time\nwhile True: time.sleep(1)\n",
            "mem": "0.25",
        },
    ).json()["id"]
    cp.wait(job, {"Executing"})
    inst = _instance(cp, job)
    try:
        # an address of the bridge's subnet no instance got (the pool hands out from the bottom)
        net = cp.plane.settings.address_pool.rsplit(".", 1)[0]
        _foreign_netns(cp, "fx", f"{net}.250")
        assert _connect_from(cp, "fx", inst.address, AGENT_PORT) == "ALLOWED"
        probe = (
            "import urllib.request, urllib.error\n"
            "for path in ('/v1/health', '/v1/job', '/v1/metrics'):\n"
            "    try:\n"
            f"        urllib.request.urlopen('{inst.agent_url}' + path, timeout=5)\n"
            "        print(path, 200)\n"
            "    except urllib.error.HTTPError as e:\n"
            "        print(path, e.code)\n"
        )
        r = subprocess.run(
            ["ip", "netns", "exec", f"{cp.prefix}fx", "python3", "-c", probe],
            capture_output=True,
            text=True,
            timeout=30,
        )
        # the unauthenticated liveness check (ids and versions only) answers; nothing else
        assert r.stdout.split() == ["/v1/health", "200", "/v1/job", "401", "/v1/metrics", "401"], r
        _drop_netns(cp, "fx")
        # an address outside the pool, on the same bridge: dropped by the instance's firewall
        _foreign_netns(cp, "fy", "192.0.2.77")
        subprocess.run(
            [
                "ip",
                "-n",
                f"{cp.prefix}fy",
                "route",
                "add",
                cp.plane.settings.address_pool,
                "dev",
                "eth0",
            ],
            check=True,
        )
        assert _connect_from(cp, "fy", inst.address, AGENT_PORT) == "timeout"
    finally:
        _drop_netns(cp, "fx")
        _drop_netns(cp, "fy")
        cp.post(f"/jobs/{job}/cancel")
        cp.wait(job, {"Cancelled"})


CLIENT_LOGGERS = ("websockets.client", "httpx", "httpcore")


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(threadName)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # The test's own clients (httpx, the kernel client's websockets, in the main
        # thread) send the admin token; what they log is not the product's.
        if record.threadName == "MainThread" and record.name.startswith(CLIENT_LOGGERS):
            return
        self.lines.append(self.format(record))


def test_tokens_are_never_logged(tmp_path: Path) -> None:
    """A whole job lifecycle (a notebook: start, a cell, a move, suspend, resume, cancel)
    with every logger at DEBUG: no admin token, agent token or Jupyter token in what was
    logged, nor in any log file of the data dir."""
    cap = _Capture()
    root = logging.getLogger()
    old = root.level
    root.addHandler(cap)
    root.setLevel(logging.DEBUG)
    secrets: dict[str, str] = {}
    try:
        with control_plane(tmp_path) as cp:
            secrets["admin token"] = cp.token
            job = cp.post("/jobs", {"name": "tok", "image": "jupyter-server", "mem": "0.5"})
            ref = job.json()["id"]
            j = cp.wait(ref, {"Executing"})
            secrets["jupyter token"] = cp.plane.store.get_job(ref).jupyter_token  # type: ignore[union-attr]
            secrets["agent token 1"] = _instance(cp, ref).agent_token
            kid = create_kernel(j["url"], cp.token)
            ks = KernelSession(j["url"], cp.token, kid)
            assert ks.run("21 * 2").result == "42"
            ks.close()
            assert cp.post(f"/jobs/{ref}/migrate", {"mem": 1}).status_code == 202
            cp.wait(ref, {"Floating"}, timeout=30)
            cp.wait(ref, {"Executing"})
            secrets["agent token 2"] = _instance(cp, ref).agent_token
            assert cp.post(f"/jobs/{ref}/suspend").status_code == 202
            cp.wait(ref, {"Suspended"})
            assert cp.post(f"/jobs/{ref}/resume").status_code == 202
            cp.wait(ref, {"Executing"})
            secrets["agent token 3"] = _instance(cp, ref).agent_token
            cp.post(f"/jobs/{ref}/cancel")
            cp.wait(ref, {"Cancelled"})
    finally:
        root.removeHandler(cap)
        root.setLevel(old)
    assert all(len(s) >= 16 for s in secrets.values()), secrets.keys()
    assert len(cap.lines) > 20, "the capture saw almost nothing: is DEBUG logging on?"
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".log"]
    assert any(p.name == "agent.log" for p in files) or files, "no log files to check"
    texts = {"captured log": "\n".join(cap.lines)}
    texts |= {str(p.relative_to(tmp_path)): p.read_text(errors="replace") for p in files}
    found = [(what, where) for what, s in secrets.items() for where, t in texts.items() if s in t]
    lines = [
        f"{where}: {ln[:300]}"
        for what, s in secrets.items()
        for where, t in texts.items()
        for ln in t.splitlines()
        if s in ln
    ]
    assert found == [], f"tokens in logs: {found}\n" + "\n".join(lines[:10])


def _login(api: str, **headers: str) -> str:
    r = httpx.post(
        api + "/session",
        json={"name": "admin", "password": "admin-password-1"},
        headers={"X-Outgrow-CSRF": "1", **headers},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.headers["set-cookie"]


def test_session_cookie_flags(tmp_path: Path) -> None:
    """`outgrow up` as users run it: HttpOnly and SameSite=strict always; Secure when the
    request came over https, here through a proxy on this host (X-Forwarded-Proto, which
    uvicorn trusts from 127.0.0.1 only)."""
    prefix = unique_prefix()
    srv = ServerProcess(tmp_path, prefix, free_port(), free_pool(prefix))
    srv.start()
    try:
        plain = _login(srv.api)
        assert "HttpOnly" in plain and "SameSite=strict" in plain and "Path=/" in plain
        assert "Secure" not in plain, plain
        proxied = _login(srv.api, **{"X-Forwarded-Proto": "https"})
        assert "HttpOnly" in proxied and "SameSite=strict" in proxied
        assert "Secure" in proxied, proxied
    finally:
        srv.stop()
        from outgrow.providers.local.hoststate import Pools

        Pools().release(prefix)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/jobs", {"name": "t", "image": "../../etc/passwd"}),
        ("POST", "/jobs", {"name": "../t", "image": "python"}),
        ("POST", "/images/import?name=../up", None),
        ("POST", "/images/pull", {"reference": "x", "name": "../up"}),
        ("GET", "/jobs/..%2f..%2fetc/logs", None),
        ("GET", "/templates/..%2f..%2fetc", None),
        ("POST", "/jobs/JOB/template", {"name": "../../t"}),
        ("GET", "/jobs/JOB/logs?stream=../../../etc/passwd", None),
    ],
)
def test_path_traversal_is_refused(cp: Server, method: str, path: str, body: Any) -> None:
    if "JOB" in path:
        jobs = cp.get("/jobs").json()
        ref = (
            jobs[0]["id"]
            if jobs
            else cp.post(
                "/jobs", {"name": "trav", "image": "python", "script": "print(1)", "mem": "0.25"}
            ).json()["id"]
        )
        path = path.replace("JOB", ref)
    content = b"not a tar" if "import" in path else None
    r = httpx.request(
        method,
        cp.api + path,
        headers=cp.headers(),
        json=body,
        content=content,
        timeout=30,
    )
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert "root:" not in r.text
