"""A CRIU run dies with the agent that started it (PR_SET_PDEATHSIG): an orphaned dump
would go on and leave the job stopped with nobody to resume it. Tested with a real
process tree: a parent that starts a long child through the same pre-exec hook, then is
killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from waiting import wait_until

PARENT = r"""
import os, subprocess, sys, time
from outgrow.agent.checkpoint import _dies_with
child = subprocess.Popen(["sleep", "300"], preexec_fn=_dies_with(os.getpid()))
print(child.pid, flush=True)
child.wait()
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_a_criu_run_is_killed_with_its_agent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        wait_until(lambda: not _alive(child), timeout=10, what=f"child {child} to die")
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
