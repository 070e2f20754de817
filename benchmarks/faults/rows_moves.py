"""Fault-matrix rows: the control plane, agents, CRIU, the page server, a disk and the
network failing around a job and its moves (see registry.py)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

from harness import COUNTER, Outcome, RowFailed, World
from registry import T_FAULTS, T_RECONCILE, row

from waiting import wait_until

# ---- the control plane killed -------------------------------------------------------------


@row("cp-kill-executing", "control plane kill -9", "Executing", T_RECONCILE)
def cp_kill_executing(w: World) -> Outcome:
    ref = w.submit()
    first = w.job(ref)["instance"]["id"]
    w.kill9()
    n = len(w.counter(ref))
    wait_until(
        lambda: len(w.counter(ref)) >= n + 5,
        timeout=30,
        what="the job to count on while the control plane is down",
    )
    w.restart()
    out = w.check_runs_on(ref, first)
    w.cancel(ref)
    return out


def _kill_cp_at_hold(w: World, action: str, n: int = 1) -> tuple[str, str]:
    """Start a move, kill -9 the control plane while the n-th ``criu <action>`` waits at
    its hold, let CRIU go on without a control plane, restart it."""
    ref = w.submit()
    src = w.job(ref)["instance"]["id"]
    w.criu.hold(action, n)
    r = w.migrate(ref)
    if r.status_code != 202:
        raise RowFailed(f"migrate answered {r.status_code}: {r.text}")
    w.criu.wait_held(action, n)
    w.kill9()
    w.criu.release(action, n)
    w.restart()
    return ref, src


def where(w: World, ref: str, src: str) -> Outcome:
    out = w.check_runs_on(ref)
    out.outcome += " (the source)" if w.job(ref)["instance"]["id"] == src else " (the target)"
    w.cancel(ref)
    return out


@row("cp-kill-dump", "control plane kill -9", "Floating: frozen, dump starting", T_FAULTS)
def cp_kill_dump(w: World) -> Outcome:
    ref, src = _kill_cp_at_hold(w, "dump")
    return where(w, ref, src)


@row(
    "cp-kill-prepare", "control plane kill -9", "Floating: target's page server starting", T_FAULTS
)
def cp_kill_prepare(w: World) -> Outcome:
    ref, src = _kill_cp_at_hold(w, "page-server")
    return where(w, ref, src)


@row(
    "cp-kill-restore", "control plane kill -9", "Floating: pages moved, restore starting", T_FAULTS
)
def cp_kill_restore(w: World) -> Outcome:
    ref, src = _kill_cp_at_hold(w, "restore")
    return where(w, ref, src)


@row("cp-kill-commit", "control plane kill -9", "Floating: restored, commit sent", T_FAULTS)
def cp_kill_commit(w: World) -> Outcome:
    """The source agent is stopped (SIGSTOP) while the target restores, so the control
    plane's commit waits on it; then the control plane dies, the source agent goes on."""
    import os
    import signal

    ref = w.submit()
    src = w.job(ref)["instance"]["id"]
    w.criu.hold("restore")
    w.accepted(w.migrate(ref))
    w.criu.wait_held("restore")
    pid = w.agent_pid(src)
    os.kill(pid, signal.SIGSTOP)
    try:
        w.criu.release("restore")
        target = next(i for i in w.instances() if i.id != src)
        from outgrow.agentapi.client import AgentClient

        with AgentClient(target.agent_url, target.agent_token) as a:
            wait_until(
                lambda: a.job().phase == "running",
                timeout=60,
                what="the job to run on the target (restored)",
            )
        w.kill9()
    finally:
        os.kill(pid, signal.SIGCONT)
    w.restart()
    return where(w, ref, src)


@row("cp-kill-suspending", "control plane kill -9", "Suspending: frozen, dump starting", T_FAULTS)
def cp_kill_suspending(w: World) -> Outcome:
    ref = w.submit()
    w.criu.hold("dump")
    r = w.post(f"/jobs/{ref}/suspend")
    if r.status_code != 202:
        raise RowFailed(f"suspend answered {r.status_code}: {r.text}")
    w.criu.wait_held("dump")
    w.kill9()
    w.criu.release("dump")
    w.restart()
    j = w.wait(ref, {"Suspended", "Executing"})
    state = j["status"]
    if state == "Suspended":
        if w.instances():
            raise RowFailed(f"suspended, but instances remain: {[i.id for i in w.instances()]}")
        w.accepted(w.post(f"/jobs/{ref}/resume"))
    out = w.check_runs_on(ref)
    out.outcome = f"{state} after the restart; then {out.outcome}"
    w.cancel(ref)
    return out


@row("cp-kill-start", "control plane kill -9", "Starting: waiting for its agent", T_FAULTS)
def cp_kill_start(w: World) -> Outcome:
    """The new instance's agent is stopped (SIGSTOP, a slow boot) as soon as it exists,
    so the control plane waits for its health; it is killed then, the agent resumed."""
    import os
    import signal

    ref = w.submit(wait=False)
    pidfile = wait_until(
        lambda: next(iter(w.tmp.glob("instances/*/agent.pid")), None),
        timeout=120,
        what="the job's instance to start its agent",
    )
    pid = wait_until(lambda: int(pidfile.read_text() or 0), timeout=5, what="the agent's pid")
    os.kill(pid, signal.SIGSTOP)
    try:
        j = w.wait_for(
            ref, lambda j: j["status"] in ("Initializing", "Starting"), "the start to wait"
        )
        if w.counter(ref):
            raise RowFailed("the job already runs: not the moment this row is about")
        w.kill9()
    finally:
        os.kill(pid, signal.SIGCONT)
    w.restart()
    out = w.check_runs_on(ref)
    out.outcome = f"{j['status']} when killed; {out.outcome}"
    w.cancel(ref)
    return out


# ---- agents, CRIU, the page server, the target --------------------------------------------


def _move_fails_at_dump(w: World, damage: Callable[[World, str, str], None]) -> Outcome:
    """Hold the dump, do the damage (given the source and the target), let CRIU go on:
    the move must fail and the job run on; where, the outcome says."""
    ref = w.submit()
    src = w.job(ref)["instance"]["id"]
    w.criu.hold("dump")
    w.accepted(w.migrate(ref))
    w.criu.wait_held("dump")
    target = w.wait_for(
        ref,
        lambda j: any(i["id"] != src and i["ended_at"] is None for i in j["instances"]),
        "the target to be recorded",
    )
    tid = next(i["id"] for i in target["instances"] if i["id"] != src and i["ended_at"] is None)
    damage(w, src, tid)
    w.criu.release("dump")
    w.wait_for(ref, lambda j: j["status"] != "Floating", "the move to end", timeout=240)
    return where(w, ref, src)


def _kill_agent(w: World, iid: str) -> None:
    import os
    import signal

    os.kill(w.agent_pid(iid), signal.SIGKILL)


@row(
    "agent-kill-source",
    "agent kill -9 (source)",
    "Floating: frozen, dump starting",
    T_FAULTS,
)
def agent_kill_source(w: World) -> Outcome:
    return _move_fails_at_dump(w, lambda w, s, t: _kill_agent(w, s))


@row("agent-kill-target", "agent kill -9 (target)", "Floating: frozen, dump starting", T_FAULTS)
def agent_kill_target(w: World) -> Outcome:
    return _move_fails_at_dump(w, lambda w, s, t: _kill_agent(w, t))


@row("target-deleted", "target instance deleted", "Floating: frozen, dump starting", T_FAULTS)
def target_deleted(w: World) -> Outcome:
    return _move_fails_at_dump(w, lambda w, s, t: w.provider().delete_instance(t))


def _kill_page_server(w: World, s: str, t: str) -> None:
    import os
    import signal

    calls = sorted((w.criu.dir / "calls-page-server").iterdir())
    pid = int(calls[-1].read_text().split()[0])
    os.kill(pid, signal.SIGKILL)


@row("page-server-dies", "page server kill -9", "Floating: frozen, dump starting", T_FAULTS)
def page_server_dies(w: World) -> Outcome:
    return _move_fails_at_dump(w, _kill_page_server)


def _fill(w: World, s: str, t: str) -> None:
    """Fill the row's tmpfs (the instances' directories, so the target's image dir) to
    the last byte."""
    import errno

    with open(w.small / "filler", "wb") as f:
        chunk = b"\0" * (1 << 20)
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    if shutil.disk_usage(w.small).free > 64 * 1024:
        raise RowFailed(f"the filesystem is not full: {shutil.disk_usage(w.small)}")


@row(
    "disk-full",
    "disk full (the instances' filesystem: the target's images)",
    "Floating: frozen, dump starting",
    T_FAULTS,
    tmpfs_mib=768,
    tmpfs_at="instances",
)
def disk_full(w: World) -> Outcome:
    try:
        return _move_fails_at_dump(w, _fill)
    finally:
        (w.small / "filler").unlink(missing_ok=True)


@row("db-disk-full", "disk full under the database", "Executing", T_FAULTS, tmpfs_mib=256)
def db_disk_full(w: World) -> Outcome:
    """The data dir's filesystem (the database's) fills up: the API says 503 (the store
    is unavailable), never 500; the job runs on; once space is freed all works again."""
    ref = w.submit()
    try:
        _fill(w, "", "")
        body = {"name": "full", "image": "python", "script": COUNTER, "mem": "0.25"}
        codes = {w.post("/jobs", body).status_code, w.migrate(ref).status_code}
        if 500 in codes or not codes <= {503, 202, 201}:
            raise RowFailed(f"with the database's disk full the API answered {sorted(codes)}")
    finally:
        (w.small / "filler").unlink(missing_ok=True)
    w.wait(ref, {"Executing"})
    out = w.check_runs_on(ref)
    out.outcome = f"API {sorted(codes)} while full; {out.outcome}"
    w.cancel(ref)
    return out


@row("criu-dump-fails", "CRIU dump fails (exit 1)", "Floating: dump", T_FAULTS)
def criu_dump_fails(w: World) -> Outcome:
    return _move_fails(w, "dump")


@row("criu-restore-fails", "CRIU restore fails (exit 1)", "Floating: restore", T_FAULTS)
def criu_restore_fails(w: World) -> Outcome:
    return _move_fails(w, "restore")


def _move_fails(w: World, action: str) -> Outcome:
    ref = w.submit()
    src = w.job(ref)["instance"]["id"]
    w.criu.fail(action)
    w.accepted(w.migrate(ref))
    j = w.wait_for(
        ref,
        lambda j: any("migration failed" in e["reason"] for e in j["events"]),
        "the move to fail",
        timeout=120,
    )
    del j
    out = w.check_runs_on(ref, src)
    out.notes.append(f"criu {action} calls: {w.criu.calls(action)}")
    w.cancel(ref)
    return out


def _cut(how: str) -> Callable[[World, str, str], None]:
    def cut(w: World, s: str, t: str) -> None:
        tgt = next(i for i in w.instances() if i.id == t)
        ns = f"{w.prefix}-{s}"
        if how == "unreachable":
            cmd = ["ip", "netns", "exec", ns, "ip", "route", "add", "unreachable", tgt.address]
        else:
            rules = (
                f"table ip {w.prefix}_cut {{\n chain out {{\n"
                "  type filter hook output priority 0;\n"
                f"  ip daddr {tgt.address} drop\n }}\n}}\n"
            )
            cmd = ["ip", "netns", "exec", ns, "nft", "-f", "-"]
            subprocess.run(cmd, input=rules, text=True, check=True, capture_output=True)
            return
        subprocess.run(cmd, check=True, capture_output=True)

    return cut


@row(
    "net-cut-unreachable",
    "network cut between agents (unreachable)",
    "Floating: frozen, dump starting",
    "tests/root/test_job_storage.py::test_agents_that_cannot_reach_each_other_move_through_s3",
)
def net_cut_unreachable(w: World) -> Outcome:
    return _move_fails_at_dump(w, _cut("unreachable"))


@row(
    "net-cut-dropped",
    "network cut between agents (packets dropped)",
    "Floating: frozen, dump starting",
    "tests/root/test_job_storage.py::test_agents_that_cannot_reach_each_other_move_through_s3",
)
def net_cut_dropped(w: World) -> Outcome:
    return _move_fails_at_dump(w, _cut("dropped"))
