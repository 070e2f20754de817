"""cgroup v1 for real: needs root and a mounted v1 memory controller (hybrid hosts).

Every test works in its own ``ogt-<8 hex>`` cgroup and only on processes it started; the
fixtures kill those processes and remove the cgroup even when a test fails.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from outgrow.agent.cgroups import Cgroup, CgroupFS, Pressure, detect
from outgrow.errors import RuntimeFailure
from waiting import holds_for, wait_until

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

MIB = 1 << 20
CONTROLLERS = ("memory", "cpu", "cpuacct", "freezer", "pids")

# Children wait for a line on stdin, so they only start working once they are in the cgroup.
ALLOC = """
import os, sys, time
sys.stdin.readline()
target, fd = int(sys.argv[1]), os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT, 0o644)
chunks = []
for i in range(target // 8):
    chunks.append(b"\\x5a" * (8 << 20))  # writes (faults in) every page
    os.pwrite(fd, b"%08d" % ((i + 1) * 8), 0)
os.pwrite(fd, b"DONE    ", 0)
time.sleep(3600)
"""
COUNT = """
import os, sys, time
sys.stdin.readline()
fd, n = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644), 0
while True:
    n += 1
    os.pwrite(fd, b"%012d" % n, 0)
    time.sleep(0.001)
"""
SPIN = """
import sys
sys.stdin.readline()
while True:
    pass
"""

Start = Callable[..., subprocess.Popen[bytes]]


def _v1_fs() -> CgroupFS:
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups")
    try:
        fs = detect()
    except RuntimeFailure as exc:
        pytest.skip(f"no usable cgroup hierarchy: {exc}")
    if fs.version != 1:
        pytest.skip("no cgroup v1 memory controller is mounted (this host is pure cgroup v2)")
    missing = [c for c in CONTROLLERS if c not in fs.mounts]
    if missing:
        pytest.skip(f"cgroup v1 controllers not mounted: {missing}")
    return fs


@pytest.fixture
def fs() -> CgroupFS:
    return _v1_fs()


@pytest.fixture
def cg(fs: CgroupFS) -> Iterator[Cgroup]:
    cgroup = fs.open(f"ogt-{secrets.token_hex(4)}")
    cgroup.create()
    try:
        yield cgroup
    finally:
        # `start` (torn down first) killed our children; only they can have been in here.
        cgroup.remove(timeout=10)


@pytest.fixture
def start(cg: Cgroup) -> Iterator[Start]:
    children: list[subprocess.Popen[bytes]] = []

    def _start(code: str, *args: str) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(
            [sys.executable, "-c", code, *args], stdin=subprocess.PIPE, start_new_session=True
        )
        children.append(child)
        cg.add_process(child.pid)
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
        return child

    yield _start
    for child in children:
        child.kill()
    if cg.exists() and _freezer_state(cg) != "THAWED":
        cg.thaw()  # a v1-frozen task acts on SIGKILL only once thawed
    for child in children:
        child.wait(timeout=30)
        if child.stdin is not None:
            child.stdin.close()


def _freezer_state(cg: Cgroup) -> str:
    return Path(cg.freezer_path(), "freezer.state").read_text().strip()


def _progress(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


def _wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    wait_until(pred, timeout=timeout, what=what, interval=0.01)


def _count(path: Path) -> int:
    text = _progress(path)
    return int(text) if text else 0


# --------------------------------------------------------------------------- lifecycle


def test_create_makes_a_dir_per_controller_and_remove_cleans_everything(
    fs: CgroupFS, cg: Cgroup
) -> None:
    assert cg.version == 1 and cg.exists()
    for c in CONTROLLERS:
        assert (fs.mounts[c] / cg.name).is_dir(), c
    assert (fs.mounts["memory"] / cg.name / "memory.limit_in_bytes").is_file()
    assert cg.name in fs.list("ogt-")
    assert cg.procs() == []
    assert cg.memory_limit() is None
    cg.remove()
    assert not cg.exists()
    for c in CONTROLLERS:
        assert not (fs.mounts[c] / cg.name).exists(), c
    if fs.unified is not None:
        assert not (fs.unified / cg.name).exists()
    assert cg.name not in fs.list("ogt-")
    cg.remove()  # idempotent


def test_criu_roots_and_freezer_path_match_the_mounts(fs: CgroupFS, cg: Cgroup) -> None:
    roots = cg.criu_cgroup_roots()
    controllers: list[str] = []
    for root in roots:
        ctl, _, path = root.partition(":")
        assert path == f"/{cg.name}"
        controllers.extend(ctl.split(","))
    # On a hybrid host the unified hierarchy is there too, as CRIU's "" controller.
    unified = [""] if fs.unified is not None else []
    assert sorted(controllers) == sorted([*CONTROLLERS, *unified])
    assert len(roots) == len({fs.mounts[c] for c in CONTROLLERS}) + len(unified)
    assert cg.freezer_path() == str(fs.mounts["freezer"] / cg.name)
    assert _freezer_state(cg) == "THAWED"


def test_add_process_of_missing_pid_fails(cg: Cgroup) -> None:
    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    with pytest.raises(RuntimeFailure) as info:
        cg.add_process(gone)
    assert cg.name in str(info.value)


# --------------------------------------------------------------------------- memory


def test_memory_stats_follow_the_child(cg: Cgroup, start: Start, tmp_path: Path) -> None:
    progress = tmp_path / "progress"
    child = start(ALLOC, "48", str(progress))
    _wait_for(lambda: _progress(progress) == "DONE", 20, "the child to allocate 48 MiB")
    assert cg.procs() == [child.pid]
    stats = cg.memory_stats()
    assert stats.rss_bytes >= 48 * MIB
    assert stats.usage_bytes >= stats.rss_bytes
    assert stats.limit_bytes is None
    assert stats.oom_stalled is False and stats.oom_kills == 0
    assert stats.swap_bytes >= 0


def test_limit_without_stall_oom_kills(cg: Cgroup, start: Start, tmp_path: Path) -> None:
    cg.set_oom_stall(False)
    cg.set_memory_limit(64 * MIB)
    assert cg.memory_limit() == 64 * MIB
    child = start(ALLOC, "200", str(tmp_path / "progress"))
    assert child.wait(timeout=30) == -signal.SIGKILL
    stats = cg.memory_stats()
    assert stats.oom_kills >= 1
    assert stats.oom_stalled is False


def test_lowering_limit_below_usage_is_runtime_failure(
    cg: Cgroup, start: Start, tmp_path: Path
) -> None:
    progress = tmp_path / "progress"
    child = start(ALLOC, "96", str(progress))
    _wait_for(lambda: _progress(progress) == "DONE", 20, "the child to allocate 96 MiB")
    with pytest.raises(RuntimeFailure) as info:
        cg.set_memory_limit(32 * MIB)
    assert "cannot lower the memory limit" in str(info.value)
    assert info.value.detail is not None and "EBUSY" in info.value.detail
    assert cg.memory_limit() is None
    assert child.poll() is None
    cg.set_memory_limit(256 * MIB)  # raising works any time
    assert cg.memory_limit() == 256 * MIB


def _stall(cg: Cgroup, start: Start, progress: Path) -> subprocess.Popen[bytes]:
    cg.set_oom_stall(True)
    cg.set_memory_limit(64 * MIB)
    child = start(ALLOC, "200", str(progress))
    _wait_for(lambda: cg.memory_stats().oom_stalled, 20, "the child to stall at 64 MiB")
    return child


def test_oom_stall_instead_of_kill_and_watch(cg: Cgroup, start: Start, tmp_path: Path) -> None:
    cg.set_oom_stall(True)
    cg.set_memory_limit(64 * MIB)
    progress = tmp_path / "progress"
    first_seen: list[float] = []
    stop = threading.Event()

    def observe() -> None:  # an independent 2 ms poller of under_oom
        def seen() -> bool:
            if cg.memory_stats().oom_stalled:
                first_seen.append(time.monotonic())
                return True
            return stop.is_set()

        wait_until(seen, timeout=60, interval=0.002, what="under_oom (or the end of the test)")

    with cg.oom_watch() as watch:
        observer = threading.Thread(target=observe)
        observer.start()
        child = start(ALLOC, "200", str(progress))
        try:
            assert watch.wait(30) is True
            returned = time.monotonic()
            observer.join(timeout=5)  # the child stays stalled, so the poller sees it too
        finally:
            stop.set()
            observer.join()
    assert first_seen, "the watch fired but the cgroup never showed under_oom"
    assert returned - first_seen[0] < 1.0

    holds_for(
        lambda: child.poll() is None and cg.memory_stats().oom_kills == 0,
        duration=0.5,
        what="the stalled child living on, not OOM-killed",
    )
    stats = cg.memory_stats()
    assert child.poll() is None, "the child was killed instead of stalled"
    assert stats.oom_stalled is True
    assert stats.oom_kills == 0
    assert stats.usage_bytes <= 64 * MIB
    stuck = _progress(progress)
    assert stuck != "DONE" and int(stuck or 0) < 64
    with cg.oom_watch() as again:  # already stalled: true at once
        t = time.monotonic()
        assert again.wait(5) is True
        assert time.monotonic() - t < 0.5

    cg.set_memory_limit(512 * MIB)
    _wait_for(lambda: _progress(progress) == "DONE", 30, "the child to finish")
    stats = cg.memory_stats()
    assert child.poll() is None
    assert stats.oom_stalled is False and stats.oom_kills == 0
    assert stats.usage_bytes >= 200 * MIB


def test_oom_watch_times_out_without_oom(cg: Cgroup) -> None:
    with cg.oom_watch() as watch:
        t = time.monotonic()
        assert watch.wait(0.3) is False
        assert time.monotonic() - t >= 0.3


def test_freeze_of_oom_stalled_child_completes_only_after_limit_is_raised(
    cg: Cgroup, start: Start, tmp_path: Path
) -> None:
    """The task sleeps (TASK_KILLABLE) in the memcg OOM wait, where the freezer cannot get
    it: freezer.state stays FREEZING. Raising the limit wakes it; it retries the fault and
    freezes on the way back to user space, before allocating further."""
    progress = tmp_path / "progress"
    child = _stall(cg, start, progress)
    with pytest.raises(RuntimeFailure) as info:
        cg.freeze(timeout=1.0)
    assert "did not freeze" in str(info.value)
    assert _freezer_state(cg) == "FREEZING"
    assert not cg.frozen()
    assert info.value.detail is not None and str(child.pid) in info.value.detail

    cg.set_memory_limit(128 * MIB)
    _wait_for(cg.frozen, 5, "FROZEN after raising the limit")
    before = _progress(progress)
    holds_for(
        lambda: _progress(progress) == before, duration=0.3, what="no allocation while frozen"
    )
    assert _progress(progress) == before, "the child kept allocating while frozen"
    assert cg.memory_stats().usage_bytes <= 72 * MIB
    cg.freeze(timeout=1.0)  # already frozen: returns at once
    cg.thaw()
    assert _freezer_state(cg) == "THAWED"
    _wait_for(lambda: cg.memory_stats().oom_stalled, 20, "the child to stall at 128 MiB")
    assert child.poll() is None


# --------------------------------------------------------------------------- cpu


def test_cpu_quota_limits_and_counts(fs: CgroupFS, cg: Cgroup, start: Start) -> None:
    cg.set_cpu_quota(0.25)
    cpu = fs.mounts["cpu"] / cg.name
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "25000"
    assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
    start(SPIN)
    before = cg.cpu_stats()
    time.sleep(1.0)  # the sleep is what is tested: the 1 s window the CPU use is measured over
    after = cg.cpu_stats()
    used = (after.usage_ns - before.usage_ns) / 1e9
    assert after.quota_vcpus == 0.25
    assert 0.1 < used < 0.45, f"used {used:.2f}s of CPU in 1s with a 0.25 vCPU quota"
    assert after.throttled_ns > before.throttled_ns
    cg.set_cpu_quota(None)
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "-1"
    assert cg.cpu_stats().quota_vcpus is None


# --------------------------------------------------------------------------- freezer, kill


def test_freeze_and_thaw(cg: Cgroup, start: Start, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    start(COUNT, str(counter))
    _wait_for(lambda: _count(counter) > 10, 10, "the counter to run")
    cg.freeze()
    assert cg.frozen() and _freezer_state(cg) == "FROZEN"
    frozen_at = _count(counter)
    holds_for(lambda: _count(counter) == frozen_at, duration=0.3, what="the counter standing still")
    assert _count(counter) == frozen_at
    cg.thaw()
    assert not cg.frozen()
    _wait_for(lambda: _count(counter) > frozen_at + 10, 10, "the counter to resume")


def test_kill_all_kills_frozen_children(cg: Cgroup, start: Start, tmp_path: Path) -> None:
    children = [start(COUNT, str(tmp_path / f"c{i}")) for i in range(2)]
    _wait_for(lambda: all(_count(tmp_path / f"c{i}") > 0 for i in range(2)), 10, "children")
    assert sorted(cg.procs()) == sorted(c.pid for c in children)
    cg.freeze()
    cg.kill_all()
    for child in children:
        assert child.wait(timeout=10) == -signal.SIGKILL
    _wait_for(lambda: cg.procs() == [], 5, "the cgroup to empty")
    cg.remove()
    assert not cg.exists()


def test_remove_waits_and_never_kills(cg: Cgroup, start: Start, tmp_path: Path) -> None:
    child = start(COUNT, str(tmp_path / "counter"))
    with pytest.raises(RuntimeFailure) as info:
        cg.remove(timeout=0.3)
    assert "still has 1 process" in str(info.value)
    assert child.poll() is None
    assert cg.exists()
    child.kill()
    child.wait(timeout=10)
    cg.remove(timeout=5)
    assert not cg.exists()


# --------------------------------------------------------------------------- PSI (hybrid)


def test_pressure_comes_from_the_unified_hierarchy(
    fs: CgroupFS, cg: Cgroup, start: Start, tmp_path: Path
) -> None:
    if fs.unified is None or not (fs.unified / "memory.pressure").exists():
        pytest.skip("no cgroup2 mount with PSI (memory.pressure) on this host")
    child = start(COUNT, str(tmp_path / "counter"))
    procs = (fs.unified / cg.name / "cgroup.procs").read_text().split()
    assert str(child.pid) in procs
    pressure = cg.pressure()
    assert isinstance(pressure, Pressure)
    assert pressure.full_total_us <= pressure.some_total_us
    assert 0.0 <= pressure.some_avg10 <= 100.0
