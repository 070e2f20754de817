"""cgroup v1 implementation of :class:`~outgrow.agent.cgroups.Cgroup`.

A v1 cgroup is the same relative directory in the memory, cpu, cpuacct and freezer
hierarchies (a co-mounted ``cpu,cpuacct`` is one directory). On a hybrid host the
same-named directory is also made in the cgroup2 (unified) mount and the processes are
put there too, only so that its ``memory.pressure`` (PSI) describes the job.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import time
from pathlib import Path

from outgrow.agent.cgroups_base import (
    Cgroup,
    CpuStats,
    MemoryStats,
    OomWatch,
    Pressure,
    describe_tasks,
    parse_flat_keyed,
    parse_pressure,
    parse_v1_limit,
    read_pids,
)
from outgrow.errors import RuntimeFailure

log = logging.getLogger(__name__)
#: The v1 controllers a cgroup is made in, in this order.
USED_CONTROLLERS = ("memory", "cpu", "cpuacct", "freezer", "pids")
_FREEZE_POLL_S = 0.01
_OOM_RECHECK_S = 0.25


class CgroupV1(Cgroup):
    version = 1

    def __init__(
        self,
        name: str,
        mounts: dict[str, Path],
        controller_strings: dict[Path, str],
        unified: Path | None,
    ) -> None:
        super().__init__(name)
        self._mounts = mounts
        self._controller_strings = controller_strings
        self._unified = unified

    # ---- directories

    def _dir(self, controller: str) -> Path:
        mount = self._mounts.get(controller)
        if mount is None:
            raise RuntimeFailure(
                f"cgroup {self.name}: the v1 {controller} controller is not mounted",
                detail=f"mounted v1 controllers: {sorted(self._mounts)}",
            )
        return mount / self.name

    def _controller_mounts(self) -> list[Path]:
        """Distinct mount points of the used controllers (cpu,cpuacct co-mounted → one)."""
        out: list[Path] = []
        for c in USED_CONTROLLERS:
            mount = self._mounts.get(c)
            if mount is not None and mount not in out:
                out.append(mount)
        return out

    def _dirs(self) -> list[Path]:
        """Every directory of this cgroup: one per used hierarchy, plus the unified one."""
        dirs = [m / self.name for m in self._controller_mounts()]
        if self._unified is not None:
            dirs.append(self._unified / self.name)
        return dirs

    def _unified_dir(self) -> Path | None:
        return None if self._unified is None else self._unified / self.name

    # ---- lifecycle

    def create(self) -> None:
        for mount in self._controller_mounts():
            self._mkdir(mount / self.name)
        unified = self._unified_dir()
        if unified is not None:  # only for PSI: best effort
            try:
                unified.mkdir(exist_ok=True)
            except OSError as exc:
                log.warning("cgroup %s: no PSI, cannot create %s: %s", self.name, unified, exc)

    def exists(self) -> bool:
        """True if the cgroup is in any hierarchy (a half-removed leak counts)."""
        return any(d.is_dir() for d in self._dirs())

    def remove(self, timeout: float = 5.0) -> None:
        dirs = [d for d in self._dirs() if d.is_dir()]
        if not dirs:
            return
        deadline = self._wait_empty(dirs, timeout)
        for d in dirs:
            self._rmdir_tree(d, deadline)

    # ---- memory

    def set_memory_limit(self, limit_bytes: int | None) -> None:
        self._check_limit(limit_bytes)
        path = self._dir("memory") / "memory.limit_in_bytes"
        value = -1 if limit_bytes is None else limit_bytes
        self._write(
            path,
            value,
            messages={
                errno.EBUSY: f"cannot lower the memory limit of cgroup {self.name} to "
                f"{value >> 20} MiB: it uses more than that and the kernel could not "
                "reclaim enough",
                errno.EINVAL: f"invalid memory limit {value} for cgroup {self.name} (is "
                "memory.memsw.limit_in_bytes lower?)",
            },
        )

    def memory_limit(self) -> int | None:
        return parse_v1_limit(self._read(self._dir("memory") / "memory.limit_in_bytes"))

    def set_oom_stall(self, enabled: bool) -> None:
        self._write(self._dir("memory") / "memory.oom_control", "1" if enabled else "0")

    def _oom_control(self) -> dict[str, int]:
        return parse_flat_keyed(self._read(self._dir("memory") / "memory.oom_control"))

    def _stalled(self) -> bool:
        return self._oom_control().get("under_oom") == 1

    def memory_stats(self) -> MemoryStats:
        mem = self._dir("memory")
        usage = self._read_int(mem / "memory.usage_in_bytes")
        stat = parse_flat_keyed(self._read(mem / "memory.stat"))
        oom = self._oom_control()
        # total_rss already includes total_rss_huge (THPs are counted in NR_ANON_MAPPED).
        return MemoryStats(
            usage_bytes=usage,
            rss_bytes=stat.get("total_rss", stat.get("rss", 0)),
            cache_bytes=stat.get("total_cache", stat.get("cache", 0)),
            swap_bytes=stat.get("total_swap", stat.get("swap", 0)),
            limit_bytes=parse_v1_limit(self._read(mem / "memory.limit_in_bytes")),
            oom_stalled=oom.get("under_oom") == 1,
            oom_kills=oom.get("oom_kill", 0),
        )

    def pressure(self) -> Pressure | None:
        if self._unified is None:
            return None
        path = self._unified / self.name / "memory.pressure"
        if not path.parent.is_dir():
            return None
        text = self._read_optional(path)
        return parse_pressure(text) if text else None

    def oom_watch(self) -> OomWatch:
        return _V1OomWatch(self)

    # ---- cpu

    def set_cpu_quota(self, vcpus: float | None, period_us: int = 100_000) -> None:
        quota = self._quota_us(vcpus, period_us)
        cpu = self._dir("cpu")
        self._write(cpu / "cpu.cfs_period_us", period_us)
        self._write(cpu / "cpu.cfs_quota_us", -1 if quota is None else quota)

    def set_pids_max(self, limit: int | None) -> None:
        if "pids" not in self._mounts:
            log.warning("cgroup %s: no v1 pids controller here: tasks are not limited", self.name)
            return
        self._write(self._dir("pids") / "pids.max", "max" if limit is None else limit)

    def cpu_stats(self) -> CpuStats:
        cpu = self._dir("cpu")
        quota = self._read_int(cpu / "cpu.cfs_quota_us")
        period = self._read_int(cpu / "cpu.cfs_period_us")
        stat = parse_flat_keyed(self._read(cpu / "cpu.stat"))
        return CpuStats(
            usage_ns=self._read_int(self._dir("cpuacct") / "cpuacct.usage"),
            quota_vcpus=None if quota < 0 else quota / period,
            throttled_ns=stat.get("throttled_time", 0),
        )

    # ---- processes

    def add_process(self, pid: int) -> None:
        for mount in self._controller_mounts():
            self._write(
                mount / self.name / "cgroup.procs",
                pid,
                messages={
                    errno.ESRCH: f"cannot move process {pid} into cgroup {self.name}: "
                    "no such process"
                },
            )
        unified = self._unified_dir()
        if unified is not None and unified.is_dir():  # only for PSI: best effort
            try:
                (unified / "cgroup.procs").write_text(str(pid))
            except OSError as exc:
                log.warning("cgroup %s: cannot add %d to %s: %s", self.name, pid, unified, exc)

    def procs(self) -> list[int]:
        """PIDs in this cgroup (and any child cgroup) in any of its hierarchies."""
        if not self.exists():
            self._read(self._dir("memory") / "cgroup.procs")  # raises "does not exist"
        pids: set[int] = set()
        for top in self._dirs():
            for d, _, _ in os.walk(top):
                pids.update(read_pids(Path(d) / "cgroup.procs"))
        return sorted(pids)

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        super().kill_all(sig)
        # A v1-frozen (or freezing) task acts on SIGKILL only once thawed; v2 kills it.
        if sig == signal.SIGKILL and self._freezer_state() != "THAWED":
            self.thaw()

    # ---- freezer

    def _freezer_state(self) -> str:
        """THAWED, FREEZING or FROZEN; THAWED if only the freezer dir is gone (a leak)."""
        path = self._dir("freezer") / "freezer.state"
        if not path.parent.is_dir() and self.exists():
            return "THAWED"
        return self._read(path).strip()

    def freeze(self, timeout: float = 5.0) -> None:
        state_file = self._dir("freezer") / "freezer.state"
        self._write(state_file, "FROZEN")
        deadline = time.monotonic() + timeout
        while (state := self._freezer_state()) != "FROZEN":
            if time.monotonic() >= deadline:
                pids = self.procs()
                raise RuntimeFailure(
                    f"cgroup {self.name} did not freeze within {timeout:g}s (still {state}; "
                    "freeze left requested, thaw() to resume)",
                    detail=f"{state_file}: {state}\n{describe_tasks(pids)}",
                )
            time.sleep(_FREEZE_POLL_S)

    def thaw(self) -> None:
        self._write(self._dir("freezer") / "freezer.state", "THAWED")

    def frozen(self) -> bool:
        return self._freezer_state() == "FROZEN"

    # ---- CRIU

    def criu_cgroup_roots(self) -> list[str]:
        roots = [f"{self._controller_strings[m]}:/{self.name}" for m in self._controller_mounts()]
        if self._unified is not None:
            # The job is also in the unified (cgroup2) hierarchy for PSI; CRIU names that
            # hierarchy's controller "" (measured: ":/<name>" moves it, "unified:" does not).
            roots.append(f":/{self.name}")
        return roots

    def freezer_path(self) -> str:
        return str(self._dir("freezer"))


class _V1OomWatch(OomWatch):
    """An eventfd registered through cgroup.event_control on memory.oom_control; the kernel
    signals it when the cgroup enters OOM (and at once if it already is)."""

    def __init__(self, cg: CgroupV1) -> None:
        self._cg = cg
        mem = cg._dir("memory")
        self._efd: int | None = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._cfd: int | None = None
        try:
            try:
                self._cfd = os.open(mem / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                cg._error("read", mem / "memory.oom_control", exc)
            cg._write(mem / "cgroup.event_control", f"{self._efd} {self._cfd}")
        except BaseException:
            self.close()
            raise

    def wait(self, timeout: float) -> bool:
        efd = self._efd
        if efd is None:
            raise RuntimeFailure(f"OOM watch of cgroup {self._cg.name} is closed")
        deadline = time.monotonic() + timeout
        while True:
            # The eventfd also fires for OOMs the kernel resolves by killing, and on cgroup
            # removal: the answer is always under_oom.
            if self._cg._stalled():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ready, _, _ = select.select([efd], [], [], min(remaining, _OOM_RECHECK_S))
            if ready:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(efd)

    def close(self) -> None:
        for attr in ("_cfd", "_efd"):
            fd = getattr(self, attr)
            if fd is not None:
                os.close(fd)
                setattr(self, attr, None)
