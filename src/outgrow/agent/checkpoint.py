"""CRIU, wrapped: dump, page-server and restore with the flags measured on these hosts
(docs/design.md).

Only this module runs CRIU. CRIU failures become CheckpointError whose message is CRIU's
last real error line and whose detail is the tail of its log.
"""

from __future__ import annotations

import ctypes
import os
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from outgrow.errors import CheckpointError, ConfigError, RuntimeFailure

EXTERNAL_NET_KEY = "extnet"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Post-copy: CRIU resizes the pipes holding a lazy dump's pages (F_SETPIPE_SZ) up to 4 MiB
# and later tee(2)s them; above fs.pipe-max-size that needs CAP_SYS_RESOURCE, which root
# lacks on some hosts, and the transfer then fails half-way with EPERM from tee(2).
PIPE_MAX_SIZE_SYSCTL = Path("/proc/sys/fs/pipe-max-size")
LAZY_PIPE_BYTES = 4 * 1024 * 1024
# Post-copy: per process, the smallest memory regions up to this much in all travel with
# the images during the freeze (CRIU patch 0003, --lazy-pages-eager): the interpreter's
# heap and arenas, libraries' data, small arrays. Only the rest (big arrays, and medium
# ones beyond the budget) stays on the source. Without it the restored Jupyter server
# faults its working set in one page per network round trip while the background drain
# holds the link, and its first answer takes seconds. OUTGROW_LAZY_EAGER: for benchmarks.
LAZY_EAGER = os.environ.get("OUTGROW_LAZY_EAGER", "128M")
# Lines CRIU prints as "Error" that do not make an operation fail.
_HARMLESS = ("RLIMIT_NOFILE", "Could not process rule")


@dataclass(frozen=True)
class CriuRun:
    seconds: float
    log: Path


def _last_error(log: Path) -> tuple[str, str]:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "CRIU failed and left no log", ""
    tail = "\n".join(lines[-40:])
    errors = [
        ln for ln in lines if re.search(r"\bError\b", ln) and not any(h in ln for h in _HARMLESS)
    ]
    if errors:
        msg = re.sub(r"^\(\s*[\d.]+\)\s*", "", errors[0]).strip()
        msg = re.sub(r"^Error \([^)]*\):\s*", "", msg)
        return msg, tail
    return "CRIU failed (no error line in its log)", tail


def images_size(images_dir: Path) -> int:
    return sum(p.stat().st_size for p in images_dir.iterdir() if p.is_file())


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _dies_with(parent: int) -> Callable[[], None]:
    """For a CRIU run the calling thread waits for: SIGKILL it if the agent dies. An
    orphaned dump would go on and leave the job stopped with nobody to resume it; killed,
    it lets go of the tree (still frozen: a new agent resumes it, Agent.resume_interrupted).
    Not for the page server: PR_SET_PDEATHSIG follows the *thread* that started it."""

    def child() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the agent died before prctl
            os._exit(1)

    return child


def ensure_pipe_max_size(
    want: int = LAZY_PIPE_BYTES, sysctl: Path = PIPE_MAX_SIZE_SYSCTL
) -> tuple[int, int]:
    """Raise the host-wide ``fs.pipe-max-size`` to ``want`` (never lower it), so CRIU can
    size its page pipes without CAP_SYS_RESOURCE. Returns (before, after)."""
    try:
        before = int(sysctl.read_text().strip())
        if before < want:
            sysctl.write_text(str(want))
        after = int(sysctl.read_text().strip())
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(f"could not raise {sysctl} to {want}") from exc
    if after < want:
        raise RuntimeFailure(f"{sysctl} is {after}, post-copy moves need {want}")
    return before, after


def lazy_pages_copied(log: Path) -> int:
    """Pages a lazy-pages daemon copied into the restored tree (its per-process summary
    lines, logged at -v4)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return 0
    return sum(int(m) for m in re.findall(r"UFFD transferred pages: \((\d+)/\d+\)", text))


def _wait_status(rfd: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait until CRIU writes its --status-fd (ready) or exits; closes ``rfd``."""
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([rfd], [], [], min(left, 0.5))
            if ready:
                return os.read(rfd, 1) != b""
            if proc.poll() is not None:
                return False
    finally:
        os.close(rfd)


def _popen_ready(
    argv: list[str], log: Path, what: str, timeout: float, extra_fds: tuple[int, ...] = ()
) -> tuple[subprocess.Popen[bytes], float]:
    """Start a CRIU that reports readiness on ``--status-fd``; wait for it."""
    rfd, wfd = os.pipe()
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            [*argv, "--status-fd", str(wfd)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(wfd, *extra_fds),
        )
    finally:
        os.close(wfd)
    if not _wait_status(rfd, proc, timeout):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        msg, tail = _last_error(log)
        raise CheckpointError(f"criu {what} failed: {msg}", detail=tail)
    return proc, time.monotonic() - t0


def _dump_args(
    pid: int, images_dir: Path, netns_inode: int, freezer_path: str | None, extra: list[str] | None
) -> list[str]:
    """What every dump of a job says (plain, snapshot, post-copy): the tree, its images,
    TCP, the instance's netns as external, the freezer, the sandbox's external mounts."""
    args = [
        "dump", "-t", str(pid), "-D", str(images_dir), "-o", "dump.log", "-v4",
        "--tcp-established",
        # A connection the kernel accepted but the job has not (yet): its peer is
        # outside, it cannot move; the peer sees a reset and retries.
        "--skip-in-flight",
        # the agent's own lock replaces CRIU's (which would cut off the agent)
        "--network-lock", "skip",
        "--external", f"net[{netns_inode}]:{EXTERNAL_NET_KEY}",
    ]  # fmt: skip
    if freezer_path:
        args += ["--freeze-cgroup", freezer_path]
    return args + (extra or [])


class Criu:
    def __init__(self, binary: Path):
        self.binary = binary

    def check_installed(self) -> None:
        if not os.access(self.binary, os.X_OK):
            raise ConfigError(
                f"CRIU not found at {self.binary}; run `make setup` or set OUTGROW_CRIU_PATH"
            )

    def _run(
        self, args: list[str], log: Path, what: str, timeout: float, pass_fds: tuple[int, ...] = ()
    ) -> CriuRun:
        self.check_installed()
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                [str(self.binary), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                pass_fds=pass_fds,
                check=False,
                preexec_fn=_dies_with(os.getpid()),
            )
        except subprocess.TimeoutExpired as exc:
            raise CheckpointError(f"criu {what} timed out after {timeout:g} s") from exc
        dt = time.monotonic() - t0
        if proc.returncode != 0:
            msg, tail = _last_error(log)
            out = proc.stdout.decode(errors="replace").strip()
            raise CheckpointError(f"criu {what} failed: {msg}", detail=(tail + "\n" + out).strip())
        return CriuRun(seconds=dt, log=log)

    def dump(
        self,
        pid: int,
        images_dir: Path,
        *,
        netns_inode: int,
        freezer_path: str | None,
        page_server: tuple[str, int] | None = None,
        extra: list[str] | None = None,
        leave_running: bool = False,
        timeout: float = 600,
    ) -> CriuRun:
        """Dump the tree rooted at ``pid`` and leave it stopped (the caller commits by
        killing it or aborts by resuming it). External peers must be gone already; the
        agent's own lock replaces CRIU's network lock (which would cut off the agent)."""
        images_dir.mkdir(parents=True, exist_ok=True)
        args = _dump_args(pid, images_dir, netns_inode, freezer_path, extra)
        args.append("--leave-running" if leave_running else "--leave-stopped")
        if page_server:
            args += ["--page-server", "--address", page_server[0], "--port", str(page_server[1])]
        return self._run(args, images_dir / "dump.log", "dump", timeout)

    def lazy_dump(
        self,
        pid: int,
        images_dir: Path,
        *,
        netns_inode: int,
        freezer_path: str | None,
        serve: tuple[str, int],
        extra: list[str] | None = None,
        timeout: float = 600,
    ) -> tuple[subprocess.Popen[bytes], CriuRun]:
        """Post-copy dump: everything but the memory pages goes to ``images_dir``; the
        pages stay in the stopped tree and this CRIU serves them on ``serve`` (address,
        port) to the target's lazy-pages daemon. Returns once the images are written and
        the page server listens; the process exits when the target has every page (0)
        or the transfer broke (non-zero). The tree is left stopped, as with dump()."""
        self.check_installed()
        ensure_pipe_max_size()  # else the transfer fails half-way (EPERM from tee)
        images_dir.mkdir(parents=True, exist_ok=True)
        args = [str(self.binary), *_dump_args(pid, images_dir, netns_inode, freezer_path, extra)]
        args += ["--leave-stopped", "--lazy-pages", "--address", serve[0], "--port", str(serve[1])]
        args += ["--lazy-pages-eager", LAZY_EAGER]
        log = images_dir / "dump.log"
        proc, seconds = _popen_ready(args, log, "dump --lazy-pages", timeout)
        return proc, CriuRun(seconds=seconds, log=log)

    def start_lazy_pages(
        self, images_dir: Path, source: tuple[str, int], timeout: float = 30
    ) -> subprocess.Popen[bytes]:
        """The target's lazy-pages daemon: it takes the restored tree's userfaultfds from
        ``restore(lazy=True)``, fetches faulting pages first and then every other page
        from the source's page server, and exits when none is left (0) or the source
        went away (non-zero: the restored tree misses pages and cannot run on)."""
        self.check_installed()
        log = images_dir / "lazy-pages.log"
        argv = [
            str(self.binary),
            "lazy-pages",
            "--page-server",
            "--address",
            source[0],
            "--port",
            str(source[1]),
            "-D",
            str(images_dir),
            "-o",
            "lazy-pages.log",
            "-v4",
        ]
        proc, _ = _popen_ready(argv, log, "lazy-pages", timeout)
        return proc

    def start_page_server(
        self, images_dir: Path, address: str, port: int, timeout: float = 10
    ) -> subprocess.Popen[bytes]:
        """Start a one-shot page server receiving a dump's memory pages into images_dir."""
        self.check_installed()
        images_dir.mkdir(parents=True, exist_ok=True)
        rfd, wfd = os.pipe()
        try:
            proc = subprocess.Popen(
                [
                    str(self.binary),
                    "page-server",
                    "-D",
                    str(images_dir),
                    "--address",
                    address,
                    "--port",
                    str(port),
                    "--status-fd",
                    str(wfd),
                    "-o",
                    "page-server.log",
                    "-v4",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(wfd,),
            )
        finally:
            os.close(wfd)
        try:
            ready, _, _ = select.select([rfd], [], [], timeout)
            ok = bool(ready) and os.read(rfd, 1) != b""
        finally:
            os.close(rfd)
        if not ok:
            proc.kill()
            proc.wait()
            msg, tail = _last_error(images_dir / "page-server.log")
            raise CheckpointError(f"criu page-server did not start: {msg}", detail=tail)
        return proc

    def restore(
        self,
        images_dir: Path,
        *,
        netns_path: str,
        cgroup_roots: list[str],
        extra: list[str] | None = None,
        lazy: bool = False,
        timeout: float = 600,
    ) -> tuple[int, CriuRun]:
        """Restore into the calling process's network namespace (the agent's instance)
        and the given cgroup; returns the host pid of the restored tree's root. ``lazy``:
        the memory comes later from the running start_lazy_pages() daemon."""
        pidfile = images_dir / "restored.pid"
        pidfile.unlink(missing_ok=True)
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            args = [
                "restore",
                "-D",
                str(images_dir),
                "-o",
                "restore.log",
                "-v4",
                "--tcp-established",
                "--network-lock",
                "skip",
                "--restore-detached",
                "--inherit-fd",
                f"fd[{fd}]:{EXTERNAL_NET_KEY}",
                "--pidfile",
                str(pidfile),
            ]
            for root in cgroup_roots:
                args += ["--cgroup-root", root]
            args += extra or []  # the sandbox's --root and external mounts
            if lazy:
                args.append("--lazy-pages")
            run = self._run(args, images_dir / "restore.log", "restore", timeout, pass_fds=(fd,))
        finally:
            os.close(fd)
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError) as exc:
            raise CheckpointError("criu restore did not report the restored pid") from exc
        return pid, run
