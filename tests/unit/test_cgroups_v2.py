"""cgroup v2 code paths (and mount-table detection) against a fake cgroupfs in tmp_path.

The fake tree holds the files the kernel would; in it ``create()`` only makes a plain
directory, so tests write the interface files after creating.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from outgrow.agent.cgroups import (
    Cgroup,
    CgroupFS,
    CpuStats,
    MemoryStats,
    Pressure,
    detect,
)
from outgrow.agent.cgroups_base import parse_pressure
from outgrow.errors import ConfigError, RuntimeFailure

MIB = 1 << 20
GIB = 1 << 30

KERNEL_FILES = {
    "memory.current": "0\n",
    "memory.high": "max\n",
    "memory.max": "max\n",
    "memory.swap.current": "0\n",
    "memory.stat": "anon 0\nfile 0\nkernel 0\nsock 0\nshmem 0\nfile_mapped 0\n",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    "memory.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    "cpu.max": "max 100000\n",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\nnr_periods 0\nnr_throttled 0\n"
    "throttled_usec 0\nnr_bursts 0\nburst_usec 0\n",
    "cgroup.freeze": "0\n",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.procs": "",
    "cgroup.subtree_control": "",
}


def populate(path: Path) -> None:
    """Write the kernel's interface files (idle, unlimited values) into a fake cgroup dir."""
    for name, content in KERNEL_FILES.items():
        (path / name).write_text(content)


def text(path: Path) -> str:
    return path.read_text().strip()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "cgroup"
    r.mkdir()
    (r / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (r / "cgroup.subtree_control").write_text("")
    return r


@pytest.fixture
def fs(root: Path) -> CgroupFS:
    return CgroupFS.v2(root=root)


@pytest.fixture
def cg_path(fs: CgroupFS, root: Path) -> Path:
    fs.open("og-test").create()
    path = root / "og-test"
    populate(path)
    return path


@pytest.fixture
def cg(fs: CgroupFS, cg_path: Path) -> Cgroup:
    return fs.open("og-test")


# --------------------------------------------------------------------------- create / names


def test_create_makes_dir_and_enables_memory_and_cpu_in_parent(fs: CgroupFS, root: Path) -> None:
    cg = fs.open("og-a")
    assert not cg.exists()
    cg.create()
    assert (root / "og-a").is_dir()
    assert cg.exists()
    assert cg.version == 2 and fs.version == 2
    # pids too, where the parent offers it (a fork bomb stops at pids.max)
    assert sorted(text(root / "cgroup.subtree_control").split()) == ["+cpu", "+memory", "+pids"]


def test_create_enables_only_missing_controllers(fs: CgroupFS, root: Path) -> None:
    (root / "cgroup.subtree_control").write_text("memory pids\n")
    fs.open("og-a").create()
    assert text(root / "cgroup.subtree_control") == "+cpu"


def test_create_leaves_enabled_controllers_alone_and_is_idempotent(
    fs: CgroupFS, root: Path
) -> None:
    (root / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    cg = fs.open("og-a")
    cg.create()
    cg.create()
    assert text(root / "cgroup.subtree_control") == "cpu io memory pids"
    assert cg.exists()


def test_create_nested_enables_controllers_in_every_ancestor(fs: CgroupFS, root: Path) -> None:
    (root / "jobs").mkdir()
    (root / "jobs" / "cgroup.subtree_control").write_text("")
    fs.open("jobs/og-a").create()
    assert (root / "jobs" / "og-a").is_dir()
    assert sorted(text(root / "cgroup.subtree_control").split()) == ["+cpu", "+memory", "+pids"]
    # "jobs" offers no pids (its cgroup.controllers does not say so): not asked for there
    assert sorted(text(root / "jobs" / "cgroup.subtree_control").split()) == ["+cpu", "+memory"]


@pytest.mark.parametrize("name", ["", "/abs", "../escape", "a//b", "a/..", "cgroup.procs"])
def test_invalid_names_are_rejected(fs: CgroupFS, name: str) -> None:
    with pytest.raises(ConfigError):
        fs.open(name)


def test_missing_cgroup_is_runtime_failure_naming_it(fs: CgroupFS, root: Path) -> None:
    cg = fs.open("og-missing")
    with pytest.raises(RuntimeFailure) as info:
        cg.memory_stats()
    assert "og-missing" in str(info.value)
    assert "does not exist" in str(info.value)
    assert info.value.detail is not None
    assert str(root / "og-missing" / "memory.current") in info.value.detail
    assert "ENOENT" in info.value.detail
    assert isinstance(info.value.__cause__, FileNotFoundError)


# --------------------------------------------------------------------------- memory limits


def test_limit_without_stall_sets_max_only(cg: Cgroup, cg_path: Path) -> None:
    cg.set_memory_limit(GIB)
    assert text(cg_path / "memory.max") == str(GIB)
    assert text(cg_path / "memory.high") == "max"
    assert cg.memory_limit() == GIB


@pytest.mark.parametrize(
    ("limit", "reserve"),
    [(GIB, GIB // 8), (256 * MIB, 64 * MIB), (8 * GIB, GIB)],
)
def test_limit_with_stall_sets_high_and_reserve(
    cg: Cgroup, cg_path: Path, limit: int, reserve: int
) -> None:
    cg.set_oom_stall(True)
    cg.set_memory_limit(limit)
    assert text(cg_path / "memory.high") == str(limit)
    assert text(cg_path / "memory.max") == str(limit + reserve)
    assert cg.memory_limit() == limit
    assert cg.memory_stats().limit_bytes == limit


def test_toggling_stall_reapplies_the_limit(cg: Cgroup, cg_path: Path) -> None:
    cg.set_memory_limit(512 * MIB)
    cg.set_oom_stall(True)
    assert text(cg_path / "memory.high") == str(512 * MIB)
    assert text(cg_path / "memory.max") == str(576 * MIB)
    cg.set_oom_stall(False)
    assert text(cg_path / "memory.high") == "max"
    assert text(cg_path / "memory.max") == str(512 * MIB)
    assert cg.memory_limit() == 512 * MIB


def test_reopened_cgroup_keeps_stall_mode_from_memory_high(
    fs: CgroupFS, cg: Cgroup, cg_path: Path
) -> None:
    cg.set_oom_stall(True)
    cg.set_memory_limit(GIB)
    again = fs.open("og-test")
    again.set_memory_limit(2 * GIB)
    assert text(cg_path / "memory.high") == str(2 * GIB)
    assert text(cg_path / "memory.max") == str(2 * GIB + 256 * MIB)


def test_unlimited_writes_max_and_parses_as_none(cg: Cgroup, cg_path: Path) -> None:
    cg.set_oom_stall(True)
    cg.set_memory_limit(GIB)
    cg.set_memory_limit(None)
    assert text(cg_path / "memory.high") == "max"
    assert text(cg_path / "memory.max") == "max"
    assert cg.memory_limit() is None
    assert cg.memory_stats().limit_bytes is None


def test_lowering_below_unreclaimable_usage_fails_and_restores(cg: Cgroup, cg_path: Path) -> None:
    (cg_path / "memory.current").write_text(f"{600 * MIB}\n")
    with pytest.raises(RuntimeFailure) as info:
        cg.set_memory_limit(512 * MIB)
    assert "og-test" in str(info.value)
    assert "cannot lower" in str(info.value)
    assert text(cg_path / "memory.max") == "max"
    assert text(cg_path / "memory.high") == "max"


@pytest.mark.parametrize("bad", [0, -1])
def test_non_positive_limit_is_config_error(cg: Cgroup, bad: int) -> None:
    with pytest.raises(ConfigError):
        cg.set_memory_limit(bad)


# --------------------------------------------------------------------------- stats


def test_memory_stats_parsing(cg: Cgroup, cg_path: Path) -> None:
    (cg_path / "memory.current").write_text("160000000\n")
    (cg_path / "memory.stat").write_text(
        "anon 104857600\nfile 52428800\nkernel 2097152\nanon_thp 0\nfile_mapped 1024\n"
        "pgfault 12345\n"
    )
    (cg_path / "memory.swap.current").write_text("4096\n")
    (cg_path / "memory.events").write_text(
        "low 0\nhigh 17\nmax 4\noom 3\noom_kill 2\noom_group_kill 0\n"
    )
    (cg_path / "memory.max").write_text(f"{GIB}\n")
    assert cg.memory_stats() == MemoryStats(
        usage_bytes=160000000,
        rss_bytes=104857600,
        cache_bytes=52428800,
        swap_bytes=4096,
        limit_bytes=GIB,
        oom_stalled=False,
        oom_kills=2,
    )


def test_missing_swap_file_means_zero_swap(cg: Cgroup, cg_path: Path) -> None:
    (cg_path / "memory.swap.current").unlink()
    (cg_path / "memory.current").write_text("4096\n")
    stats = cg.memory_stats()
    assert stats.swap_bytes == 0
    assert stats.usage_bytes == 4096


@pytest.mark.parametrize(
    ("high", "current", "stalled"),
    [
        (str(256 * MIB), 256 * MIB - 512 * 1024, True),
        (str(256 * MIB), 256 * MIB + 4096, True),
        (str(256 * MIB), 256 * MIB - 2 * MIB, False),
        ("max", 64 * GIB, False),
    ],
)
def test_stalled_detection(
    cg: Cgroup, cg_path: Path, high: str, current: int, stalled: bool
) -> None:
    (cg_path / "memory.high").write_text(high + "\n")
    (cg_path / "memory.max").write_text(f"{512 * MIB}\n")
    (cg_path / "memory.current").write_text(f"{current}\n")
    assert cg.memory_stats().oom_stalled is stalled


def test_pressure_parsing(cg: Cgroup, cg_path: Path) -> None:
    (cg_path / "memory.pressure").write_text(
        "some avg10=1.50 avg60=0.80 avg300=0.10 total=123456\n"
        "full avg10=0.75 avg60=0.20 avg300=0.05 total=65432\n"
    )
    assert cg.pressure() == Pressure(
        some_avg10=1.5, full_avg10=0.75, some_total_us=123456, full_total_us=65432
    )


def test_pressure_none_without_psi_file(cg: Cgroup, cg_path: Path) -> None:
    (cg_path / "memory.pressure").unlink()
    assert cg.pressure() is None


def test_parse_pressure_some_only_and_garbage() -> None:
    assert parse_pressure("some avg10=2.00 avg60=0 avg300=0 total=7\n") == Pressure(2.0, 0.0, 7, 0)
    with pytest.raises(ValueError):
        parse_pressure("nonsense\n")


# --------------------------------------------------------------------------- cpu


@pytest.mark.parametrize(
    ("vcpus", "period", "expected"),
    [
        (1.5, 100_000, "150000 100000"),
        (0.5, 50_000, "25000 50000"),
        (None, 100_000, "max 100000"),
        (0.001, 100_000, "1000 100000"),
    ],
)
def test_cpu_quota_writes_cpu_max(
    cg: Cgroup, cg_path: Path, vcpus: float | None, period: int, expected: str
) -> None:
    cg.set_cpu_quota(vcpus, period_us=period)
    assert text(cg_path / "cpu.max") == expected


@pytest.mark.parametrize(("vcpus", "period"), [(0, 100_000), (-1.0, 100_000), (1.0, 500)])
def test_cpu_quota_invalid(cg: Cgroup, vcpus: float, period: int) -> None:
    with pytest.raises(ConfigError):
        cg.set_cpu_quota(vcpus, period_us=period)


def test_cpu_stats_parsing(cg: Cgroup, cg_path: Path) -> None:
    (cg_path / "cpu.stat").write_text(
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 30\n"
        "nr_throttled 5\nthrottled_usec 1200\n"
    )
    (cg_path / "cpu.max").write_text("200000 100000\n")
    assert cg.cpu_stats() == CpuStats(
        usage_ns=2_500_000_000, quota_vcpus=2.0, throttled_ns=1_200_000
    )
    (cg_path / "cpu.max").write_text("max 100000\n")
    assert cg.cpu_stats().quota_vcpus is None


# --------------------------------------------------------------------------- processes


def test_add_process_and_procs(cg: Cgroup, cg_path: Path) -> None:
    cg.add_process(4242)
    assert text(cg_path / "cgroup.procs") == "4242"
    (cg_path / "cgroup.procs").write_text("12\n34\n")
    assert cg.procs() == [12, 34]


def test_kill_all_signals_listed_pids_and_ignores_gone_ones(cg: Cgroup, cg_path: Path) -> None:
    children = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    try:
        gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no such process
        pids = [c.pid for c in children] + [gone]
        (cg_path / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
        cg.kill_all(signal.SIGTERM)
        for c in children:
            assert c.wait(timeout=5) == -signal.SIGTERM
    finally:
        for c in children:
            c.kill()
            c.wait()


def test_remove_empty_cgroup_is_idempotent(fs: CgroupFS, root: Path) -> None:
    cg = fs.open("og-empty")
    cg.create()
    cg.remove()
    assert not (root / "og-empty").exists()
    cg.remove()
    assert not cg.exists()


def test_remove_with_processes_times_out_without_killing(fs: CgroupFS, root: Path) -> None:
    cg = fs.open("og-busy")
    cg.create()
    (root / "og-busy" / "cgroup.procs").write_text("4242\n")
    start = time.monotonic()
    with pytest.raises(RuntimeFailure) as info:
        cg.remove(timeout=0.2)
    assert time.monotonic() - start >= 0.2
    assert "og-busy" in str(info.value)
    assert info.value.detail is not None and "4242" in info.value.detail
    assert cg.exists()


# --------------------------------------------------------------------------- freezer


def test_freeze_waits_for_kernel_to_report_frozen(cg: Cgroup, cg_path: Path) -> None:
    def kernel() -> None:
        # The kernel reports "frozen" late: freeze() must not return before it does.
        time.sleep(0.15)  # the sleep is what is tested: freeze() waits out this delay
        (cg_path / "cgroup.events").write_text("populated 1\nfrozen 1\n")

    thread = threading.Thread(target=kernel)
    start = time.monotonic()
    thread.start()
    cg.freeze(timeout=5)
    elapsed = time.monotonic() - start
    thread.join()
    assert text(cg_path / "cgroup.freeze") == "1"
    assert 0.1 <= elapsed < 2
    assert cg.frozen()
    cg.thaw()
    assert text(cg_path / "cgroup.freeze") == "0"


def test_freeze_timeout_raises_and_leaves_freeze_requested(cg: Cgroup, cg_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(RuntimeFailure) as info:
        cg.freeze(timeout=0.2)
    assert time.monotonic() - start >= 0.2
    assert "did not freeze" in str(info.value)
    assert text(cg_path / "cgroup.freeze") == "1"
    assert not cg.frozen()


# --------------------------------------------------------------------------- OOM watch


def _stall_at(cg_path: Path, high: int, current: int) -> None:
    (cg_path / "memory.high").write_text(f"{high}\n")
    (cg_path / "memory.max").write_text(f"{high + 64 * MIB}\n")
    (cg_path / "memory.current").write_text(f"{current}\n")


def test_oom_watch_true_at_once_when_already_stalled(cg: Cgroup, cg_path: Path) -> None:
    _stall_at(cg_path, 256 * MIB, 256 * MIB)
    with cg.oom_watch() as watch:
        start = time.monotonic()
        assert watch.wait(5) is True
        assert time.monotonic() - start < 0.1


def test_oom_watch_times_out(cg: Cgroup, cg_path: Path) -> None:
    _stall_at(cg_path, 256 * MIB, 100 * MIB)
    with cg.oom_watch() as watch:
        start = time.monotonic()
        assert watch.wait(0.25) is False
        assert time.monotonic() - start >= 0.25


def test_oom_watch_notices_stall_within_100ms(cg: Cgroup, cg_path: Path) -> None:
    _stall_at(cg_path, 256 * MIB, 100 * MIB)
    stalled_at: list[float] = []

    def job() -> None:
        time.sleep(0.3)  # the sleep is what is tested: the stall begins while wait() waits
        (cg_path / "memory.current").write_text(f"{256 * MIB}\n")
        stalled_at.append(time.monotonic())

    thread = threading.Thread(target=job)
    with cg.oom_watch() as watch:
        thread.start()
        assert watch.wait(5) is True
        returned = time.monotonic()
    thread.join()
    assert stalled_at, "watch returned before the cgroup was stalled"
    assert returned - stalled_at[0] < 0.1


def test_closed_oom_watch_refuses_to_wait(cg: Cgroup) -> None:
    watch = cg.oom_watch()
    watch.close()
    watch.close()
    with pytest.raises(RuntimeFailure):
        watch.wait(0.1)


# --------------------------------------------------------------------------- CRIU, listing


def test_criu_roots_and_freezer_path(fs: CgroupFS, root: Path) -> None:
    assert fs.open("og-3f9a2c1d").criu_cgroup_roots() == ["/og-3f9a2c1d"]
    assert fs.open("og-3f9a2c1d").freezer_path() == str(root / "og-3f9a2c1d")
    assert fs.open("jobs/og-1").criu_cgroup_roots() == ["/jobs/og-1"]


def test_list_by_prefix(fs: CgroupFS, root: Path) -> None:
    for d in ("og-1", "og-2", "other", "xog-3"):
        (root / d).mkdir()
    (root / "og-file").write_text("")
    assert fs.list("og-") == ["og-1", "og-2"]
    assert fs.list("nothing") == []


# --------------------------------------------------------------------------- fake v1 layout


def test_v1_co_mounted_cpu_cpuacct_gives_one_criu_root(tmp_path: Path) -> None:
    fs = CgroupFS.v1(
        mounts={
            "memory": tmp_path / "memory",
            "cpu": tmp_path / "cpu,cpuacct",
            "cpuacct": tmp_path / "cpu,cpuacct",
            "freezer": tmp_path / "freezer",
        }
    )
    cg = fs.open("og-1")
    assert cg.version == 1
    assert cg.criu_cgroup_roots() == ["memory:/og-1", "cpu,cpuacct:/og-1", "freezer:/og-1"]
    assert cg.freezer_path() == str(tmp_path / "freezer" / "og-1")
    cg.create()
    assert sorted(p.name for p in tmp_path.iterdir() if (p / "og-1").is_dir()) == [
        "cpu,cpuacct",
        "freezer",
        "memory",
    ]
    assert fs.list("og") == ["og-1"]


def test_v1_stats_parsing_on_fake_tree(tmp_path: Path) -> None:
    mounts = {c: tmp_path / c for c in ("memory", "cpu", "cpuacct", "freezer")}
    (tmp_path / "unified").mkdir()
    fs = CgroupFS.v1(mounts=mounts, unified=tmp_path / "unified")
    cg = fs.open("og-1")
    cg.create()
    assert (tmp_path / "unified" / "og-1").is_dir()
    mem = mounts["memory"] / "og-1"
    (mem / "memory.usage_in_bytes").write_text("73400320\n")
    (mem / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (mem / "memory.stat").write_text(
        "cache 1\nrss 2\nrss_huge 0\ntotal_cache 8192\ntotal_rss 67108864\n"
        "total_rss_huge 2097152\ntotal_swap 4096\n"
    )
    (mem / "memory.oom_control").write_text("oom_kill_disable 1\nunder_oom 1\noom_kill 0\n")
    assert cg.memory_stats() == MemoryStats(
        usage_bytes=73400320,
        rss_bytes=67108864,  # total_rss already includes total_rss_huge
        cache_bytes=8192,
        swap_bytes=4096,
        limit_bytes=None,
        oom_stalled=True,
        oom_kills=0,
    )
    cpu = mounts["cpu"] / "og-1"
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    (cpu / "cpu.stat").write_text("nr_periods 3\nnr_throttled 1\nthrottled_time 5000\n")
    (mounts["cpuacct"] / "og-1" / "cpuacct.usage").write_text("123456789\n")
    assert cg.cpu_stats() == CpuStats(usage_ns=123456789, quota_vcpus=None, throttled_ns=5000)
    cg.set_cpu_quota(2.0)
    assert text(cpu / "cpu.cfs_quota_us") == "200000"
    assert cg.cpu_stats().quota_vcpus == 2.0
    assert cg.pressure() is None  # the unified dir has no memory.pressure
    (tmp_path / "unified" / "og-1" / "memory.pressure").write_text(
        "some avg10=0.50 avg60=0 avg300=0 total=10\nfull avg10=0.25 avg60=0 avg300=0 total=5\n"
    )
    assert cg.pressure() == Pressure(0.5, 0.25, 10, 5)


def test_v1_half_removed_leak_can_be_found_and_removed(tmp_path: Path) -> None:
    mounts = {c: tmp_path / c for c in ("memory", "cpu", "cpuacct", "freezer")}
    fs = CgroupFS.v1(mounts=mounts)
    (mounts["cpu"] / "og-leak").mkdir(parents=True)
    (mounts["cpu"] / "og-leak" / "cgroup.procs").write_text("")
    assert fs.list("og-") == ["og-leak"]
    cg = fs.open("og-leak")
    assert cg.exists()
    assert cg.frozen() is False  # its freezer dir is already gone
    assert cg.procs() == []
    cg.kill_all()
    (mounts["cpu"] / "og-leak" / "cgroup.procs").unlink()  # a real rmdir ignores it
    cg.remove()
    assert not cg.exists()
    assert fs.list("og-") == []
    with pytest.raises(RuntimeFailure) as info:
        cg.procs()
    assert "does not exist" in str(info.value)


def test_v1_unified_dir_is_best_effort(tmp_path: Path) -> None:
    mounts = {c: tmp_path / c for c in ("memory", "cpu", "cpuacct", "freezer")}
    (tmp_path / "unified").write_text("not a directory")
    cg = CgroupFS.v1(mounts=mounts, unified=tmp_path / "unified").open("og-1")
    cg.create()
    assert all((m / "og-1").is_dir() for m in mounts.values())
    assert cg.pressure() is None


# --------------------------------------------------------------------------- detect()

HYBRID = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/freezer cgroup rw,relatime,freezer 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""


def _mounts(tmp_path: Path, content: str) -> Path:
    f = tmp_path / "mounts"
    f.write_text(content)
    return f


def test_detect_pure_v2(tmp_path: Path) -> None:
    fs = detect(
        _mounts(
            tmp_path,
            "proc /proc proc rw 0 0\n"
            "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n",
        )
    )
    assert fs.version == 2
    assert fs.root == Path("/sys/fs/cgroup")
    assert fs.open("og-1").criu_cgroup_roots() == ["/og-1"]


def test_detect_hybrid_is_v1_with_unified_for_psi(tmp_path: Path) -> None:
    fs = detect(_mounts(tmp_path, HYBRID))
    assert fs.version == 1
    assert fs.mounts["memory"] == Path("/sys/fs/cgroup/memory")
    assert fs.mounts["cpuacct"] == Path("/sys/fs/cgroup/cpuacct")
    assert "name=systemd" not in fs.mounts and "systemd" not in fs.mounts
    assert fs.unified == Path("/sys/fs/cgroup/unified")
    # The job is in the unified hierarchy too (PSI): CRIU's "" controller moves it.
    assert fs.open("og-1").criu_cgroup_roots() == [
        "memory:/og-1",
        "cpu:/og-1",
        "cpuacct:/og-1",
        "freezer:/og-1",
        "pids:/og-1",
        ":/og-1",
    ]
    assert fs.open("og-1").freezer_path() == "/sys/fs/cgroup/freezer/og-1"


def test_detect_legacy_v1_with_co_mounted_cpu_cpuacct(tmp_path: Path) -> None:
    fs = detect(
        _mounts(
            tmp_path,
            "cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0\n"
            "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,"
            "cpu,cpuacct 0 0\n"
            "cgroup /sys/fs/cgroup/freezer cgroup rw,nosuid,nodev,noexec,relatime,freezer 0 0\n",
        )
    )
    assert fs.version == 1
    assert fs.unified is None
    assert fs.mounts["cpu"] == fs.mounts["cpuacct"] == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert fs.open("og-1").criu_cgroup_roots() == [
        "memory:/og-1",
        "cpu,cpuacct:/og-1",
        "freezer:/og-1",
    ]


def test_detect_cgroup2_elsewhere_with_memory(tmp_path: Path) -> None:
    unified = tmp_path / "my cgroup2"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("cpu io memory pids\n")
    escaped = str(unified).replace(" ", "\\040")
    fs = detect(
        _mounts(
            tmp_path,
            "cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n"
            f"cgroup2 {escaped} cgroup2 rw,relatime 0 0\n",
        )
    )
    assert fs.version == 2
    assert fs.root == unified


def test_detect_without_memory_anywhere_fails(tmp_path: Path) -> None:
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("cpu pids\n")
    with pytest.raises(RuntimeFailure) as info:
        detect(_mounts(tmp_path, f"cgroup2 {unified} cgroup2 rw 0 0\n"))
    assert "memory" in str(info.value)
    with pytest.raises(RuntimeFailure):
        detect(_mounts(tmp_path, "proc /proc proc rw 0 0\n"))
