"""Fault-matrix rows: API races, memory, control planes and the database (see
registry.py); and the host restarting."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Callable

import httpx
from harness import COUNTER, Outcome, RowFailed, World
from registry import T_FAULTS, row
from rows_moves import where as _where

from hostreboot import simulate_reboot
from waiting import holds_for, wait_until

# ---- races through the API ------------------------------------------------------------------


def _at_once(*calls: Callable[[], httpx.Response]) -> list[int]:
    codes: list[int] = [0] * len(calls)
    barrier = threading.Barrier(len(calls))

    def go(i: int) -> None:
        barrier.wait()
        codes[i] = calls[i]().status_code

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return codes


@row("two-migrations", "two migrations of one job at once", "Executing", T_FAULTS)
def two_migrations(w: World) -> Outcome:
    ref = w.submit()
    src = w.job(ref)["instance"]["id"]
    codes = _at_once(lambda: w.migrate(ref, 0.5), lambda: w.migrate(ref, 1))
    if sorted(codes) != [202, 409]:
        raise RowFailed(f"two migrations answered {codes}, expected one 202 and one 409")
    w.wait_for(ref, lambda j: j["instance"]["id"] != src, "the move to finish", timeout=120)
    out = _where(w, ref, src)
    out.notes.append(f"answers {codes}")
    return out


@row("migrate-during-suspend", "migrate while Suspending", "Suspending: dump held", T_FAULTS)
def migrate_during_suspend(w: World) -> Outcome:
    ref = w.submit()
    w.criu.hold("dump")
    w.accepted(w.post(f"/jobs/{ref}/suspend"))
    w.criu.wait_held("dump")
    r = w.migrate(ref)
    w.criu.release("dump")
    if r.status_code != 409:
        raise RowFailed(f"migrate during suspend answered {r.status_code}: {r.text}")
    w.wait(ref, {"Suspended"})
    w.accepted(w.post(f"/jobs/{ref}/resume"))
    out = w.check_runs_on(ref)
    out.outcome = f"migrate refused (409); Suspended; resumed: {out.outcome}"
    w.cancel(ref)
    return out


@row("cancel-during-migrate", "cancel while Floating", "Floating: frozen, dump held", T_FAULTS)
def cancel_during_migrate(w: World) -> Outcome:
    ref = w.submit()
    w.criu.hold("dump")
    w.accepted(w.migrate(ref))
    w.criu.wait_held("dump")
    r = w.post(f"/jobs/{ref}/cancel")
    w.criu.release("dump")
    if r.status_code != 202:
        raise RowFailed(f"cancel during a move answered {r.status_code}: {r.text}")
    w.wait(ref, {"Cancelled"})
    wait_until(lambda: not w.instances(), timeout=60, what="every instance of the job to go")
    wait_until(
        lambda: not w.job_processes(),
        timeout=30,
        what="no process left in a cgroup of the row (the job stopped, no copy running)",
    )
    holds_for(lambda: not w.job_processes(), duration=1.0, what="no job process coming back")
    return Outcome("Cancelled; no instance, no process left", "n/a (cancelled)")


# ---- memory ------------------------------------------------------------------------------------

OOM_STEPS = [32] * 18 + [24]  # 600 MiB in 32 MiB steps at full speed, from a 256 MiB instance
OOM_SCRIPT = (
    "import numpy as np\n"
    "chunks = []; total = 0\n"
    f"for i, mib in enumerate({OOM_STEPS}):\n"
    "    a = np.ones(mib * 1024 * 1024 // 8)\n"
    "    chunks.append(a); total += int(a.sum())\n"
    "    print(f'step {i}', flush=True)\n"
    "print('SUM', total, flush=True)\n"
)


@row(
    "evade-oom",
    "evadeOOM, allocation at full speed",
    "Executing → Floating (repeatedly)",
    "tests/root/test_cli_run.py::test_evade_oom_moves_the_job_until_it_fits",
)
def evade_oom(w: World) -> Outcome:
    r = w.post(
        "/jobs",
        {
            "name": "oom",
            "image": "python",
            "script": OOM_SCRIPT,
            "instance_type": "lc.nano",
            "migrate_policy": "[evadeOOM=true]",
        },
    )
    ref = str(r.json()["id"])
    j = w.wait(ref, {"Completed", "FailToComplete", "Cancelled"}, timeout=600)
    if j["status"] != "Completed":
        raise RowFailed(f"the job ended {j['status']}: {j['events'][-3:]}")
    text = (w.tmp / "jobs" / ref / "logs" / "stdout.log").read_text()
    steps = [ln.split()[1] for ln in text.splitlines() if ln.startswith("step ")]
    if steps != [str(i) for i in range(len(OOM_STEPS))]:
        raise RowFailed(f"steps printed {steps}: restarted or lost")
    if f"SUM {600 * 1024 * 1024 // 8}" not in text:
        raise RowFailed("the sum is wrong or missing")
    moves = [e for e in j["events"] if e["type"] == "migration"]
    if not moves:
        raise RowFailed("no move happened: the row tested nothing")
    kills = [e for e in j["events"] if "oom" in e["reason"].lower() and "kill" in e["reason"]]
    if kills:
        raise RowFailed(f"OOM kills: {kills}")
    return Outcome(f"Completed after {len(moves)} move(s), no OOM kill", "none")


# ---- control planes and the database ---------------------------------------------------------


@row(
    "second-cp",
    "a second control plane on the same data dir",
    "Executing",
    "tests/root/test_two_control_planes.py::test_two_control_planes_share_a_prefix_not_instances",
)
def second_cp(w: World) -> Outcome:
    from cp_server import ServerProcess, free_port

    ref = w.submit()
    src = w.job(ref)["instance"]["id"]
    other = ServerProcess(w.tmp, w.prefix, free_port(), w.pool, extra_env=w.srv.extra_env)
    other.start(wait=False)
    try:
        code = other.proc.wait(60)
    except subprocess.TimeoutExpired:
        other.stop()
        raise RowFailed("a second control plane on the same data dir kept running") from None
    out = w.check_runs_on(ref, src)
    tail = other.log().strip().splitlines()[-1:] or ["(no message)"]
    out.outcome = f"second refused (exit {code}: {tail[0][:80]}); {out.outcome}"
    w.cancel(ref)
    return out


@row("sqlite-locked", "SQLite locked by another writer", "Executing", T_FAULTS)
def sqlite_locked(w: World) -> Outcome:
    ref = w.submit()
    src = w.job(ref)["instance"]["id"]
    db = sqlite3.connect(w.tmp / "outgrow.db", timeout=1, isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        r = httpx.post(
            w.srv.api + "/jobs",
            headers=w.h,
            json={"name": "blocked", "image": "python", "script": COUNTER, "mem": "0.25"},
            timeout=60,
        )
        g = httpx.get(w.srv.api + f"/jobs/{ref}", headers=w.h, timeout=60)
        if r.status_code != 503 or g.status_code not in (200, 503):
            raise RowFailed(f"while locked: submit {r.status_code}, show {g.status_code}")
    finally:
        db.execute("ROLLBACK")
        db.close()
    out = w.check_runs_on(ref, src)
    out.outcome = f"503 while locked; {out.outcome}"
    w.cancel(ref)
    return out


def _db_refused(w: World, damage: Callable[[], None], what: str) -> Outcome:
    ref = w.submit()
    src = w.job(ref)["instance"]["id"]
    w.kill9()
    db = w.tmp / "outgrow.db"
    files = [db, *(w.tmp / f"outgrow.db{x}" for x in ("-wal", "-shm"))]
    saved = w.tmp / "saved-db"
    saved.mkdir()
    for f in files:
        if f.exists():
            shutil.copy(f, saved / f.name)
    for f in files[1:]:
        f.unlink(missing_ok=True)
    damage()
    from cp_server import ServerProcess

    # `outgrow up` itself, as a user starts it: its one-line error is what they see
    up = ServerProcess(w.tmp, w.prefix, w.srv.port, w.pool, extra_env=w.srv.extra_env, cli=True)
    up.start(wait=False)
    try:
        code = up.proc.wait(60)
    except subprocess.TimeoutExpired:
        up.stop()
        raise RowFailed(f"the control plane started on a {what} database") from None
    message = up.log().strip().splitlines()[-1] if up.log().strip() else "(nothing)"
    if code == 0 or "Traceback" in up.log():
        raise RowFailed(f"not a clear refusal (exit {code}): {up.log()[-1500:]}")
    if [i.id for i in w.instances()] != [src]:
        raise RowFailed(f"instances after the refusal: {[i.id for i in w.instances()]}")
    n = len(w.counter(ref))
    wait_until(lambda: len(w.counter(ref)) > n + 5, timeout=30, what="the job to count on")
    for f in saved.iterdir():
        shutil.copy(f, w.tmp / f.name)
    w.restart()
    out = w.check_runs_on(ref, src)
    out.outcome = f"refused (exit {code}: {message[:90]}); restored db: {out.outcome}"
    w.cancel(ref)
    return out


@row("db-corrupt", "database file corrupt", "control plane restart", T_FAULTS)
def db_corrupt(w: World) -> Outcome:
    def corrupt() -> None:
        with open(w.tmp / "outgrow.db", "r+b") as f:
            f.write(b"this is not a database" * 10)

    return _db_refused(w, corrupt, "corrupt")


@row("db-deleted", "database file deleted", "control plane restart", T_FAULTS)
def db_deleted(w: World) -> Outcome:
    return _db_refused(w, lambda: (w.tmp / "outgrow.db").unlink(), "deleted")


# ---- the host ---------------------------------------------------------------------------

RESTORED = re.compile(
    r"restored from checkpoint of (\d\d:\d\d:\d\d) after host restart \(lost (\d+) s of work\)"
)
T_HOST = (
    "tests/root/test_host_restart.py::"
    "test_outgrow_up_after_a_host_restart_restores_the_notebook_from_its_last_snapshot"
)


@row("host-reboot", "host reboot", "Executing (snapshots every 10 s)", T_HOST)
def host_reboot(w: World) -> Outcome:
    """Everything of the row's instances dies with the "host" (processes, netns, veths,
    bridge, cgroups, mounts); the data dir survives. `outgrow up` again: the job comes back
    from its last periodic snapshot on a new instance, and says how much work was lost."""
    ref = w.submit(checkpoint_interval="10s")
    first = w.job(ref)["instance"]["id"]
    wait_until(
        lambda: len(w.get(f"/jobs/{ref}/snapshots").json()) >= 1,
        timeout=90,
        interval=0.5,
        what="a periodic snapshot of the job",
    )
    w.kill9()
    simulate_reboot(w.tmp, w.prefix)  # the job's log is on its volume, unmounted with it
    w.restart()
    j = w.wait_for(
        ref,
        lambda j: (
            j["status"] == "Executing"
            and any(RESTORED.search(e["reason"]) for e in j.get("events", []))
        ),
        "the job to be restored from its snapshot",
        timeout=180,
    )
    if j["instance"]["id"] == first:
        raise RowFailed("the job claims the instance that went with the host")
    live = [i for i in j["instances"] if i["ended_at"] is None]
    on_host = sorted(i.id for i in w.instances())
    if len(live) != 1 or on_host != [j["instance"]["id"]]:
        raise RowFailed(f"live instances {live}, on the host {on_host}: duplicated/leaked")
    n = len(w.counter(ref))
    wait_until(  # the restored job counts on (from its snapshot's count)
        lambda: len(w.counter(ref)) > n + 5, timeout=30, what="the restored job to count on"
    )
    m = w.counter(ref)
    # Where the count went back to the snapshot's (the log is appended to): one step back
    # at most, then continuous; never a restart from 1 on a job that had counted further.
    backs = [k for k in range(1, len(m)) if m[k] != m[k - 1] + 1]
    if len(backs) > 1 or (backs and not 1 < m[backs[0]] <= m[backs[0] - 1]):
        raise RowFailed(f"the count after the restart is not the snapshot's: {m[-12:]}")
    lost = m[backs[0] - 1] - m[backs[0]] + 1 if backs else 0
    ev = next(RESTORED.search(e["reason"]) for e in j["events"] if RESTORED.search(e["reason"]))
    assert ev is not None
    out = Outcome(
        f"Executing on {j['instance']['id']} (new)",
        f"{lost} counts since the snapshot of {ev.group(1)} (event: lost {ev.group(2)} s)",
    )
    return out
