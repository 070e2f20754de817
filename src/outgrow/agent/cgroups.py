"""A small interface over cgroup v1 and v2: confine a job's process tree to an instance size,
read its metrics, freeze it, and stall it at its memory limit instead of OOM-killing it.

    fs = detect()                    # parses /proc/self/mounts
    cg = fs.open("og-3f9a2c1d")
    cg.create()
    cg.set_oom_stall(True)
    cg.set_memory_limit(4 << 30)
    cg.set_cpu_quota(2.0)
    cg.add_process(pid)

Nothing else in outgrow touches /sys/fs/cgroup. Every file error becomes a
:class:`~outgrow.errors.RuntimeFailure` naming the cgroup (path and errno in ``detail``).
Tests build a fake tree with :meth:`CgroupFS.v2` / :meth:`CgroupFS.v1`.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from pathlib import Path

from outgrow.agent.cgroups_base import (
    Cgroup,
    CpuStats,
    MemoryStats,
    OomWatch,
    Pressure,
    check_name,
)
from outgrow.agent.cgroups_v1 import USED_CONTROLLERS, CgroupV1
from outgrow.agent.cgroups_v2 import CgroupV2, stall_reserve
from outgrow.agent.mounts import unescape
from outgrow.errors import RuntimeFailure

__all__ = [
    "Cgroup",
    "CgroupFS",
    "CpuStats",
    "MemoryStats",
    "OomWatch",
    "Pressure",
    "check_name",
    "detect",
    "stall_reserve",
]

V1_CONTROLLERS = frozenset(
    {
        "blkio",
        "cpu",
        "cpuacct",
        "cpuset",
        "devices",
        "freezer",
        "hugetlb",
        "memory",
        "misc",
        "net_cls",
        "net_prio",
        "perf_event",
        "pids",
        "rdma",
    }
)
_SYS_FS_CGROUP = Path("/sys/fs/cgroup")


class CgroupFS:
    """The cgroup hierarchy (or hierarchies) cgroups are created in.

    ``root`` is the cgroup2 directory cgroups are made under (v2), or the directory holding
    the v1 controller mounts (v1, normally /sys/fs/cgroup). v1 also has ``mounts``
    (controller → mount point) and ``unified`` (the cgroup2 mount of a hybrid host, or None).
    """

    version: int
    root: Path

    def __init__(
        self,
        version: int,
        root: Path,
        mounts: Mapping[str, Path] | None = None,
        unified: Path | None = None,
    ) -> None:
        self.version = version
        self.root = root
        self.mounts: dict[str, Path] = dict(mounts or {})
        self.unified = unified
        # mount point → its controller list as the kernel (and CRIU) name it: "cpu,cpuacct"
        self._controller_strings: dict[Path, str] = {}
        for controller, mount in self.mounts.items():
            prev = self._controller_strings.get(mount)
            self._controller_strings[mount] = f"{prev},{controller}" if prev else controller

    @classmethod
    def v2(cls, root: Path = _SYS_FS_CGROUP) -> CgroupFS:
        return cls(2, Path(root))

    @classmethod
    def v1(cls, mounts: Mapping[str, Path], unified: Path | None = None) -> CgroupFS:
        """``mounts``: controller → mount point; co-mounted controllers share a path (list
        them in the kernel's order, e.g. cpu before cpuacct)."""
        if "memory" not in mounts:
            raise RuntimeFailure(
                "the cgroup v1 memory controller is not mounted",
                detail=f"v1 mounts: {dict(mounts)}",
            )
        paths = {c: Path(p) for c, p in mounts.items()}
        return cls(1, paths["memory"].parent, paths, Path(unified) if unified else None)

    def __repr__(self) -> str:
        return f"<CgroupFS v{self.version} {self.root}>"

    def open(self, name: str) -> Cgroup:
        """The cgroup ``name`` (relative to the hierarchy root); does not create it."""
        if self.version == 2:
            return CgroupV2(self.root, name)
        return CgroupV1(name, self.mounts, self._controller_strings, self.unified)

    def _hierarchy_roots(self) -> builtins.list[Path]:
        if self.version == 2:
            return [self.root]
        roots: builtins.list[Path] = []
        for c in USED_CONTROLLERS:
            mount = self.mounts.get(c)
            if mount is not None and mount not in roots:
                roots.append(mount)
        if self.unified is not None:
            roots.append(self.unified)
        return roots

    def list(self, prefix: str) -> builtins.list[str]:
        """Names of top-level cgroups starting with ``prefix`` in any used hierarchy."""
        names: set[str] = set()
        for root in self._hierarchy_roots():
            try:
                entries = builtins.list(root.iterdir())
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise RuntimeFailure(
                    f"cannot list cgroups in {root}", detail=f"listdir {root}: {exc}"
                ) from exc
            names.update(e.name for e in entries if e.name.startswith(prefix) and e.is_dir())
        return sorted(names)


def detect(mounts_file: Path = Path("/proc/self/mounts")) -> CgroupFS:
    """Find the cgroup layout from the mount table.

    v2 when /sys/fs/cgroup itself is cgroup2; v1 (with the unified mount for PSI, if any)
    when a v1 memory controller is mounted; otherwise v2 on a cgroup2 mount whose
    cgroup.controllers offers memory.
    """
    try:
        text = Path(mounts_file).read_text()
    except OSError as exc:
        raise RuntimeFailure(
            "cannot read the mount table", detail=f"read {mounts_file}: {exc}"
        ) from exc
    cgroup2: list[Path] = []
    v1: dict[str, Path] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mountpoint, fstype, options = Path(unescape(fields[1])), fields[2], fields[3]
        if fstype == "cgroup2":
            cgroup2.append(mountpoint)
        elif fstype == "cgroup":
            for opt in options.split(","):
                if opt in V1_CONTROLLERS:
                    v1.setdefault(opt, mountpoint)
    if _SYS_FS_CGROUP in cgroup2:
        return CgroupFS.v2(_SYS_FS_CGROUP)
    if "memory" in v1:
        unified = next((m for m in cgroup2 if m == _SYS_FS_CGROUP / "unified"), None)
        return CgroupFS.v1(v1, unified=unified or (cgroup2[0] if cgroup2 else None))
    for mount in cgroup2:
        try:
            controllers = (mount / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if "memory" in controllers:
            return CgroupFS.v2(mount)
    raise RuntimeFailure(
        "no usable cgroup hierarchy: neither a cgroup2 mount with the memory controller "
        "nor a cgroup v1 memory controller is mounted",
        detail=f"cgroup2 mounts: {[str(m) for m in cgroup2]}; v1 controllers: {sorted(v1)}",
    )
