"""Shared parts of the cgroup interface: result types, the ``Cgroup`` ABC and file helpers.

Import the public names from :mod:`outgrow.agent.cgroups`; this module only exists so the
v1 and v2 implementations can share code without importing each other.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self

from outgrow.errors import ConfigError, RuntimeFailure

MIB = 1 << 20
#: v1 reports "no limit" as PAGE_COUNTER_MAX * PAGE_SIZE (9223372036854771712 on x86-64).
_V1_UNLIMITED = 1 << 62
_POLL_INTERVAL = 0.01


@dataclass(frozen=True)
class MemoryStats:
    usage_bytes: int
    rss_bytes: int
    cache_bytes: int
    swap_bytes: int
    limit_bytes: int | None
    oom_stalled: bool
    oom_kills: int


@dataclass(frozen=True)
class CpuStats:
    usage_ns: int
    quota_vcpus: float | None
    throttled_ns: int


@dataclass(frozen=True)
class Pressure:
    some_avg10: float
    full_avg10: float
    some_total_us: int
    full_total_us: int


class OomWatch(ABC):
    """Waits for a cgroup to become OOM-stalled. Close it (or use ``with``) when done."""

    @abstractmethod
    def wait(self, timeout: float) -> bool:
        """True as soon as the cgroup is OOM-stalled, False when ``timeout`` seconds pass."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- parsing helpers


def parse_max(text: str) -> int | None:
    """``max`` → None, otherwise the integer."""
    text = text.strip()
    return None if text == "max" else int(text)


def parse_v1_limit(text: str) -> int | None:
    value = int(text.strip())
    return None if value < 0 or value >= _V1_UNLIMITED else value


def parse_flat_keyed(text: str) -> dict[str, int]:
    """Parse ``key value`` lines (memory.stat, cpu.stat, memory.events, memory.oom_control)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def parse_pressure(text: str) -> Pressure:
    """Parse a PSI file: ``some avg10=0.12 avg60=… avg300=… total=123`` plus a ``full`` line."""
    values: dict[str, tuple[float, int]] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        fields = dict(item.split("=", 1) for item in rest.split() if "=" in item)
        if kind in ("some", "full") and "avg10" in fields and "total" in fields:
            values[kind] = (float(fields["avg10"]), int(fields["total"]))
    if "some" not in values:
        raise ValueError(f"no 'some' line in pressure data {text!r}")
    some = values["some"]
    full = values.get("full", (0.0, 0))
    return Pressure(
        some_avg10=some[0], full_avg10=full[0], some_total_us=some[1], full_total_us=full[1]
    )


def check_name(name: str) -> str:
    """A cgroup name is a relative path of plain components (``og-1234`` or ``a/b``)."""
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or p.startswith("cgroup.") for p in parts):
        raise ConfigError(f"invalid cgroup name {name!r}", field="name")
    return name


# --------------------------------------------------------------------------- the Cgroup ABC


class Cgroup(ABC):
    """One cgroup (the same relative path in every hierarchy/controller that is used)."""

    name: str
    version: int

    def __init__(self, name: str) -> None:
        self.name = check_name(name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} v{self.version} {self.name}>"

    # ---- file helpers: every OSError becomes a RuntimeFailure naming the cgroup

    def _error(self, verb: str, path: Path, exc: OSError, message: str | None = None) -> NoReturn:
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        if message is None:
            if exc.errno == errno.ENOENT and not path.parent.is_dir():
                message = f"cgroup {self.name} does not exist"
            elif exc.errno == errno.ENOENT:
                message = f"cgroup {self.name} has no {path.name} (controller not enabled?)"
            elif exc.errno in (errno.EACCES, errno.EPERM):
                message = f"not allowed to {verb} {path.name} of cgroup {self.name}"
            elif exc.errno == errno.EBUSY:
                message = f"cgroup {self.name} is busy ({verb} {path.name})"
            else:
                message = f"cannot {verb} {path.name} of cgroup {self.name}: {exc.strerror}"
        raise RuntimeFailure(
            message, detail=f"{verb} {path}: [{code}] {exc.strerror or exc}"
        ) from exc

    def _read(self, path: Path) -> str:
        try:
            with open(path, encoding="ascii") as f:
                return f.read()
        except OSError as exc:
            self._error("read", path, exc)

    def _read_optional(self, path: Path) -> str | None:
        """Like _read, but a missing *file* (in an existing cgroup) is None."""
        try:
            with open(path, encoding="ascii") as f:
                return f.read()
        except FileNotFoundError as exc:
            if path.parent.is_dir():
                return None
            self._error("read", path, exc)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):  # e.g. PSI disabled
                return None
            self._error("read", path, exc)

    def _write(
        self, path: Path, value: str | int, *, messages: dict[int, str] | None = None
    ) -> None:
        """One write(2) of ``value``, as cgroupfs wants; ``messages`` maps errno → message."""
        data = str(value).encode("ascii")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            message = (messages or {}).get(exc.errno or 0)
            self._error(f"write {value!r} to", path, exc, message)

    def _read_int(self, path: Path) -> int:
        text = self._read(path)
        try:
            return int(text.strip())
        except ValueError as exc:
            raise RuntimeFailure(
                f"unexpected content in {path.name} of cgroup {self.name}",
                detail=f"{path}: {text[:200]!r}",
            ) from exc

    def _mkdir(self, path: Path) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._error("create", path, exc, f"cannot create cgroup {self.name}")

    def _rmdir_tree(self, top: Path, deadline: float) -> None:
        """rmdir ``top`` and any child cgroups, retrying EBUSY (exiting tasks) until deadline."""
        if not top.is_dir():
            return
        dirs = [Path(d) for d, _, _ in os.walk(top, topdown=False)]
        for d in dirs:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                        self._error("remove", d, exc, f"cannot remove cgroup {self.name}")
                    time.sleep(_POLL_INTERVAL)

    def _wait_empty(self, dirs: list[Path], timeout: float) -> float:
        """Wait until no cgroup.procs under ``dirs`` lists a pid. Returns the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            left = sorted({pid for top in dirs for pid in _tree_pids(top)})
            if not left:
                return deadline
            if time.monotonic() >= deadline:
                raise RuntimeFailure(
                    f"cgroup {self.name} still has {len(left)} process(es) after {timeout:g}s",
                    detail=f"pids still in {self.name}: {left[:50]}",
                )
            time.sleep(_POLL_INTERVAL)

    # ---- the interface

    @abstractmethod
    def create(self) -> None:
        """Create the cgroup (idempotent)."""

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def remove(self, timeout: float = 5.0) -> None:
        """Remove the cgroup everywhere (idempotent). Waits for its processes to go; never kills."""

    @abstractmethod
    def set_memory_limit(self, limit_bytes: int | None) -> None:
        """Limit the tree's memory to ``limit_bytes`` (None: unlimited). Raising works any
        time; lowering below what the kernel can reclaim raises RuntimeFailure (never kills).
        v2 with OOM stall on: memory.high = L, memory.max = L + max(64 MiB, L/8)."""

    @abstractmethod
    def memory_limit(self) -> int | None:
        """The limit last set (L, also in v2 stall mode); None = unlimited."""

    @abstractmethod
    def set_cpu_quota(self, vcpus: float | None, period_us: int = 100_000) -> None: ...

    @abstractmethod
    def set_pids_max(self, limit: int | None) -> None:
        """At most ``limit`` tasks (processes and threads) in the tree (None: no limit), so a
        fork bomb stops there. A host without the pids controller gets a warning, no limit."""

    @abstractmethod
    def add_process(self, pid: int) -> None: ...

    @abstractmethod
    def procs(self) -> list[int]: ...

    @abstractmethod
    def memory_stats(self) -> MemoryStats: ...

    @abstractmethod
    def cpu_stats(self) -> CpuStats: ...

    @abstractmethod
    def pressure(self) -> Pressure | None: ...

    @abstractmethod
    def freeze(self, timeout: float = 5.0) -> None:
        """Freeze every task and wait until the kernel reports the cgroup frozen.

        On timeout raises RuntimeFailure and leaves the freeze *requested* (tasks that did
        freeze stay frozen, the rest freeze when they can): call ``thaw()`` to back out, or
        fix the cause and call ``freeze()`` again.
        """

    @abstractmethod
    def thaw(self) -> None: ...

    @abstractmethod
    def frozen(self) -> bool:
        """True only once the kernel reports the whole cgroup frozen: False while a freeze
        is still in progress (v1 FREEZING), so use an unconditional thaw() to back out."""

    @abstractmethod
    def set_oom_stall(self, enabled: bool) -> None:
        """At the limit, stall the tree instead of OOM-killing it (v1 oom_kill_disable; v2
        memory.high throttling, see set_memory_limit). Turning it off while stalled lets the
        kernel OOM-kill. v2 remembers the mode in memory.high, so with no limit set a
        re-opened cgroup does not know it: set the mode before (or with) the limit."""

    @abstractmethod
    def oom_watch(self) -> OomWatch: ...

    @abstractmethod
    def criu_cgroup_roots(self) -> list[str]:
        """``criu restore --cgroup-root`` values that put a restored tree in this cgroup."""

    @abstractmethod
    def freezer_path(self) -> str:
        """Directory for ``criu dump --freeze-cgroup``."""

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to every process in the cgroup (processes already gone are ignored)."""
        for pid in self.procs():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
            except OSError as exc:
                raise RuntimeFailure(
                    f"cannot signal process {pid} in cgroup {self.name}",
                    detail=f"kill({pid}, {sig}): {exc}",
                ) from exc

    # ---- shared validation

    @staticmethod
    def _check_limit(limit_bytes: int | None) -> None:
        if limit_bytes is not None and limit_bytes <= 0:
            raise ConfigError(f"memory limit must be positive, not {limit_bytes}")

    @staticmethod
    def _quota_us(vcpus: float | None, period_us: int) -> int | None:
        if not 1_000 <= period_us <= 1_000_000:
            raise ConfigError(f"CPU period must be 1000..1000000 µs, not {period_us}")
        if vcpus is None:
            return None
        if not vcpus > 0:
            raise ConfigError(f"CPU quota must be positive, not {vcpus}")
        return max(1_000, round(vcpus * period_us))


def read_pids(path: Path) -> list[int]:
    """PIDs in a cgroup.procs file; a missing file/cgroup is an empty list."""
    try:
        with open(path, encoding="ascii") as f:
            return [int(line) for line in f.read().split()]
    except FileNotFoundError:
        return []


def _tree_pids(top: Path) -> list[int]:
    if not top.is_dir():
        return []
    pids: list[int] = []
    for d, _, _ in os.walk(top):
        pids.extend(read_pids(Path(d) / "cgroup.procs"))
    return pids


def describe_tasks(pids: list[int], limit: int = 20) -> str:
    """``pid state wchan`` per process, for the log detail of a freeze timeout."""
    lines = []
    for pid in pids[:limit]:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            state = stat.rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            state = "?"
        try:
            wchan = Path(f"/proc/{pid}/wchan").read_text().strip() or "-"
        except OSError:
            wchan = "?"
        lines.append(f"pid {pid} state {state} wchan {wchan}")
    if len(pids) > limit:
        lines.append(f"... and {len(pids) - limit} more")
    return "\n".join(lines)
