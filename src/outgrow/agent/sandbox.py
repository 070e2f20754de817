"""The job sandbox, agent side: what the job's root is made of, and how CRIU moves it.

A job runs in its own mount namespace (agent/jobinit.py builds it) whose root is an
overlay: the image below, read-only (a venv image's *skeleton* root with the host's /usr,
the interpreter and the venv bound read-only at their own paths; an OCI image's unpacked
rootfs), and the job's own upper directory above, kept in the job directory so it moves
with the job. The job directory is bound read-write at ``/job`` (its workspace also at
``/workspace``); the job runs as an unprivileged uid of its own, with no capabilities.

CRIU never saves the root file system: the restoring agent mounts the same overlay again
(``mounted_root``) and passes it as ``--root``; every bind from the host is an *external*
mount, named by a key at dump time and mapped to the target's path at restore.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from outgrow.errors import RuntimeFailure

JOB_DIR = "/job"  # the job directory, inside the sandbox
WORKSPACE = "/workspace"  # its workspace, inside the sandbox
# Job uids: one per job, derived from its id (the same on every instance it moves to),
# from a range no host account uses.
UID_BASE = 2_000_000
UID_SPAN = 1_000_000
SKELETON_VERSION = "v1"
# What a venv image needs of the host, read-only at the same paths (when they exist).
HOST_BINDS = ("/usr", "/etc/alternatives", "/etc/ssl/certs")
INIT = Path(__file__).with_name("jobinit.py")
INIT_PYTHON = "/usr/bin/python3"  # Debian's, with python3-seccomp


def job_uid(job_id: str) -> int:
    digest = hashlib.sha256(job_id.encode()).digest()
    return UID_BASE + int.from_bytes(digest[:4], "big") % UID_SPAN


@dataclass(frozen=True)
class Bind:
    src: str  # host path
    dst: str  # path inside the sandbox
    ro: bool = True


@dataclass(frozen=True)
class Sandbox:
    """Everything jobinit.py needs (its JSON spec) and CRIU needs to move the job."""

    root: str  # where the root is mounted (a host directory; the mount is the job's)
    lower: tuple[str, ...]  # read-only layers, top first
    upper: str
    work: str
    binds: tuple[Bind, ...]
    uid: int
    gid: int
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str = "/"
    hostname: str = "job"
    hide: tuple[str, ...] = ()  # directories covered by an empty read-only tmpfs
    nofile: int = 65536
    tmp_size: str = "512m"
    seccomp: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rootfs"] = {"lower": list(self.lower), "upper": self.upper, "work": self.work}
        d["env"] = dict(self.env)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Sandbox:
        return cls(
            root=d["root"],
            lower=tuple(d["lower"]),
            upper=d["upper"],
            work=d["work"],
            binds=tuple(Bind(**b) for b in d["binds"]),
            uid=int(d["uid"]),
            gid=int(d["gid"]),
            argv=tuple(d["argv"]),
            env=dict(d.get("env", {})),
            cwd=d.get("cwd", "/"),
            hostname=d.get("hostname", "job"),
            hide=tuple(d.get("hide", ())),
            nofile=int(d.get("nofile", 65536)),
            tmp_size=d.get("tmp_size", "512m"),
            seccomp=bool(d.get("seccomp", True)),
        )

    # ---- CRIU ---------------------------------------------------------------------
    def criu_dump_args(self) -> list[str]:
        """Name every bind from the host (an external mount) by a key."""
        args: list[str] = []
        for i, b in enumerate(self.binds):
            args += ["--external", f"mnt[{b.dst}]:m{i}"]
        return args

    def criu_restore_args(self, root: Path) -> list[str]:
        args = ["--root", str(root)]
        for i, b in enumerate(self.binds):
            args += ["--external", f"mnt[m{i}]:{b.src}"]
        return args


# ---- the root ---------------------------------------------------------------------------
def overlay_options(sb: Sandbox) -> str:
    return f"lowerdir={':'.join(sb.lower)},upperdir={sb.upper},workdir={sb.work}"


@contextlib.contextmanager
def mounted_root(sb: Sandbox, at: Path) -> Iterator[Path]:
    """The job's root mounted at ``at`` in the agent's mount namespace, for a restore:
    CRIU binds it as the restored namespace's root, which keeps it after our lazy unmount."""
    at.mkdir(parents=True, exist_ok=True)
    opts = f"{overlay_options(sb)},nosuid,nodev"
    _run(["mount", "-t", "overlay", "-o", opts, "outgrow-root", str(at)], "mounting the job's root")
    try:
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            at.rmdir()


def ensure_skeleton(cache_dir: Path) -> Path:
    """The skeleton root of venv images (once per host): merged-/usr symlinks, the mount
    points of the host binds, a minimal /etc. Built under a lock; complete or absent."""
    path = cache_dir / f"skeleton-{SKELETON_VERSION}"
    if (path / ".complete").exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache_dir / f"skeleton-{SKELETON_VERSION}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if (path / ".complete").exists():
            return path
        shutil.rmtree(path, ignore_errors=True)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        _make_skeleton(tmp)
        tmp.rename(path)
        (path / ".complete").touch()
        return path
    finally:
        os.close(fd)


def _make_skeleton(s: Path) -> None:
    s.mkdir(parents=True)
    s.chmod(0o755)
    for name in ("bin", "lib", "lib64", "sbin"):
        (s / name).symlink_to(f"usr/{name}")
    for d in ("usr", "etc/ssl/certs", "etc/alternatives", "job", "workspace", "tmp", "proc"):
        (s / d).mkdir(parents=True, exist_ok=True)
    for d in ("dev", "run", "var/tmp", "root", "home", "opt", "srv", "mnt"):
        (s / d).mkdir(parents=True, exist_ok=True)
    for d in ("tmp", "var/tmp"):
        (s / d).chmod(0o1777)
    (s / "root").chmod(0o755)  # a bind below it (an interpreter under /root) stays reachable
    etc = s / "etc"
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text("root:x:0:\ntty:x:5:\nnogroup:x:65534:\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost\n")
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
    (etc / "resolv.conf").write_text("")
    for f in ("ld.so.cache", "os-release", "localtime", "mime.types"):
        with contextlib.suppress(OSError):
            shutil.copy2(Path("/etc") / f, etc / f, follow_symlinks=True)


def venv_binds(venv: Path) -> list[Bind]:
    """What a virtualenv built on this host needs, read-only at the same paths: /usr (and
    the /etc parts it points into), the interpreter it was made from, the venv itself."""
    binds = [Bind(p, p) for p in HOST_BINDS if os.path.isdir(p)]
    home = _venv_home(venv)
    if home is not None and not home.is_relative_to("/usr"):
        binds.append(Bind(str(home), str(home)))
    binds.append(Bind(str(venv), str(venv)))
    return binds


def _venv_home(venv: Path) -> Path | None:
    """The prefix of the interpreter a venv was made from (``home`` is its bin dir)."""
    try:
        for line in (venv / "pyvenv.cfg").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                return Path(value.strip()).parent
    except OSError:
        return None
    return None


def image_user(rootfs: Path, user: str) -> tuple[int, int] | None:
    """The (uid, gid) an image's ``User`` (``name``, ``uid``, ``name:group``, ``uid:gid``)
    names in its own /etc/passwd and /etc/group; None for root, none or unknown (the job
    then runs as its own uid)."""
    name, _, group = user.partition(":")
    if not name:
        return None

    def lookup(file: str, key: str) -> list[str] | None:
        with contextlib.suppress(OSError):
            for line in (rootfs / "etc" / file).read_text().splitlines():
                fields = line.split(":")
                if len(fields) > 3 and key in (fields[0], fields[2]):
                    return fields
        return None

    pw = lookup("passwd", name)
    uid = int(name) if name.isdigit() else (int(pw[2]) if pw else None)
    if uid is None or uid == 0:
        return None
    gid = int(pw[3]) if pw else uid
    if group:
        gr = lookup("group", group)
        gid = int(group) if group.isdigit() else (int(gr[2]) if gr else gid)
    return uid, gid


def prepare_upper(
    upper: Path,
    lowers: Sequence[Path],
    uid: int,
    gid: int,
    hostname: str,
    own: Sequence[str] = (),
) -> None:
    """The job's own layer, prepared once: its uid in /etc/passwd and /etc/group (tools ask
    who they are), its hostname, and the directories ``own`` (an image's WorkingDir) made
    its own — the job stands in for the image's root user, which it never is."""
    etc = upper / "etc"
    for d in own:
        mine = upper / d.strip("/")
        if d.strip("/") and not mine.exists():
            mode = next(
                (
                    os.stat(lw / d.strip("/")).st_mode & 0o7777
                    for lw in lowers
                    if (lw / d.strip("/")).is_dir()
                ),
                0o755,
            )
            mine.mkdir(parents=True, exist_ok=True)
            os.chown(mine, uid, gid)
            os.chmod(mine, mode | 0o700)
    if (etc / "passwd").exists():
        return
    etc.mkdir(parents=True, exist_ok=True)
    for name, line in (
        ("passwd", f"job:x:{uid}:{gid}:outgrow job:{JOB_DIR}/home:/bin/sh\n"),
        ("group", f"job:x:{gid}:\n"),
    ):
        base = next((lw / "etc" / name for lw in lowers if (lw / "etc" / name).is_file()), None)
        text = base.read_text() if base is not None else ""
        if f":{uid}:" not in text:
            text = text + ("" if not text or text.endswith("\n") else "\n") + line
        (etc / name).write_text(text)
    (etc / "hostname").write_text(hostname + "\n")


def _run(argv: list[str], what: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeFailure(f"{what} failed", detail=f"{' '.join(argv)}: {r.stderr.strip()}")
