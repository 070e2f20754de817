"""One fault-matrix row's world: its own resource prefix and address pool, a data dir,
the CRIU wrapper, a real ``outgrow up`` child (``tests/cp_server.ServerProcess``) it may
kill -9, and the checks every row ends with (the job's state, work lost, nothing
duplicated, nothing left behind)."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from criu_wrapper import CriuWrapper

from conftest import free_pool, leftovers, make_settings, unique_prefix
from cp_server import ServerProcess, free_port
from outgrow.providers.base import InstanceInfo
from outgrow.providers.local.hoststate import Pools, bridge_name
from outgrow.providers.local.provider import LocalProvider
from waiting import wait_for_value, wait_until

# A batch job that prints 1, 2, 3, … every 50 ms: a restart shows as the count starting
# again at 1, a duplicate as a number printed twice, lost work as a gap.
COUNTER = (
    "import time\ni = 0\nwhile True:\n    i += 1\n    print(i, flush=True)\n    time.sleep(0.05)\n"
)


ENDED = {"Cancelled", "Completed", "FailToComplete", "FailToExecute", "NoAvailableHost"}


class RowFailed(AssertionError):
    """The row's fault was handled wrongly (the table says why)."""


@dataclass
class Outcome:
    outcome: str  # the job's state after, in words
    work_lost: str = "none"
    notes: list[str] = field(default_factory=list)


class World:
    def __init__(
        self, root: Path, name: str, tmpfs_mib: int = 0, tmpfs_at: str = "", **extra_env: str
    ):
        self.prefix = unique_prefix()
        self.pool = free_pool(self.prefix)
        self.tmp = root / f"{name}-{self.prefix}"
        self.tmp.mkdir(parents=True)
        self.mounts: list[Path] = []  # a row's own mounts (disk full), unmounted at close
        if tmpfs_mib:  # the data dir (or a directory of it) on a small filesystem of its own
            self.small = self.tmp / tmpfs_at
            self.small.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={tmpfs_mib}m", "outgrow-faults", self.small],
                check=True,
            )
            self.mounts.append(self.small)
        self.criu = CriuWrapper(self.tmp / "criu-wrapper")
        env = {"OUTGROW_CRIU_PATH": str(self.criu.path), **extra_env}
        self.srv = ServerProcess(self.tmp, self.prefix, free_port(), self.pool, extra_env=env)
        self._token: str | None = None

    # -- the control plane -------------------------------------------------------------
    def start(self) -> None:
        self.srv.start()
        self._token = self.srv.token()

    def kill9(self) -> None:
        self.srv.kill9()

    def restart(self) -> None:
        self.srv.start()

    @property
    def h(self) -> dict[str, str]:
        assert self._token
        return {"Authorization": f"Bearer {self._token}"}

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.srv.api + path, headers=self.h, timeout=30)

    def post(self, path: str, body: Any = None) -> httpx.Response:
        return httpx.post(self.srv.api + path, headers=self.h, json=body, timeout=30)

    def job(self, ref: str) -> dict[str, Any]:
        r = self.get(f"/jobs/{ref}")
        r.raise_for_status()
        j: dict[str, Any] = r.json()
        return j

    def wait(self, ref: str, st: set[str], timeout: float = 120) -> dict[str, Any]:
        return wait_for_value(
            lambda: self.job(ref),
            lambda j: j["status"] in st,
            timeout=timeout,
            interval=0.1,
            what=f"job {ref} to be {' or '.join(sorted(st))}",
            ignore=(httpx.HTTPError,),
            context=lambda: self.srv.log()[-2000:],
        )

    def wait_for(self, ref: str, pred: Any, what: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for_value(
            lambda: self.job(ref), pred, timeout=timeout, interval=0.02, what=what
        )

    def submit(self, name: str = "counter", wait: bool = True, **fields: Any) -> str:
        body = {"name": name, "image": "python", "script": COUNTER, "mem": "0.25", **fields}
        r = self.post("/jobs", body)
        if r.status_code != 201 and r.status_code != 202 and r.status_code != 200:
            raise RowFailed(f"submit answered {r.status_code}: {r.text}")
        ref = str(r.json()["id"])
        if wait:
            self.wait(ref, {"Executing"})
        return ref

    @staticmethod
    def accepted(r: httpx.Response, code: int = 202) -> httpx.Response:
        """``r`` if it answered ``code``; else the row fails naming the request and answer."""
        if r.status_code != code:
            req = f"{r.request.method} {r.request.url.path}"
            raise RowFailed(f"{req} answered {r.status_code}, expected {code}: {r.text}")
        return r

    def migrate(self, ref: str, mem: float = 0.5) -> httpx.Response:
        return self.post(f"/jobs/{ref}/migrate", {"mem": mem})

    # -- the machine's view --------------------------------------------------------------
    def provider(self) -> LocalProvider:
        return LocalProvider(
            make_settings(self.tmp, self.prefix, address_pool=self.pool, criu_path=self.criu.path)
        )

    def instances(self) -> list[InstanceInfo]:
        return self.provider().list_instances()

    def agent_pid(self, iid: str) -> int:
        return int((self.tmp / "instances" / iid / "agent.pid").read_text())

    def counter(self, ref: str) -> list[int]:
        """What the job printed, read from its log file (so also while the control plane
        is down); a line caught half-written is left out."""
        path = self.tmp / "jobs" / ref / "logs" / "stdout.log"
        text = path.read_text() if path.exists() else ""
        return [int(x) for x in text.split("\n")[:-1] if x.strip().isdigit()]

    # -- what every row checks -------------------------------------------------------------
    def check_runs_on(self, ref: str, want_instance: str | None = None) -> Outcome:
        """The job is Executing on exactly one live instance (the one given, if given),
        which is the only instance of this row, and counts on without a restart, a gap or
        a duplicate."""
        j = self.wait(ref, {"Executing"})
        live = [i for i in j["instances"] if i["ended_at"] is None]
        cur = j["instance"]["id"]
        if len(live) != 1 or live[0]["id"] != cur:
            raise RowFailed(f"live instances of the job: {live} (current {cur})")
        on_host = sorted(i.id for i in self.instances())
        if on_host != [cur]:
            raise RowFailed(f"instances on the host {on_host}, the job's {cur}: duplicated/leaked")
        if want_instance is not None and cur != want_instance:
            raise RowFailed(f"the job runs on {cur}, expected {want_instance}")
        n = self.counter(ref)
        wait_until(
            lambda: self.counter(ref)[-1] > n[-1] + 5,
            timeout=30,
            what=f"the job to count on past {n[-1]}",
        )
        return Outcome(f"Executing on {cur}", self.work_lost(ref))

    def work_lost(self, ref: str) -> str:
        m = self.counter(ref)
        if m == list(range(1, len(m) + 1)):
            return "none"
        restarts = sum(1 for a, b in itertools.pairwise(m) if b <= a)
        gaps = sum(1 for a, b in itertools.pairwise(m) if b > a + 1)
        raise RowFailed(f"the count was not continuous: {restarts} restart(s), {gaps} gap(s)")

    def cancel(self, ref: str) -> None:
        self.post(f"/jobs/{ref}/cancel")
        self.wait(ref, {"Cancelled", "Completed", "FailToComplete", "FailToExecute"})

    # -- cleaning up ---------------------------------------------------------------------
    def processes(self) -> list[str]:
        """Every process whose command line names this row's data dir or prefix."""
        out = []
        marks = (str(self.tmp), f"{self.prefix}-")
        for p in Path("/proc").iterdir():
            if not p.name.isdigit() or int(p.name) == os.getpid():
                continue
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(m in cmd for m in marks):
                out.append(f"pid {p.name}: {cmd[:100]}")
        return out

    def close(self) -> list[str]:
        """Stop everything of this row. Returns what the product left behind once the
        row's jobs ended and its control plane stopped (instance netns, cgroups, agent or
        job processes, loops, mounts; the host bridge stays by design); then removes all
        of it and checks that the removal itself left nothing."""
        for d in list(self.criu.dir.glob("hold-*")):  # nothing may wait at a hold any more
            (self.criu.dir / d.name.replace("hold-", "release-")).touch()
        self._end_jobs()
        self.srv.stop()
        mine = {f"link {bridge_name(self.prefix)}"} | {f"mount {m}" for m in self.mounts}

        def remaining() -> list[str]:
            found = leftovers(self.prefix, str(self.tmp)) + self.processes()
            return [x for x in found if x not in mine]

        # What goes away by itself soon (a lazily unmounted volume's loop device, freed
        # with its last user) is not left behind: give it 15 s.
        try:
            left = wait_for_value(remaining, lambda v: not v, timeout=15, what="", interval=0.5)
        except AssertionError:
            left = remaining()
        try:
            self.provider().teardown()
        finally:
            for m in reversed(self.mounts):
                subprocess.run(["umount", "-l", str(m)], capture_output=True)
            Pools().release(self.prefix)
        for line in self.processes():  # our own row's processes only (named by our dir)
            pid = int(line.split()[1].rstrip(":"))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        after = [x for x in leftovers(self.prefix, str(self.tmp)) if x not in mine]
        return left + [f"{x} (even after teardown)" for x in after]

    def _end_jobs(self) -> None:
        """A row that failed half-way left its job running: cancel every job still live
        (if the control plane answers), so what remains after is the product's leftover."""
        if self.srv.proc is None or self.srv.proc.poll() is not None or not self._token:
            return
        try:
            jobs = self.get("/jobs").json()
            live = [j["id"] for j in jobs if j["status"] not in ENDED]
            for ref in live:
                self.post(f"/jobs/{ref}/cancel")
            for ref in live:
                self.wait(ref, ENDED, timeout=60)
        except (httpx.HTTPError, AssertionError):
            pass  # the control plane is unwell: the teardown removes what is left

    def job_processes(self) -> list[int]:
        """Pids in a cgroup of this row's prefix (any hierarchy): jobs, agents, CRIU."""
        out = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if f"/{self.prefix}-" in (p / "cgroup").read_text():
                        out.append(int(p.name))
                except OSError:
                    continue
        return out


def elapsed(t0: float) -> float:
    return round(time.monotonic() - t0, 1)
