"""The job sandbox's init: builds the job's own root and becomes the job.

Run by the agent as pid 1 of fresh pid, mount, uts and ipc namespaces, still as root and in
the instance's network namespace and cgroup:

    unshare --fork --pid --mount --uts --ipc --propagation private \\
        /usr/bin/python3 -I jobinit.py <sandbox.json>

It mounts the job's root (an overlay: the image read-only below, the job's own upper
directory above), binds what the image needs from the host read-only and the job's
directory read-write, gives the job its own /proc (masked like a container runtime's),
/dev (with its own devpts instance, so terminals can move), /dev/shm and /tmp; pivots into
that root; drops every capability, switches to the job's unprivileged uid, sets
no_new_privs and loads a seccomp filter; then execs the job's command, which stays pid 1.
Nothing of this process survives the exec, so CRIU moves only the job.

A separate, self-contained script (stdlib and Debian's python3-seccomp only): it runs with
the system interpreter, before the job's image is in place, and imports nothing of outgrow.
The sandbox spec is written by outgrow.agent.sandbox.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import resource
import sys
from typing import Any

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 24, 47, 4
SYS_PIVOT_ROOT, SYS_CAPSET = 155, 126  # x86_64
CAP_V3 = 0x20080522
# clone() flags that create namespaces: a job may fork and make threads, never namespaces.
CLONE_NS_FLAGS = 0x7E020000
DEVICES: tuple[tuple[str, int, int], ...] = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
# Like Docker's readonlyPaths and maskedPaths: /proc entries a job must not write or read.
PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")
PROC_MASKED_FILES = ("kcore", "keys", "timer_list", "sched_debug", "latency_stats")
PROC_MASKED_DIRS = ("acpi", "scsi")
# Syscalls no job needs and every container runtime denies (their rules either need a
# capability the job has not, or open a way out of the sandbox).
DENIED = [
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "syslog",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "iopl",
    "ioperm",
    "open_by_handle_at",
    "name_to_handle_at",
    "userfaultfd",
    "vhangup",
    "nfsservctl",
    "uselib",
    "sysfs",
    "ustat",
    "_sysctl",
    "pciconfig_read",
    "pciconfig_write",
]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _b(s: str | None) -> bytes | None:
    return None if s is None else s.encode()


def mount(
    src: str | None, dst: str, fstype: str | None = None, flags: int = 0, data: str | None = None
) -> None:
    _check(libc.mount(_b(src), _b(dst), _b(fstype), flags, _b(data)), f"mount {src} on {dst}")


def bind(src: str, dst: str, *, ro: bool, flags: int = MS_NOSUID | MS_NODEV) -> None:
    """Bind ``src`` at ``dst`` (created if needed); a bind takes its flags only from a remount."""
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    elif not os.path.exists(dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "a"):
            pass
    mount(src, dst, None, MS_BIND)
    mount(None, dst, None, MS_REMOUNT | MS_BIND | flags | (MS_RDONLY if ro else 0))


def build_root(spec: dict[str, Any]) -> str:
    root: str = spec["root"]
    fs = spec["rootfs"]
    opts = f"lowerdir={':'.join(fs['lower'])},upperdir={fs['upper']},workdir={fs['work']}"
    mount("outgrow-root", root, "overlay", MS_NOSUID | MS_NODEV, opts)
    for b in spec["binds"]:
        bind(b["src"], root + b["dst"], ro=b["ro"])
    for hidden in spec.get("hide", []):  # e.g. the overlay's own upper dir inside /job
        path = root + hidden
        if os.path.isdir(path):
            mount(
                "outgrow-hidden",
                path,
                "tmpfs",
                MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                "size=0",
            )
    _proc(root)
    _dev(root, spec.get("tty_gid", 5))
    os.makedirs(root + "/tmp", exist_ok=True)
    mount(
        "outgrow-tmp",
        root + "/tmp",
        "tmpfs",
        MS_NOSUID | MS_NODEV,
        f"mode=1777,size={spec['tmp_size']}",
    )
    return root


def _proc(root: str) -> None:
    proc = root + "/proc"
    os.makedirs(proc, exist_ok=True)
    mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for p in PROC_READONLY:
        if os.path.exists(f"{proc}/{p}"):
            mount(f"{proc}/{p}", f"{proc}/{p}", None, MS_BIND)
            mount(
                None,
                f"{proc}/{p}",
                None,
                MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
            )


def _mask_proc(root: str) -> None:
    """Mask /proc files with the job's own /dev/null (not the host's: CRIU must find every
    mount's source inside the job's namespace)."""
    for p in PROC_MASKED_FILES:
        if os.path.exists(f"{root}/proc/{p}"):
            mount(f"{root}/dev/null", f"{root}/proc/{p}", None, MS_BIND)
    for p in PROC_MASKED_DIRS:
        if os.path.isdir(f"{root}/proc/{p}"):
            mount(
                "outgrow-mask",
                f"{root}/proc/{p}",
                "tmpfs",
                MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                "size=0",
            )


def _dev(root: str, tty_gid: int) -> None:
    dev = root + "/dev"
    os.makedirs(dev, exist_ok=True)
    mount("outgrow-dev", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=64k")
    for name, major, minor in DEVICES:
        os.mknod(f"{dev}/{name}", 0o666 | 0o020000, os.makedev(major, minor))
        os.chmod(f"{dev}/{name}", 0o666)
    # The job's own devpts instance: its terminals are part of what CRIU moves.
    os.makedirs(f"{dev}/pts")
    mount(
        "devpts",
        f"{dev}/pts",
        "devpts",
        MS_NOSUID | MS_NOEXEC,
        f"newinstance,ptmxmode=0666,mode=0620,gid={tty_gid}",
    )
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0")):
        os.symlink(target, f"{dev}/{name}")
    for name, target in (("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    os.makedirs(f"{dev}/shm")
    mount(
        "outgrow-shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=64m"
    )
    _mask_proc(root)


def pivot(root: str) -> None:
    os.chdir(root)
    # pivot_root(".", ".") stacks the old root under the new one; detach it at once.
    _check(libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "detaching the host's root")
    os.chdir("/")


def seccomp_filter() -> Any:
    """Everything allowed but what ``DENIED`` lists (EPERM), clone() with namespace flags
    (EPERM) and clone3 (ENOSYS: libc falls back to clone, whose flags a filter can see).
    Built before pivot_root: libseccomp is the host's."""
    import seccomp  # type: ignore[import-not-found]  # Debian's python3-seccomp

    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED:
        # not a syscall of this architecture or libseccomp version: nothing to deny
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            f.add_rule(seccomp.ERRNO(errno.EPERM), name)
    for bit in range(32):  # a rule per namespace flag: any one of them is refused
        flag = 1 << bit
        if flag & CLONE_NS_FLAGS:
            arg = seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag)
            f.add_rule(seccomp.ERRNO(errno.EPERM), "clone", arg)
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    return f


def drop_privileges(uid: int, gid: int) -> None:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap}")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # clears permitted and effective capabilities

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    data = (Data * 2)()  # all zero: the inheritable set too
    _check(libc.syscall(SYS_CAPSET, ctypes.byref(Header(CAP_V3, 0)), ctypes.byref(data)), "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def main(argv: list[str]) -> None:
    with open(argv[1]) as f:
        spec = json.load(f)
    os.setsid()  # the pid-namespace init must lead its session (CRIU restores it so)
    filt = seccomp_filter() if spec.get("seccomp", True) else None
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    pivot(build_root(spec))
    os.umask(0o022)
    hostname = spec.get("hostname", "job").encode()
    _check(libc.sethostname(hostname, len(hostname)), "sethostname")
    nofile = int(spec["nofile"])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY:
        nofile = min(nofile, hard)  # raising a hard limit needs CAP_SYS_RESOURCE
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    drop_privileges(int(spec["uid"]), int(spec["gid"]))
    if filt is not None:
        filt.load()
    os.chdir(spec.get("cwd", "/"))
    os.execve(spec["argv"][0], spec["argv"], spec["env"])


if __name__ == "__main__":
    try:
        main(sys.argv)
    except OSError as exc:
        # The job's stderr is not open yet: the starter's log (starter.log) keeps this.
        print(f"outgrow job init: {exc}", file=sys.stderr)
        sys.exit(127)
