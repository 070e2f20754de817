"""Live migration, for real: local instances (netns + cgroup), agents, CRIU.

These are the issue's acceptance tests: a Jupyter kernel that outgrows its instance is
moved before it dies, manual moves up and down, a failed move that loses nothing, and a
batch job that keeps counting across a move.
"""

from __future__ import annotations

import itertools
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from jupyter_ws import KernelSession, create_kernel, list_kernels
from outgrow.agentapi.models import ImageBody, StartJob
from outgrow.domain.images import BUILTIN_IMAGES
from outgrow.errors import MigrationError
from outgrow.orchestrator.migrate import Migrator, agent, wait_job
from outgrow.providers.base import InstanceInfo
from outgrow.providers.local.provider import LocalProvider
from waiting import wait_for_value, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]


def start_job(
    provider: LocalProvider, type_name: str, kind: str, *, script: str = "", evade_oom: bool = True
) -> tuple[InstanceInfo, StartJob]:
    image = BUILTIN_IMAGES[kind]
    provider.prepare_image(image)
    inst = provider.create_instance(type_name)
    job_id = "j" + secrets.token_hex(4)
    token = secrets.token_hex(16)
    body = StartJob(
        job_id=job_id,
        kind=image.kind,
        image=ImageBody.of(image),
        script=script,
        jupyter_token=token if image.is_jupyter else "",
        base_url=f"/jobs/{job_id}/",
        evade_oom=evade_oom,
    )
    with agent(inst) as a:
        a.start_job(body)
    wait_job(inst, timeout=300)
    return inst, body


def jupyter_base(inst: InstanceInfo, body: StartJob) -> str:
    return f"http://{inst.address}:8888{body.base_url}"


def test_evade_oom_moves_a_running_cell_before_it_dies(local_provider: LocalProvider) -> None:
    p = local_provider
    src, body = start_job(p, "lc.micro", "jupyter-server")  # 512 MiB
    token = body.jupyter_token
    kid = create_kernel(jupyter_base(src, body), token)
    ks = KernelSession(jupyter_base(src, body), token, kid)
    assert ks.run("x = 41; x").result == "41"

    # ~3x the instance memory, in 64 MiB steps, each step touched and summed.
    cell = (
        "import numpy as np\n"
        "chunks = []; total = 0\n"
        "for i in range(24):\n"
        "    a = np.ones(64 * 1024 * 1024 // 8)\n"
        "    chunks.append(a); total += int(a.sum())\n"
        "    print(f'step {i}', flush=True)\n"
        "print('TOTAL', total)\n"
    )
    msg_id = ks.execute(cell)
    # Like the stable-URL proxy will: drop our side before the move, keep the session id.
    ks.close()
    with agent(src) as a:

        def oom_stalled() -> bool:
            st = a.job()
            assert st.phase == "running", st
            return bool(st.oom_stalled)

        wait_until(oom_stalled, timeout=60, what="the kernel to stall at its limit")
        stalled = a.metrics().now
    assert stalled.oom_kills == 0

    result = Migrator(p).migrate(
        src, target_type="lc.medium", reason="evadeOOM: memory limit reached (512 MiB)"
    )
    assert result.to_type == "lc.medium" and result.reason.startswith("evadeOOM")
    assert result.checkpoint_bytes > 400 * 1024**2

    dst = p.describe_instance(result.target_instance)
    assert dst is not None and dst.address != src.address
    ks.connect(jupyter_base(dst, body))
    out = ks.collect(msg_id, timeout=120)
    assert out.error is None, out.error
    assert f"TOTAL {24 * 8 * 1024 * 1024}" in out.text
    assert [int(m) for m in re.findall(r"step (\d+)", out.text)] == list(range(24))
    assert ks.run("x").result == "41"
    assert list_kernels(jupyter_base(dst, body), token) == [kid]
    with agent(dst) as a:
        now = a.metrics().now
        assert now.oom_kills == 0
        assert now.mem_limit_bytes == 2 * 1024**3
    ks.close()
    # The small instance is gone: no record, no namespace.
    assert p.describe_instance(src.id) is None
    assert not Path(f"/run/netns/{p.prefix}-{src.id}").exists()
    p.delete_instance(dst.id)


def test_manual_migration_up_then_down(local_provider: LocalProvider) -> None:
    p = local_provider
    inst, body = start_job(p, "lc.small", "jupyter-server")
    token = body.jupyter_token
    kid = create_kernel(jupyter_base(inst, body), token)
    ks = KernelSession(jupyter_base(inst, body), token, kid)
    ks.run("import numpy as np; data = np.arange(10_000_000); s = int(data.sum())")
    ks.close()
    for type_name in ("lc.large", "lc.micro"):
        r = Migrator(p).migrate(inst, target_type=type_name, reason="manual")
        assert (r.from_type, r.to_type) == (inst.type.name, type_name)
        assert r.downtime_s < 10 and r.checkpoint_bytes > 0
        new = p.describe_instance(r.target_instance)
        assert new is not None and new.type.name == type_name
        inst = new
        ks.connect(jupyter_base(inst, body))
        assert ks.run("s == int(data.sum()) == 49999995000000").result == "True"
        ks.close()
    p.delete_instance(inst.id)


COUNTER = (
    "import time\n"
    "from pathlib import Path\n"
    "i = 0\n"
    "while True:\n"
    "    i += 1\n"
    "    Path('counter').write_text(str(i))\n"
    "    print(i, time.time(), flush=True)\n"
    "    time.sleep(0.1)\n"
)


def counter_lines(inst: InstanceInfo) -> list[tuple[int, float]]:
    with agent(inst) as a:
        text = a.logs("stdout").data
    return [(int(a), float(b)) for a, b in (ln.split() for ln in text.splitlines() if ln)]


def test_failed_migration_leaves_the_job_running_on_the_source(
    local_provider: LocalProvider,
) -> None:
    p = local_provider
    src, _body = start_job(p, "lc.micro", "python", script=COUNTER)
    wait_until(lambda: len(counter_lines(src)) >= 5, timeout=30, what="the job to count to 5")
    target = p.create_instance("lc.small")

    def kill_target(step: str) -> None:
        if step == "checkpointing":  # the target dies just before the pages are sent
            p.delete_instance(target.id)

    with pytest.raises(MigrationError) as err:
        Migrator(p).migrate(src, target=target, reason="manual", on_step=kill_target)
    assert "keeps running on" in str(err.value) and src.id in str(err.value)
    before = counter_lines(src)[-1][0]
    lines = wait_for_value(
        lambda: counter_lines(src),
        lambda lines: lines[-1][0] >= before + 5,
        timeout=30,
        what=f"the counter to resume on the source (count past {before + 4})",
    )
    with agent(src) as a:
        st = a.job()
    assert st.phase == "running" and not st.restored
    assert lines[-1][0] >= before + 5, "the counter did not resume on the source"
    assert [n for n, _ in lines] == list(range(1, len(lines) + 1))
    p.delete_instance(src.id)


def test_batch_job_keeps_counting_across_a_migration(local_provider: LocalProvider) -> None:
    p = local_provider
    src, body = start_job(p, "lc.micro", "python", script=COUNTER)
    wait_until(lambda: len(counter_lines(src)) >= 10, timeout=30, what="the job to count to 10")
    r = Migrator(p).migrate(src, target_type="lc.small", reason="manual")
    dst = p.describe_instance(r.target_instance)
    assert dst is not None
    moved_at = counter_lines(dst)[-1][0]
    lines = wait_for_value(  # and on after the move
        lambda: counter_lines(dst),
        lambda lines: lines[-1][0] >= moved_at + 10,
        timeout=30,
        what=f"the job to count past {moved_at + 9} on the target",
    )
    numbers = [n for n, _ in lines]
    # One process, never restarted: 1, 2, 3, ... with no gap, no repeat.
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(numbers) >= 20
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(lines)]
    assert max(gaps) < 0.1 + r.downtime_s + 1.0
    counter = Path(p.jobs_dir / body.job_id / "workspace" / "counter")

    def counted() -> int:  # the job rewrites the file every tick: it may be caught empty
        text = counter.read_text().strip()
        return int(text) if text else 0

    wait_until(lambda: counted() >= numbers[-1], timeout=10, what="the counter file to follow")
    with agent(dst) as a:
        assert a.job().phase == "running" and a.job().restored
    p.delete_instance(dst.id)


def test_provider_leaves_nothing_behind(tmp_path: Path) -> None:
    from conftest import leftovers, make_settings, unique_prefix

    prefix = unique_prefix()
    p = LocalProvider(make_settings(tmp_path, prefix))
    try:
        a, _ = start_job(p, "lc.nano", "python", script=COUNTER)
        b = p.create_instance("lc.nano")
        assert len(leftovers(prefix)) >= 4  # 2 netns, veths, bridge, cgroups
        Migrator(p).migrate(a, target=b, reason="manual")
        # A restarted control plane finds the instance again; cleanup removes orphans.
        again = LocalProvider(make_settings(tmp_path, prefix))
        assert [i.id for i in again.list_instances()] == [b.id]
        assert again.cleanup() == [b.id]
    finally:
        p.teardown()
    assert leftovers(prefix) == []


def test_agent_restart_readopts_its_job(local_provider: LocalProvider) -> None:
    p = local_provider
    inst, _ = start_job(p, "lc.nano", "python", script=COUNTER)
    with agent(inst) as a:  # a spot notice arrives before the agent dies
        at = a.reclaim_notice(600, source="aws spot instance-action").reclaim_at
    pid = int((p.root / inst.id / "agent.pid").read_text())
    import os
    import signal

    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: _dead(pid), timeout=10, what=f"the killed agent (pid {pid}) to be gone")
    p.restart_agent(inst.id)
    with agent(inst) as a:
        st = a.job()
    assert st.phase == "running"
    # The restarted agent still knows the deadline (the watcher only relays earlier ones).
    assert st.reclaim_at == at and st.reclaim_source == "aws spot instance-action"
    n1 = counter_lines(inst)[-1][0]
    wait_until(
        lambda: counter_lines(inst)[-1][0] > n1,
        timeout=30,
        what=f"the re-adopted job to count past {n1}",
    )
    p.delete_instance(inst.id)


LISTENER = """
import os, socket, time
out = socket.create_connection(("{gateway}", {port}))  # a keep-alive to an outside service
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8888))
s.listen(8)
c, _ = s.accept()
print("accepted 1", flush=True)
i = 0
while not os.path.exists("go"):
    i += 1
    print("tick", i, flush=True)
    time.sleep(0.1)
s.settimeout(20)
c2, _ = s.accept()
print("accepted 2", c2.recv(16).decode(), flush=True)
"""


def test_outside_connections_in_any_state_do_not_stop_a_move(
    local_provider: LocalProvider,
) -> None:
    """Peers outside the instance leave sockets the move must cut: a keep-alive connection
    the job opened to an outside service, one a peer opened and closed (CLOSE_WAIT in the
    job), and one the kernel accepted but the job has not yet (in flight in the listen
    backlog) — the stable-URL proxy leaves the last two behind when it drops upstream
    connections at a checkpoint. Neither may fail the dump or the restore
    (seen: "In-flight connection", "Can't bind inet socket back"); the job's listening
    socket works on the target."""
    p = local_provider
    import ipaddress
    import socket

    gateway = ipaddress.ip_network(p.settings.address_pool).network_address + 1
    p.net.ensure_bridge()  # the gateway address exists once the bridge does
    service = socket.socket()  # the outside service the job keeps a connection to
    service.bind((str(gateway), 0))
    service.listen(1)
    script = LISTENER.replace("{gateway}", str(gateway))
    script = script.replace("{port}", str(service.getsockname()[1]))
    src, body = start_job(p, "lc.micro", "python", script=script)
    kept, _ = service.accept()
    try:
        _move_with_outside_sockets(p, src, body)
    finally:
        for inst in p.list_instances():
            if inst.tags.get("outgrow:job") == body.job_id or inst.id == src.id:
                p.delete_instance(inst.id)
        kept.close()
        service.close()


def _move_with_outside_sockets(p: LocalProvider, src: InstanceInfo, body: StartJob) -> None:
    import socket

    peer = wait_until(  # the job listens right after it connected out
        lambda: socket.create_connection((src.address, 8888), timeout=5),
        timeout=30,
        ignore=(ConnectionRefusedError,),
        what="the job to listen on 8888",
    )
    with agent(src) as a:
        wait_until(
            lambda: "accepted 1" in a.logs("stdout").data,
            timeout=10,
            what="the job to accept the first connection",
        )
    peer.close()  # the job's end: CLOSE_WAIT
    pending = socket.create_connection((src.address, 8888), timeout=5)  # never accepted
    wait_until(
        lambda: _cut_sockets_in_place(p, src),
        timeout=10,
        what="a CLOSE-WAIT socket and a backlogged connection on the job's port 8888",
        context=lambda: _sockets_on_8888(p, src),
    )
    r = Migrator(p).migrate(src, target_type="lc.small", reason="manual")
    dst = p.describe_instance(r.target_instance)
    assert dst is not None
    pending.close()
    (p.jobs_dir / body.job_id / "workspace" / "go").touch()
    fresh = socket.create_connection((dst.address, 8888), timeout=5)
    fresh.sendall(b"hello")
    with agent(dst) as a:
        out = wait_for_value(
            lambda: a.logs("stdout").data,
            lambda out: "accepted 2 hello" in out,
            timeout=20,
            what="the job on the target to accept a fresh connection",
        )
    ticks = [int(n) for n in re.findall(r"tick (\d+)", out)]
    assert ticks == list(range(1, len(ticks) + 1))  # one process, never restarted
    fresh.close()


def _dead(pid: int) -> bool:
    """The process is gone or a zombie (what LocalProvider.restart_agent checks)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _sockets_on_8888(p: LocalProvider, inst: InstanceInfo) -> str:
    """``ss`` in the instance's network namespace: every TCP socket on port 8888."""
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{p.prefix}-{inst.id}", "ss", "-Htan", "sport = :8888"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _cut_sockets_in_place(p: LocalProvider, inst: InstanceInfo) -> bool:
    """The job's end of the closed connection is in CLOSE-WAIT and the pending one waits
    in the listening socket's backlog (its Recv-Q)."""
    rows = [ln.split() for ln in _sockets_on_8888(p, inst).splitlines()]
    close_wait = any(r[0] == "CLOSE-WAIT" for r in rows)
    backlog = any(r[0] == "LISTEN" and int(r[1]) >= 1 for r in rows)
    return close_wait and backlog
