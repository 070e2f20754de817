"""A job cannot read or touch the host, the control plane or other jobs — for real, from
inside a batch job and a Jupyter kernel, before and after a live move and a suspend/resume
(docs/security.md lists the probes and what they answer)."""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from jupyter_ws import KernelSession, create_kernel
from outgrow.agentapi.models import CheckpointRequest, ImageBody, RestoreRequest, StartJob
from outgrow.domain.images import BUILTIN_IMAGES
from outgrow.orchestrator.migrate import Migrator, agent, wait_job
from outgrow.providers.base import InstanceInfo
from outgrow.providers.local.provider import LocalProvider
from waiting import wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

# Run by the job (as a script, or in a kernel): each probe prints "<name> <outcome>", the
# outcome being ALLOWED, or the errno name that refused it. {paths} are filled in.
PROBES = r"""
import ctypes, errno, json, os, socket, subprocess
libc = ctypes.CDLL(None, use_errno=True)
out = {}
def probe(name, fn):
    try:
        fn()
        out[name] = "ALLOWED"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
def read(path):
    return lambda: open(path, "rb").read(1)
def write(path):
    def w():
        with open(path, "ab") as f:
            f.write(b"x")
    return w
def call(fn, *args):
    def c():
        if fn(*args) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    return c
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return line.split()[1]
out["uid"] = os.getuid()
out["CapEff"] = status("CapEff")
out["NoNewPrivs"] = status("NoNewPrivs")
out["Seccomp"] = status("Seccomp")
for name, path in PATHS.items():
    probe("read " + name, read(path))
probe("read /etc/shadow", read("/etc/shadow"))
probe("write the image", write(os.path.join(os.path.dirname(PYTHON), "probe")))
probe("write /usr", write("/usr/bin/outgrow-probe"))
probe("mount", call(libc.mount, b"none", b"/tmp", b"tmpfs", 0, None))
probe("ptrace the agent", call(libc.ptrace, 16, AGENT_PID, None, None))
probe("load a kernel module", call(libc.syscall, 175, None, 0, b""))
probe("unshare -U", call(libc.unshare, 0x10000000))
probe("raw socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
probe("agent port", lambda: socket.create_connection((ADDRESS, 7070), timeout=3).close())
probe("write /proc/sys", write("/proc/sys/kernel/core_pattern"))
probe("write the workspace", write("/workspace/probe"))
print("PROBES " + json.dumps(out), flush=True)
"""
DENIED = {"ENOENT", "EACCES", "EPERM", "EROFS", "ESRCH", "ECONNREFUSED", "ENOSYS"}


def probe_script(p: LocalProvider, inst: InstanceInfo, other_job: str) -> str:
    data = p.settings.data_dir
    paths = {
        "the CLI credentials": str(data / "config" / "outgrow" / "credentials.json"),
        "the database": str(data / "outgrow.db"),
        "another job's directory": str(p.jobs_dir / other_job / "workspace" / "secret"),
        "the agent token": str(p.root / inst.id / "agent.token"),
    }
    agent_pid = int((p.root / inst.id / "agent.pid").read_text())
    head = (
        f"PATHS = {json.dumps(paths)}\nAGENT_PID = {agent_pid}\n"
        f"ADDRESS = {inst.address!r}\nPYTHON = __import__('sys').executable\n"
    )
    return head + PROBES


def plant_secrets(p: LocalProvider, other_job: str) -> None:
    """What a job must never read: files of the control plane and of another job."""
    data = p.settings.data_dir
    for path in (
        data / "config" / "outgrow" / "credentials.json",
        data / "outgrow.db",
        p.jobs_dir / other_job / "workspace" / "secret",
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("secret")


def assert_isolated(out: dict[str, Any]) -> None:
    assert out["uid"] >= 2_000_000, out
    assert out["CapEff"] == "0000000000000000" and out["NoNewPrivs"] == "1", out
    assert out["Seccomp"] == "2", out
    allowed = {k for k, v in out.items() if v == "ALLOWED"}
    assert allowed == {"write the workspace"}, out
    probes = ("read ", "write ", "mount", "ptrace", "load", "unshare", "raw", "agent")
    for k, v in out.items():
        if k.startswith(probes) and k != "write the workspace":
            assert v in DENIED, (k, v)
    print("\nprobes: " + json.dumps(out))


def text_of(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _probes_in(text: str) -> dict[str, Any]:
    lines = [ln for ln in text.splitlines() if ln.startswith("PROBES ")]
    assert lines, text[-2000:]
    result: dict[str, Any] = json.loads(lines[-1][len("PROBES ") :])
    return result


def start(p: LocalProvider, kind: str, script: str = "") -> tuple[InstanceInfo, StartJob]:
    image = BUILTIN_IMAGES[kind]
    p.prepare_image(image)
    inst = p.create_instance("lc.small")
    job_id = "j" + secrets.token_hex(4)
    body = StartJob(
        job_id=job_id,
        kind=image.kind,
        image=ImageBody.of(image),
        script=script,
        jupyter_token=secrets.token_hex(16) if image.is_jupyter else "",
        base_url=f"/jobs/{job_id}/",
    )
    with agent(inst) as a:
        a.start_job(body)
    wait_job(inst, timeout=300)
    return inst, body


def test_a_batch_job_is_isolated_and_stays_so_across_a_move(local_provider: LocalProvider) -> None:
    p = local_provider
    other = "j" + secrets.token_hex(4)
    plant_secrets(p, other)
    image = BUILTIN_IMAGES["python"]
    p.prepare_image(image)
    inst = p.create_instance("lc.small")
    job_id = "j" + secrets.token_hex(4)
    # The probes run at start, and again whenever /workspace/again appears (after the move).
    script = (
        "import os, time\n"
        "def run():\n"
        "    exec(compile(open('/workspace/probes.py').read(), 'probes', 'exec'), {})\n"
        "run()\n"
        "while True:\n"
        "    if os.path.exists('/workspace/again'):\n"
        "        os.remove('/workspace/again')\n"
        "        run()\n"
        "    time.sleep(0.1)\n"
    )
    body = StartJob(job_id=job_id, kind="python", image=ImageBody.of(image), script=script)
    workspace = p.jobs_dir / job_id / "workspace"
    workspace.mkdir(parents=True)
    (workspace / "probes.py").write_text(probe_script(p, inst, other))
    with agent(inst) as a:
        a.start_job(body)
    wait_job(inst, timeout=300)
    stdout = p.jobs_dir / job_id / "logs" / "stdout.log"
    wait_until(lambda: "PROBES" in text_of(stdout), timeout=30, what="the first probes")
    assert_isolated(_probes_in(stdout.read_text()))

    r = Migrator(p).migrate(inst, target_type="lc.medium", reason="isolation test")
    dst = p.describe_instance(r.target_instance)
    assert dst is not None
    (workspace / "probes.py").write_text(probe_script(p, dst, other))
    before = stdout.read_text().count("PROBES")
    (workspace / "again").touch()
    wait_until(
        lambda: stdout.read_text().count("PROBES") > before,
        timeout=30,
        what="the probes after the move",
    )
    assert_isolated(_probes_in(stdout.read_text()))
    p.delete_instance(dst.id)


def test_a_kernel_is_isolated_before_and_after_suspend_resume(
    local_provider: LocalProvider,
) -> None:
    p = local_provider
    other = "j" + secrets.token_hex(4)
    plant_secrets(p, other)
    inst, body = start(p, "jupyter-server")
    base = f"http://{inst.address}:8888{body.base_url}"
    kid = create_kernel(base, body.jupyter_token)
    ks = KernelSession(base, body.jupyter_token, kid)
    assert ks.run("x = 41; x").result == "41"
    out = ks.run(probe_script(p, inst, other))
    assert out.error is None, out.error
    assert_isolated(_probes_in(out.text))
    ks.close()

    # Suspend (checkpoint to a directory, end the tree) and resume on a new instance.
    dest = p.settings.data_dir / "checkpoints" / body.job_id / "iso"
    with agent(inst) as a:
        a.checkpoint(CheckpointRequest(dest_dir=str(dest)))
        a.commit()
    p.delete_instance(inst.id)
    again = p.create_instance("lc.small")
    with agent(again) as a:
        a.restore(RestoreRequest(source_dir=str(dest)))
    base2 = f"http://{again.address}:8888{body.base_url}"
    ks.connect(base2)
    assert ks.run("x + 1").result == "42"
    out = ks.run(probe_script(p, again, other))
    assert out.error is None, out.error
    assert_isolated(_probes_in(out.text))
    ks.close()
    p.delete_instance(again.id)


def _terminal_says(ws: Any, command: str, expect: str, timeout: float = 20) -> str:
    ws.send(json.dumps(["stdin", command + "\r"]))
    seen = ""
    deadline = time.monotonic() + timeout
    while expect not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"the terminal never said {expect!r}: {seen[-500:]!r}"
        try:
            msg = json.loads(ws.recv(timeout=left))
        except TimeoutError:
            continue
        if msg[0] == "stdout":
            seen += msg[1]
    return seen


def test_a_jupyter_terminal_moves_with_the_job(local_provider: LocalProvider) -> None:
    """Terminals are the job's own (its devpts instance): a shell keeps its state across a
    live move."""
    from websockets.sync.client import connect

    p = local_provider
    inst, body = start(p, "jupyter-server")
    base = f"http://{inst.address}:8888{body.base_url}"
    auth = {"Authorization": f"token {body.jupyter_token}"}
    name = httpx.post(f"{base}api/terminals", headers=auth, timeout=30).json()["name"]
    ws_url = base.replace("http://", "ws://") + f"terminals/websocket/{name}"
    with connect(ws_url, additional_headers=auth, open_timeout=30) as ws:
        _terminal_says(ws, "export MARK=before-$((40+2))", "$ ")
        _terminal_says(ws, "echo mark=$MARK tty=$(tty)", "mark=before-42")
    r = Migrator(p).migrate(inst, target_type="lc.medium", reason="terminal test")
    dst = p.describe_instance(r.target_instance)
    assert dst is not None
    base2 = f"http://{dst.address}:8888{body.base_url}"
    assert name in [t["name"] for t in httpx.get(f"{base2}api/terminals", headers=auth).json()]
    ws_url2 = base2.replace("http://", "ws://") + f"terminals/websocket/{name}"
    with connect(ws_url2, additional_headers=auth, open_timeout=30) as ws:
        out = _terminal_says(ws, "echo still=$MARK", "still=before-42")
    assert "still=before-42" in out
    p.delete_instance(dst.id)


def test_a_fork_bomb_stops_at_the_pids_limit(local_provider: LocalProvider) -> None:
    p = local_provider
    bomb = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(600)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError as exc:\n"
        "    print('STOPPED', n, exc.errno, flush=True)\n"
        "time.sleep(600)\n"
    )
    inst, body = start(p, "python", bomb)
    stdout = p.jobs_dir / body.job_id / "logs" / "stdout.log"
    wait_until(lambda: "STOPPED" in text_of(stdout), timeout=120, what="the fork bomb to stop")
    n = int(stdout.read_text().split("STOPPED")[1].split()[0])
    assert n < p.settings.job_pids_max, n
    # The host and the agent answer meanwhile.
    t0 = time.monotonic()
    with agent(inst) as a:
        assert a.health().instance_id == inst.id
    assert time.monotonic() - t0 < 5
    assert httpx.get(f"{inst.agent_url}/v1/health", timeout=5).status_code == 200
    p.delete_instance(inst.id)


def test_disk_fill_stops_at_the_jobs_quota(tmp_path: Path) -> None:
    """The job's directory (and its root's own layer) is a size-limited volume: a job that
    writes without end gets ENOSPC there, the host's disk is untouched."""
    from conftest import leftovers, make_settings, unique_prefix

    prefix = unique_prefix()
    p = LocalProvider(make_settings(tmp_path, prefix, local_job_quota_gib=0.25))
    try:
        filler = (
            "import errno, os\n"
            "n = 0\n"
            "try:\n"
            "    with open('/workspace/fill', 'wb') as f:\n"
            "        while True:\n"
            "            f.write(b'x' * (1 << 20)); f.flush(); os.fsync(f.fileno()); n += 1\n"
            "except OSError as exc:\n"
            "    print('FULL', n, errno.errorcode[exc.errno], flush=True)\n"
            "try:\n"
            "    open('/etc/fill', 'wb').write(b'x' * (1 << 20))\n"
            "    print('ROOT-WRITE ok', flush=True)\n"
            "except OSError as exc:\n"
            "    print('ROOT-WRITE', errno.errorcode[exc.errno], flush=True)\n"
        )
        image = BUILTIN_IMAGES["python"]
        p.prepare_image(image)
        inst = p.create_instance("lc.nano")
        job_id = "j" + secrets.token_hex(4)
        p.attach_job_storage(job_id, inst)  # what the control plane does before a start
        body = StartJob(job_id=job_id, kind="python", image=ImageBody.of(image), script=filler)
        with agent(inst) as a:
            a.start_job(body)
        stdout = p.jobs_dir / job_id / "logs" / "stdout.log"
        wait_until(lambda: "ROOT-WRITE" in text_of(stdout), timeout=120, what="the disk to fill")
        full = text_of(stdout).split("FULL")[1].split()
        assert full[1] in ("ENOSPC", "EDQUOT"), full
        assert int(full[0]) < 256, full  # MiB: stopped at the quota
        assert "ROOT-WRITE EACCES" in text_of(stdout)  # the image root is not the job's
        p.delete_instance(inst.id)
        p.delete_job_storage(job_id)  # the job ended: the volume goes, the logs stay
        assert "FULL" in text_of(stdout)
        assert not os.path.ismount(p.jobs_dir / job_id)
    finally:
        p.teardown()
    assert leftovers(prefix, str(tmp_path)) == []
