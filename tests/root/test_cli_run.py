"""`outgrow run` for real, through the console script: a batch job's exit code and output,
evadeOOM moves on a tiny instance, and Ctrl-C; nothing may be left on the machine."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from conftest import free_pool, leftovers, unique_prefix
from waiting import wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

_CONSOLE = Path(sys.executable).parent / "outgrow"
OUTGROW = [str(_CONSOLE)] if _CONSOLE.exists() else [sys.executable, "-m", "outgrow.cli"]


class Env:
    def __init__(self, tmp: Path):
        self.prefix = unique_prefix()
        self.data = tmp / "data"
        self.vars = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OUTGROW_")},
            "OUTGROW_DATA_DIR": str(self.data),
            "OUTGROW_RESOURCE_PREFIX": self.prefix,
            "OUTGROW_ADDRESS_POOL": free_pool(self.prefix),
        }
        self.tmp = tmp

    def script(self, text: str) -> str:
        path = self.tmp / f"job-{random.randint(0, 1 << 30)}.py"
        path.write_text(text)
        return str(path)

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*OUTGROW, *args], env=self.vars, capture_output=True, text=True, timeout=timeout
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*OUTGROW, *args],
            env=self.vars,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def nothing_left(self) -> None:
        """No instance resources; the host bridge stays until `cleanup --all`."""
        left = [x for x in leftovers(self.prefix) if x != f"link {self.prefix}-br0"]
        assert left == [], f"leaked: {left}"
        inst = self.data / "instances"
        assert not inst.exists() or list(inst.iterdir()) == []


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    r = e.run("cleanup", "--all", "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["removed_instances"] == [], "`run` left instances behind"
    assert leftovers(e.prefix) == []


def events(stdout: str) -> list[dict[str, Any]]:
    """--json: every stdout line is one JSON event."""
    return [json.loads(line) for line in stdout.splitlines()]


def test_batch_job_exit_code_and_output(env: Env) -> None:
    script = env.script(
        "import sys\n"
        "for i in range(5):\n"
        "    print(f'out line {i}', flush=True)\n"
        "    print(f'err line {i}', file=sys.stderr, flush=True)\n"
        "sys.exit(3)\n"
    )
    r = env.run("run", "-i", "python", "-t", "lc.nano", "--script", script)
    assert r.returncode == 3, r.stderr
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("out line")] == [
        f"out line {i}" for i in range(5)
    ]
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("err line")] == [
        f"err line {i}" for i in range(5)
    ]
    assert "running on" in r.stderr and "(lc.nano, 0.25 vCPU 256 MiB)" in r.stderr
    assert "exit status 3" in r.stderr
    logs = next(ln for ln in r.stderr.splitlines() if ln.strip().startswith("logs:"))
    stdout_log = Path(logs.split()[1])
    assert stdout_log.read_text().splitlines() == [f"out line {i}" for i in range(5)]
    env.nothing_left()


def test_evade_oom_moves_the_job_until_it_fits(env: Env) -> None:
    steps = [32] * 18 + [24]  # 600 MiB in 32 MiB steps, on a 256 MiB instance
    script = env.script(
        "import numpy as np\n"
        "chunks = []; total = 0\n"
        f"for i, mib in enumerate({steps}):\n"
        "    a = np.ones(mib * 1024 * 1024 // 8)\n"
        "    chunks.append(a); total += int(a.sum())\n"
        "    print(f'step {i} {sum(c.nbytes for c in chunks) >> 20} MiB', flush=True)\n"
        "print('SUM', total, flush=True)\n"
    )
    t0 = time.monotonic()
    r = env.run("run", "-i", "python", "-t", "lc.nano", "--script", script, "--json")
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    evs = events(r.stdout)
    assert evs[0]["event"] == "started" and evs[0]["type"] == "lc.nano"
    moves = [e for e in evs if e["event"] == "migrated"]
    assert moves, evs
    assert all(m["reason"].startswith("evadeOOM: memory limit reached") for m in moves)
    assert moves[0]["from_type"] == "lc.nano" and moves[-1]["memory_gib"] >= 0.75
    assert [e["event"] for e in evs] == ["started"] + ["migrated"] * len(moves) + ["exited"]
    assert evs[-1]["exit_code"] == 0 and evs[-1]["phase"] == "exited"
    # --json: the job's output goes to stderr, the events alone to stdout
    assert f"SUM {600 * 1024 * 1024 // 8}" in r.stderr.splitlines()
    assert [ln.split()[1] for ln in r.stderr.splitlines() if ln.startswith("step ")] == [
        str(i) for i in range(len(steps))
    ]
    assert "Killed" not in r.stderr and "out of memory" not in r.stderr
    for m in moves:
        # plain: the memory is in the checkpoint; post-copy (moveMode auto picks it for an
        # urgent evadeOOM move): the target pulls it after the restore
        moved = m["lazy_pages"] * 4096 if m["mode"] == "postcopy" else m["checkpoint_bytes"]
        assert m["downtime_s"] < 10 and moved > 100 * 1024**2, m
    timings = ", ".join(
        f"{m['from_type']}→{m['to_type']} downtime {m['downtime_s']:.2f} s "
        f"total {m['total_s']:.2f} s ({m['checkpoint_bytes'] >> 20} MiB)"
        for m in moves
    )
    print(f"\nevadeOOM run took {elapsed:.1f} s: {timings}")
    env.nothing_left()


def _lines(stream: IO[str], q: queue.Queue[str | None]) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


def test_sigint_stops_the_job_and_deletes_the_instance(env: Env) -> None:
    script = env.script(
        "import time\ni = 0\nwhile True:\n    i += 1\n    print(i, flush=True)\n"
        "    time.sleep(0.1)\n"
    )
    proc = env.popen("run", "-i", "python", "-t", "lc.nano", "--script", script, "--json")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_lines, args=(proc.stdout, q), daemon=True).start()
        errs: list[str] = []
        reader = threading.Thread(target=lambda: errs.extend(proc.stderr or []), daemon=True)
        reader.start()
        first = q.get(timeout=120)
        assert first is not None, "".join(errs)
        assert json.loads(first)["event"] == "started"
        wait_until(  # the job runs and its output streams
            lambda: any(ln.strip() == "3" for ln in errs),
            timeout=60,
            what="the job to print 3 lines",
            context=lambda: "".join(errs)[-2000:],
        )
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=15)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    assert rc == 130, "".join(errs)
    assert took < 15
    rest = []
    while (item := q.get(timeout=5)) is not None:
        rest.append(json.loads(item))
    assert [e["event"] for e in rest] == ["interrupted"] and rest[0]["signal"] == signal.SIGINT
    assert any(ln.strip() == "3" for ln in errs), "the job's output was not streamed"
    env.nothing_left()
