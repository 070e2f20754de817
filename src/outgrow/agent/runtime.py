"""Job runtime: start a job's process tree, isolated, the way CRIU can move it.

The tree runs in its own pid, mount, uts and ipc namespaces (the sandbox: agent/sandbox.py
and agent/jobinit.py), inside the instance's network namespace (inherited from the agent)
and the instance's cgroup, as an unprivileged uid of its own. Its init is a session leader
inside the pid namespace and its stdio is opened inside (inherited descriptors break a
dump). Everything the job holds open lives in its job directory, seen at ``/job`` inside,
which moves with the job, so a restored tree finds its files again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from outgrow.agent.sandbox import (
    INIT,
    INIT_PYTHON,
    JOB_DIR,
    WORKSPACE,
    Bind,
    Sandbox,
)
from outgrow.domain.images import DEFAULT_JUPYTER_PORT, HUB_KIND, JUPYTER_KINDS, ImageKind
from outgrow.domain.oci import OciConfig, RootfsFacts
from outgrow.errors import RuntimeFailure, ValidationError

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class JobDirs:
    """The per-job directory: on the host (identical path on every instance of the job), or
    as the job sees it (``JobDirs(Path(sandbox.JOB_DIR))``)."""

    root: Path

    def inside(self) -> JobDirs:
        return JobDirs(Path(JOB_DIR))

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def rootfs(self) -> Path:
        """The job's own layer of its root file system (overlay upper + work dirs); hidden
        from the job itself."""
        return self.root / "rootfs"

    @property
    def upper(self) -> Path:
        return self.rootfs / "upper"

    @property
    def overlay_work(self) -> Path:
        return self.rootfs / "work"

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def jupyter_runtime(self) -> Path:
        return self.root / "jupyter" / "runtime"

    @property
    def jupyter_data(self) -> Path:
        return self.root / "jupyter" / "data"

    @property
    def ipython(self) -> Path:
        return self.root / "ipython"

    @property
    def status_file(self) -> Path:
        """The job's status, written by the agent, read-only for the job (jobstatus.py)."""
        return self.root / "outgrow" / "status.json"

    @property
    def stdout(self) -> Path:
        return self.logs / "stdout.log"

    @property
    def stderr(self) -> Path:
        return self.logs / "stderr.log"

    @property
    def exit_code_file(self) -> Path:
        return self.state / "exit_code"

    @property
    def run_script(self) -> Path:
        return self.state / "run.sh"

    @property
    def user_script(self) -> Path:
        return self.state / "job-script"

    def create(self, uid: int, gid: int) -> None:
        """Make the directories; those the job writes are its uid's (the rest, and the
        directory itself, stay root's)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for d in (self.upper, self.overlay_work):
            d.mkdir(parents=True, exist_ok=True)
        for d in (
            self.workspace,
            self.logs,
            self.state,
            self.root / "jupyter",
            self.jupyter_runtime,
            self.jupyter_data,
            self.ipython,
            self.home,
        ):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, uid, gid)
        # Logs of an earlier run (kept when the job ended, or made by an older outgrow that
        # ran jobs as root): the job appends to them.
        for f in (self.stdout, self.stderr):
            with contextlib.suppress(FileNotFoundError):
                os.chown(f, uid, gid)


@dataclass(frozen=True)
class JobLaunch:
    """What the agent needs to start a job. Plain data: it is also the agent API body."""

    job_id: str
    kind: ImageKind
    python_bin_dir: str  # the image's venv bin directory
    script: str = ""  # python: the job script (ignored for Jupyter images)
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = DEFAULT_JUPYTER_PORT
    jupyter_token: str = ""
    base_url: str = "/"
    evade_oom: bool = True
    uid: int = 0  # the job's own unprivileged uid (sandbox.job_uid), its gid the same
    gid: int = 0
    # An OCI image's job: its command (Entrypoint/Cmd, or what runs the script or the
    # image's own Jupyter), environment (the image's Env) and working directory.
    argv: tuple[str, ...] = ()
    image_env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = WORKSPACE

    @property
    def is_jupyter(self) -> bool:
        return self.kind in JUPYTER_KINDS

    def validate(self) -> None:
        if not self.job_id or not all(c.isalnum() or c in "-_" for c in self.job_id):
            raise ValidationError(f"invalid job id {self.job_id!r}", field="job_id")
        if self.is_jupyter and not self.jupyter_token:
            raise ValidationError("Jupyter jobs need a token", field="jupyter_token")
        if self.kind == "python" and not self.script.strip():
            raise ValidationError("a python job needs a job script", field="script")
        if not (1 <= self.port <= 65535):
            raise ValidationError(f"port {self.port} out of range", field="port")
        if not self.base_url.startswith("/") or not self.base_url.endswith("/"):
            raise ValidationError("base_url must start and end with '/'", field="base_url")
        for k in self.env:
            if (
                not k
                or not (k[0].isalpha() or k[0] == "_")
                or not all(c.isalnum() or c == "_" for c in k)
            ):
                raise ValidationError(f"invalid environment variable name {k!r}", field="env")


def job_command(launch: JobLaunch, dirs: JobDirs) -> list[str]:
    """The job's main command (run by the init shell, not exec'd, so the exit code is kept);
    ``dirs`` as the job sees them."""
    bin_dir = Path(launch.python_bin_dir)
    if launch.argv:
        return list(launch.argv)
    if launch.kind == HUB_KIND:
        return hub_singleuser_command(launch, dirs)
    if launch.is_jupyter:
        return jupyter_command(str(bin_dir / "jupyter"), launch)
    if launch.script.startswith("#!"):
        return [str(dirs.user_script)]
    return [str(bin_dir / "python"), "-u", str(dirs.user_script)]


def jupyter_command(jupyter: str, launch: JobLaunch) -> list[str]:
    """``jupyter lab|server`` with outgrow's token, base URL and settings."""
    app = "lab" if launch.kind == "jupyter-lab" else "server"
    return [
        jupyter,
        app,
        "--ip=0.0.0.0",
        f"--port={launch.port}",
        "--no-browser",
        f"--ServerApp.token={launch.jupyter_token}",
        f"--ServerApp.base_url={launch.base_url}",
        f"--ServerApp.root_dir={WORKSPACE}",
        "--ServerApp.allow_remote_access=True",
        "--ServerApp.port_retries=0",
        # Terminals are the job's own (its devpts instance moves with it).
        "--ServerApp.terminals_enabled=True",
        # Keep the notary DB in memory: no SQLite file held open outside the job dir.
        "--NotebookNotary.db_file=:memory:",
    ]


def oci_command(
    launch: JobLaunch, config: OciConfig, facts: RootfsFacts | None, dirs: JobDirs
) -> tuple[str, ...]:
    """What an OCI image's job runs (``dirs`` as the job sees them): the image's own
    Jupyter; its Entrypoint with the job's script in place of Cmd; or Entrypoint + Cmd."""
    found = facts.found if facts else {}
    if launch.is_jupyter:
        return tuple(jupyter_command(found.get("jupyter", "jupyter"), launch))
    if launch.script.strip():
        script = str(dirs.user_script)
        python = facts.python if facts else None
        if launch.script.startswith("#!"):
            run: tuple[str, ...] = (script,)
        elif python:
            run = (python, "-u", script)
        else:
            run = ("/bin/sh", script)
        return config.entrypoint + run
    if not config.command:
        raise ValidationError("the image has no Entrypoint or Cmd: give the job a script")
    return config.command


def hub_singleuser_command(launch: JobLaunch, dirs: JobDirs) -> list[str]:
    """A JupyterHub user's server: ``jupyterhub-singleuser`` takes the hub's OAuth settings,
    its API token and its prefix from the JUPYTERHUB_* environment the spawner put in the
    job's env (docs/jupyterhub.md); the options here win over that environment. It
    authenticates with the hub, so no Jupyter token is set on the command line."""
    return [
        str(Path(launch.python_bin_dir) / "jupyterhub-singleuser"),
        "--ip=0.0.0.0",
        f"--port={launch.port}",
        f"--ServerApp.base_url={launch.base_url}",
        f"--ServerApp.root_dir={WORKSPACE}",
        "--ServerApp.port_retries=0",
        "--ServerApp.terminals_enabled=True",  # as above: the job's own ptys move
        "--NotebookNotary.db_file=:memory:",
    ]


def job_env(launch: JobLaunch, dirs: JobDirs) -> dict[str, str]:
    """The job's environment (``dirs`` as the job sees them), under outgrow's names and the
    names float (MMCloud) job scripts use; an OCI image's own Env below them."""
    path = launch.image_env.get("PATH", SYSTEM_PATH) if launch.argv else None
    env = {
        **launch.image_env,
        "PATH": path or f"{launch.python_bin_dir}:{SYSTEM_PATH}",
        "HOME": str(dirs.home),
        "USER": "job",
        # Terminals run it. bash, not dash: dash keeps /dev/tty open beside the pty, which
        # CRIU refuses to dump ("ctty inheritance").
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "OUTGROW_JOB_ID": launch.job_id,
        "OUTGROW_JOB_DIR": str(dirs.root),
        "OUTGROW_WORKSPACE": WORKSPACE,
        "OUTGROW_LOG_PATH": str(dirs.logs),
        "OUTGROW_STATUS_FILE": str(dirs.status_file),
        "FLOAT_JOB_ID": launch.job_id,
        "FLOAT_LOG_PATH": str(dirs.logs),
        "JUPYTER_RUNTIME_DIR": str(dirs.jupyter_runtime),
        "JUPYTER_DATA_DIR": str(dirs.jupyter_data),
        "JUPYTER_CONFIG_DIR": str(dirs.root / "jupyter" / "config"),
        "IPYTHONDIR": str(dirs.ipython),
    }
    if launch.python_bin_dir:
        env["VIRTUAL_ENV"] = str(Path(launch.python_bin_dir).parent)
    env.update(launch.env)
    return env


def write_run_script(launch: JobLaunch, dirs: JobDirs) -> Path:
    """The job's init script (in the host's job directory, written for the job's view of
    it). It re-opens stdio *inside* (inherited descriptors from outside break the dump),
    runs the job and records its exit code."""
    dirs.create(launch.uid, launch.gid)
    inner = dirs.inside()
    if launch.kind == "python" or launch.script.strip():
        dirs.user_script.write_text(launch.script)
        dirs.user_script.chmod(0o755)
    env_lines = "\n".join(
        f"export {k}={shlex.quote(v)}" for k, v in sorted(job_env(launch, inner).items())
    )
    cmd = shlex.join(job_command(launch, inner))
    text = f"""# generated by the outgrow agent for job {launch.job_id}
exec </dev/null >>{shlex.quote(str(inner.stdout))} 2>>{shlex.quote(str(inner.stderr))}
{env_lines}
cd {shlex.quote(launch.workdir)}
rm -f {shlex.quote(str(inner.exit_code_file))}
{cmd}
echo $? > {shlex.quote(str(inner.exit_code_file))}
"""
    dirs.run_script.write_text(text)
    return dirs.run_script


@dataclass
class JobProcess:
    """A running (or finished) job tree, identified by the host pid of its namespace init."""

    job_id: str
    init_pid: int
    start_ticks: int  # /proc/<pid>/stat starttime: guards against pid reuse
    started_at: float

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> JobProcess:
        return cls(**json.loads(text))

    def alive(self) -> bool:
        return proc_start_ticks(self.init_pid) == self.start_ticks and not _is_zombie(self.init_pid)


def proc_start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may contain spaces, so split after ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def ns_init_pid(outer_pid: int, timeout: float = 5.0) -> int:
    """The host pid of the pid-namespace init that ``unshare --fork`` (outer_pid) forked."""
    deadline = time.monotonic() + timeout
    children = Path(f"/proc/{outer_pid}/task/{outer_pid}/children")
    while time.monotonic() < deadline:
        try:
            kids = children.read_text().split()
        except OSError as exc:
            raise RuntimeFailure("the job exited while starting", detail=str(exc)) from exc
        if kids:
            return int(kids[0])
        time.sleep(0.005)
    raise RuntimeFailure("the job did not start within 5 s")


def sandbox_for(
    launch: JobLaunch,
    dirs: JobDirs,
    *,
    root: Path,
    lower: list[Path],
    binds: list[Bind],
    nofile: int,
) -> Sandbox:
    """The sandbox of ``launch``: its root (``lower`` under the job's own layer, mounted at
    ``root``), the host's read-only ``binds``, its job directory at /job and /workspace."""
    inner = dirs.inside()
    return Sandbox(
        root=str(root),
        lower=tuple(str(p) for p in lower),
        upper=str(dirs.upper),
        work=str(dirs.overlay_work),
        binds=(
            *binds,
            Bind(str(dirs.root), JOB_DIR, ro=False),
            Bind(str(dirs.workspace), WORKSPACE, ro=False),
        ),
        hide=(str(inner.rootfs),),
        uid=launch.uid,
        gid=launch.gid,
        argv=("/bin/sh", str(inner.run_script)),
        env={"PATH": SYSTEM_PATH},
        hostname=f"job-{launch.job_id}"[:63],
        nofile=nofile,
    )


def launch_job(
    launch: JobLaunch,
    dirs: JobDirs,
    sandbox: Sandbox,
    spec_path: Path,
    add_to_cgroup: Callable[[int], None],
) -> JobProcess:
    """Start the job tree in its sandbox. ``add_to_cgroup(pid)`` places the starter in the
    instance cgroup before it execs the job's init, so every process of the job is confined
    from the first byte. ``spec_path``: where the sandbox spec is written for the init (a
    place of the agent's, out of the job's sight)."""
    launch.validate()
    write_run_script(launch, dirs)
    Path(sandbox.root).mkdir(parents=True, exist_ok=True)
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(sandbox.to_dict()))
    spec_path.chmod(0o600)
    # The starter waits on stdin until it is in the cgroup, then becomes `unshare`, whose
    # child (pid 1 of the new namespaces) is the sandbox's init, which execs the job.
    argv = [
        "/bin/sh",
        "-c",
        'read _go && exec "$@"',
        "sh",
        "unshare",
        "--fork",
        "--pid",
        "--mount",
        "--uts",
        "--ipc",
        "--propagation",
        "private",
        INIT_PYTHON,
        "-I",
        str(INIT),
        str(spec_path),
    ]
    try:
        starter = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=open(dirs.logs / "starter.log", "ab"),  # noqa: SIM115 - handed to the child
            close_fds=True,
            start_new_session=True,
            cwd="/",
        )
    except OSError as exc:
        raise RuntimeFailure("could not start the job", detail=str(exc)) from exc
    try:
        add_to_cgroup(starter.pid)
        assert starter.stdin is not None
        starter.stdin.write(b"go\n")
        starter.stdin.close()
        init = ns_init_pid(starter.pid)
    except Exception:
        starter.kill()
        starter.wait()
        raise
    ticks = proc_start_ticks(init)
    if ticks is None:
        raise RuntimeFailure("the job exited at once; see its starter log")
    return JobProcess(
        job_id=launch.job_id, init_pid=init, start_ticks=ticks, started_at=time.time()
    )


def read_exit_code(dirs: JobDirs) -> int | None:
    try:
        return int(dirs.exit_code_file.read_text().strip())
    except (OSError, ValueError):
        return None


def signal_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(not Path(f"/proc/{p}").exists() or _is_zombie(p) for p in pids):
            return True
        time.sleep(0.02)
    return False


def stop_tree(pids_fn: Callable[[], list[int]], grace: float = 5.0) -> None:
    """SIGTERM every process of the job (they are all in the instance cgroup), then SIGKILL."""
    pids = list(pids_fn())
    signal_pids(pids, signal.SIGTERM)
    signal_pids(pids, signal.SIGCONT)  # a stopped tree must wake up to die
    if not wait_gone(pids, grace):
        signal_pids(list(pids_fn()), signal.SIGKILL)
        wait_gone(list(pids_fn()), 5.0)
