"""cgroup v2 (unified hierarchy) implementation of :class:`~outgrow.agent.cgroups.Cgroup`.

v2 has no ``oom_kill_disable``. "OOM stall" is emulated: memory.high = L makes the kernel
throttle the tree hard at L, and memory.max = L + reserve keeps the OOM killer away long
enough for the agent to react (raise the limit, freeze, migrate).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import time
from pathlib import Path

from outgrow.agent.cgroups_base import (
    MIB,
    Cgroup,
    CpuStats,
    MemoryStats,
    OomWatch,
    Pressure,
    describe_tasks,
    parse_flat_keyed,
    parse_max,
    parse_pressure,
)
from outgrow.errors import RuntimeFailure

log = logging.getLogger(__name__)
CONTROLLERS = ("memory", "cpu")
OPTIONAL_CONTROLLERS = ("pids",)  # enabled where the host offers it
_FREEZE_POLL_MS = 10
_OOM_POLL_S = 0.02


def stall_reserve(limit_bytes: int) -> int:
    """Headroom above memory.high before memory.max: max(64 MiB, L/8)."""
    return max(64 * MIB, limit_bytes // 8)


def _le(a: int | None, b: int | None) -> bool:
    """a <= b where None means unlimited."""
    return b is None or (a is not None and a <= b)


class CgroupV2(Cgroup):
    """``<root>/<name>`` with the memory and cpu controllers enabled."""

    version = 2

    def __init__(self, root: Path, name: str) -> None:
        super().__init__(name)
        self.root = root
        self.path = root / name
        # None: not set through this object; derived from memory.high ("max" → off).
        self._stall: bool | None = None

    # ---- lifecycle

    def create(self) -> None:
        parent = self.root
        for part in self.name.split("/"):
            self._enable_controllers(parent)
            parent = parent / part
            if not parent.is_dir():
                try:
                    parent.mkdir()
                except FileExistsError:
                    pass
                except OSError as exc:
                    self._error("create", parent, exc, f"cannot create cgroup {self.name}")

    def _enable_controllers(self, parent: Path) -> None:
        control = parent / "cgroup.subtree_control"
        have = set(self._read(control).split())
        offered = set((self._read_optional(parent / "cgroup.controllers") or "").split())
        wanted = [*CONTROLLERS, *(c for c in OPTIONAL_CONTROLLERS if c in offered)]
        missing = [c for c in wanted if c not in have]
        if not missing:
            return
        self._write(
            control,
            " ".join(f"+{c}" for c in missing),
            messages={
                errno.ENOENT: f"cannot create cgroup {self.name}: the {'/'.join(missing)} "
                f"controller(s) are not available in {parent}",
                errno.EBUSY: f"cannot create cgroup {self.name}: {parent} has processes of "
                "its own, so it cannot delegate controllers (cgroup v2 no-internal-process "
                "rule); move them into a leaf cgroup first",
            },
        )

    def exists(self) -> bool:
        return self.path.is_dir()

    def remove(self, timeout: float = 5.0) -> None:
        if not self.exists():
            return
        deadline = self._wait_empty([self.path], timeout)
        self._rmdir_tree(self.path, deadline)

    # ---- memory

    def _file(self, name: str) -> Path:
        return self.path / name

    def _stall_enabled(self) -> bool:
        if self._stall is None:
            return parse_max(self._read(self._file("memory.high"))) is not None
        return self._stall

    def set_memory_limit(self, limit_bytes: int | None) -> None:
        self._check_limit(limit_bytes)
        if limit_bytes is None:
            self._apply_limits(None, None)
        elif self._stall_enabled():
            self._apply_limits(limit_bytes, limit_bytes + stall_reserve(limit_bytes))
        else:
            self._apply_limits(None, limit_bytes)

    def _apply_limits(self, high: int | None, max_: int | None) -> None:
        f_high, f_max = self._file("memory.high"), self._file("memory.max")
        old_high = parse_max(self._read(f_high))
        old_max = parse_max(self._read(f_max))
        if max_ is not None and self._read_int(self._file("memory.current")) > max_:
            # Lowering memory.max below usage makes the kernel OOM-kill. Reclaim through
            # memory.high first (never kills) and refuse if that is not enough, like v1 EBUSY.
            self._write(f_high, max_)
            usage = self._read_int(self._file("memory.current"))
            if usage > max_:
                self._write(f_high, "max" if old_high is None else old_high)
                raise RuntimeFailure(
                    f"cannot lower the memory limit of cgroup {self.name} to "
                    f"{max_ // MIB} MiB: it uses {usage // MIB} MiB that cannot be reclaimed",
                    detail=f"{f_max}: memory.current={usage} > {max_}",
                )
        high_text = "max" if high is None else str(high)
        max_text = "max" if max_ is None else str(max_)
        if _le(old_max, max_):  # raising (or same): widen max first, then move high
            self._write(f_max, max_text)
            self._write(f_high, high_text)
        else:  # lowering: throttle first, then cap
            self._write(f_high, high_text)
            self._write(f_max, max_text)

    def memory_limit(self) -> int | None:
        high = parse_max(self._read(self._file("memory.high")))
        if high is not None:
            return high
        return parse_max(self._read(self._file("memory.max")))

    def set_oom_stall(self, enabled: bool) -> None:
        limit = self.memory_limit()
        self._stall = enabled
        self.set_memory_limit(limit)

    def _stalled(self) -> bool:
        high = parse_max(self._read(self._file("memory.high")))
        if high is None:
            return False
        return self._read_int(self._file("memory.current")) >= high - MIB

    def memory_stats(self) -> MemoryStats:
        current = self._read_int(self._file("memory.current"))
        stat = parse_flat_keyed(self._read(self._file("memory.stat")))
        events = parse_flat_keyed(self._read(self._file("memory.events")))
        swap_text = self._read_optional(self._file("memory.swap.current"))
        high = parse_max(self._read(self._file("memory.high")))
        max_ = parse_max(self._read(self._file("memory.max")))
        return MemoryStats(
            usage_bytes=current,
            rss_bytes=stat.get("anon", 0),
            cache_bytes=stat.get("file", 0),
            swap_bytes=int(swap_text) if swap_text else 0,
            limit_bytes=high if high is not None else max_,
            oom_stalled=high is not None and current >= high - MIB,
            oom_kills=events.get("oom_kill", 0),
        )

    def pressure(self) -> Pressure | None:
        text = self._read_optional(self._file("memory.pressure"))
        return parse_pressure(text) if text else None

    def oom_watch(self) -> OomWatch:
        return _V2OomWatch(self)

    # ---- cpu

    def set_cpu_quota(self, vcpus: float | None, period_us: int = 100_000) -> None:
        quota = self._quota_us(vcpus, period_us)
        self._write(self._file("cpu.max"), f"{'max' if quota is None else quota} {period_us}")

    def set_pids_max(self, limit: int | None) -> None:
        path = self._file("pids.max")
        if not path.exists():
            log.warning("cgroup %s: no pids controller here: tasks are not limited", self.name)
            return
        self._write(path, "max" if limit is None else limit)

    def cpu_stats(self) -> CpuStats:
        stat = parse_flat_keyed(self._read(self._file("cpu.stat")))
        cpu_max = self._read_optional(self._file("cpu.max"))
        quota_vcpus: float | None = None
        if cpu_max:
            quota, _, period = cpu_max.strip().partition(" ")
            if quota != "max":
                quota_vcpus = int(quota) / int(period or "100000")
        return CpuStats(
            usage_ns=stat.get("usage_usec", 0) * 1000,
            quota_vcpus=quota_vcpus,
            throttled_ns=stat.get("throttled_usec", 0) * 1000,
        )

    # ---- processes

    def add_process(self, pid: int) -> None:
        self._write(
            self._file("cgroup.procs"),
            pid,
            messages={
                errno.ESRCH: f"cannot move process {pid} into cgroup {self.name}: no such process"
            },
        )

    def procs(self) -> list[int]:
        text = self._read(self._file("cgroup.procs"))
        pids = [int(p) for p in text.split()]
        for d, _, _ in os.walk(self.path):
            if Path(d) != self.path:
                pids.extend(int(p) for p in self._read(Path(d) / "cgroup.procs").split())
        return pids

    # ---- freezer

    def freeze(self, timeout: float = 5.0) -> None:
        self._write(self._file("cgroup.freeze"), "1")
        events = self._file("cgroup.events")
        deadline = time.monotonic() + timeout
        try:
            fd = os.open(events, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self._error("read", events, exc)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLPRI | select.POLLERR)
            while not self.frozen():
                if time.monotonic() >= deadline:
                    pids = self.procs()
                    raise RuntimeFailure(
                        f"cgroup {self.name} did not freeze within {timeout:g}s "
                        "(freeze left requested; thaw() to resume)",
                        detail=f"{events}: frozen 0\n{describe_tasks(pids)}",
                    )
                if poller.poll(_FREEZE_POLL_MS):
                    os.pread(fd, 4096, 0)  # re-arm the kernfs notification
        finally:
            os.close(fd)

    def thaw(self) -> None:
        self._write(self._file("cgroup.freeze"), "0")

    def frozen(self) -> bool:
        return parse_flat_keyed(self._read(self._file("cgroup.events"))).get("frozen") == 1

    # ---- CRIU

    def criu_cgroup_roots(self) -> list[str]:
        return [f"/{self.name}"]

    def freezer_path(self) -> str:
        return str(self.path)


class _V2OomWatch(OomWatch):
    """Polls memory.events (POLLPRI wakes us on every event) and checks the stall condition
    at least every 20 ms."""

    def __init__(self, cg: CgroupV2) -> None:
        self._cg = cg
        events = cg.path / "memory.events"
        try:
            self._fd: int | None = os.open(events, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            cg._error("read", events, exc)
        self._poller = select.poll()
        self._poller.register(self._fd, select.POLLPRI | select.POLLERR)

    def wait(self, timeout: float) -> bool:
        if self._fd is None:
            raise RuntimeFailure(f"OOM watch of cgroup {self._cg.name} is closed")
        deadline = time.monotonic() + timeout
        while True:
            if self._cg._stalled():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._poller.poll(min(remaining, _OOM_POLL_S) * 1000):
                try:
                    os.pread(self._fd, 4096, 0)
                except OSError:
                    time.sleep(min(remaining, _OOM_POLL_S))  # file gone; _stalled() will say

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
