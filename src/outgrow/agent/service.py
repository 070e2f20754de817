"""The agent's logic, independent of HTTP: one instance, at most one job.

The agent owns the instance's cgroup and runs CRIU. It never calls the control plane:
the control plane (or a peer agent during a migration) calls it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from outgrow.agent.cgroups import Cgroup, detect
from outgrow.agent.checkpoint import Criu, images_size
from outgrow.agent.images import BUILTIN_IMAGES, ImageCache, ImageSpec
from outgrow.agent.jobstorage import mount_job_dir, release_job_dir
from outgrow.agent.netalias import borrowed_address
from outgrow.agent.runtime import (
    JUPYTER_KINDS,
    JobDirs,
    JobLaunch,
    JobProcess,
    launch_job,
    proc_start_ticks,
    read_exit_code,
    signal_pids,
    stop_tree,
    wait_gone,
)
from outgrow.domain.security import PAGE_SERVER_PORTS
from outgrow.domain.storage import JobStorage
from outgrow.errors import (
    CheckpointError,
    ConflictError,
    NotFoundError,
    OutgrowError,
    RuntimeFailure,
    StorageError,
)

log = logging.getLogger("outgrow.agent")
MIB = 1024**2
METRICS_KEEP = 3600  # one hour of 1 s samples
LIVE_PHASES = ("preparing", "starting", "running", "checkpointed")


@dataclass(frozen=True)
class AgentConfig:
    instance_id: str
    cgroup_name: str
    netns_path: str
    address: str
    port: int
    jobs_dir: Path
    work_dir: Path  # per-instance state (checkpoint images, receive dirs)
    image_cache_dir: Path
    criu_path: Path
    oom_headroom_bytes: int = 64 * MIB
    sample_interval: float = 1.0


@dataclass
class JobState:
    launch: JobLaunch
    image: dict[str, Any]
    process: JobProcess | None = None
    phase: str = "preparing"  # preparing|starting|running|exited|failed|checkpointed|stopped
    message: str = ""
    exit_code: int | None = None
    oom_stalled_at: float | None = None
    restored: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["launch"]["env"] = dict(self.launch.env)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobState:
        proc = d.get("process")
        return cls(
            launch=JobLaunch(**d["launch"]),
            image=d["image"],
            process=JobProcess(**proc) if proc else None,
            phase=d["phase"],
            message=d.get("message", ""),
            exit_code=d.get("exit_code"),
            oom_stalled_at=d.get("oom_stalled_at"),
            restored=d.get("restored", False),
        )


@dataclass
class Receive:
    rid: str
    dir: Path
    page_server: subprocess.Popen[bytes] | None = None
    port: int | None = None
    created: float = field(default_factory=time.time)


class Agent:
    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg
        self.cgroup: Cgroup = detect().open(cfg.cgroup_name)
        self.criu = Criu(cfg.criu_path)
        self.images = ImageCache(cfg.image_cache_dir)
        self.netns_inode = os.stat(cfg.netns_path).st_ino
        self._lock = threading.RLock()
        self._job: JobState | None = None
        self._receives: dict[str, Receive] = {}
        self._samples: deque[dict[str, Any]] = deque(maxlen=METRICS_KEEP)
        self._image_progress: deque[str] = deque(maxlen=50)
        self._image_progress_total = 0
        self._last_cpu: tuple[float, int] | None = None
        self._stop = threading.Event()
        self._reclaim_at: float | None = None
        self._reclaim_source = ""
        self._lock_table = f"og-move-{cfg.instance_id}"
        self.cfg.work_dir.mkdir(parents=True, exist_ok=True)
        self._adopt()
        self._load_reclaim()

    # ---- persistence: an agent that restarts re-adopts its job -----------------------
    @property
    def _state_file(self) -> Path:
        return self.cfg.work_dir / "agent-job.json"

    def _save(self) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        if self._job is None:
            self._state_file.unlink(missing_ok=True)
            return
        tmp.write_text(json.dumps(self._job.to_dict()))
        tmp.replace(self._state_file)

    def _adopt(self) -> None:
        try:
            self._job = JobState.from_dict(json.loads(self._state_file.read_text()))
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring unreadable job state %s: %s", self._state_file, exc)
            return
        job = self._job
        if job.phase in ("preparing", "starting", "running") and not (
            job.process and job.process.alive()
        ):
            job.phase, job.message = "failed", "the job was not running when the agent restarted"
        log.info("re-adopted job %s (%s)", job.launch.job_id, job.phase)

    @property
    def _reclaim_file(self) -> Path:
        return self.cfg.work_dir / "reclaim.json"

    def _load_reclaim(self) -> None:
        try:
            d = json.loads(self._reclaim_file.read_text())
            self._reclaim_at, self._reclaim_source = float(d["at"]), str(d["source"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("ignoring an unreadable reclaim notice: %s", exc)

    # ---- lifecycle ------------------------------------------------------------------
    def start_background(self) -> None:
        threading.Thread(target=self._sample_loop, name="metrics", daemon=True).start()
        threading.Thread(target=self._oom_loop, name="oom-watch", daemon=True).start()

    def close(self) -> None:
        self._stop.set()

    def reclaim_notice(self, in_s: float, source: str = "provider") -> dict[str, Any]:
        """The provider announced this instance will be taken away in ``in_s`` seconds
        (a spot reclaim). Recorded and reported in the job status so the control plane
        moves the job before the deadline."""
        at = time.time() + max(in_s, 0.0)
        if self._reclaim_at is None or at < self._reclaim_at:
            self._reclaim_at, self._reclaim_source = at, source
            # Kept on disk: an agent that restarts still knows its instance is going.
            tmp = self._reclaim_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"at": at, "source": source}))
            tmp.replace(self._reclaim_file)
            log.warning(
                "reclaim notice (%s): instance %s goes away in %.0f s",
                source,
                self.cfg.instance_id,
                in_s,
            )
        return {"reclaim_at": self._reclaim_at}

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "instance_id": self.cfg.instance_id,
            "address": self.cfg.address,
            "job_id": self._job.launch.job_id if self._job else None,
            "cgroup_version": self.cgroup.version,
        }

    def dirs_for(self, job_id: str) -> JobDirs:
        return JobDirs(self.cfg.jobs_dir / job_id)

    # ---- start / status / stop ------------------------------------------------------
    def start_job(self, launch: JobLaunch, image: ImageSpec) -> dict[str, Any]:
        launch.validate()
        with self._lock:
            if self._job and self._job.phase in (
                "preparing",
                "starting",
                "running",
                "checkpointed",
            ):
                raise ConflictError(
                    f"instance {self.cfg.instance_id} already runs job {self._job.launch.job_id}"
                )
            self._job = JobState(launch=launch, image=asdict(image))
            self._image_progress.clear()
            self._image_progress_total = 0
            self._save()
        threading.Thread(target=self._prepare_and_launch, args=(launch, image), daemon=True).start()
        return self.job_status()

    def _prepare_and_launch(self, launch: JobLaunch, image: ImageSpec) -> None:
        job = self._job
        assert job is not None
        try:
            built = self.images.ensure(image, progress=self._progress)
            launch = JobLaunch(**{**asdict(launch), "python_bin_dir": str(built.bin_dir)})
            self.cgroup.set_oom_stall(launch.evade_oom)
            with self._lock:
                job.launch = launch
                job.phase = "starting"
                job.process = launch_job(
                    launch, self.dirs_for(launch.job_id), self.cgroup.add_process
                )
                self._save()
            if launch.kind in JUPYTER_KINDS:
                self._wait_jupyter(launch, timeout=120)
            with self._lock:
                if job.phase == "starting":
                    job.phase = "running"
                    self._save()
        except OutgrowError as exc:
            log.error("job %s failed to start: %s %s", launch.job_id, exc, exc.detail or "")
            with self._lock:
                job.phase, job.message = "failed", str(exc)
                self._save()

    def _progress(self, line: str) -> None:
        self._image_progress.append(line)
        self._image_progress_total += 1

    def _wait_jupyter(self, launch: JobLaunch, timeout: float) -> None:
        url = f"http://127.0.0.1:{launch.port}{launch.base_url}api/status"
        headers = {"Authorization": f"token {launch.jupyter_token}"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self._job
            if job is None or job.process is None or not job.process.alive():
                raise RuntimeFailure("the Jupyter server exited while starting; see the job log")
            try:
                if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeFailure(f"the Jupyter server did not answer within {timeout:g} s")

    def _refresh(self) -> None:
        """Notice a job that ended: reap it (we are its parent or subreaper) and record why."""
        job = self._job
        if not job or job.phase not in ("starting", "running") or job.process is None:
            return
        pid = job.process.init_pid
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if proc_start_ticks(pid) == job.process.start_ticks and job.process.alive():
            return
        code = read_exit_code(self.dirs_for(job.launch.job_id))
        stats = self.cgroup.memory_stats() if self.cgroup.exists() else None
        if stats and stats.oom_kills:
            job.phase, job.message = "failed", "killed by the kernel: out of memory"
        elif code == 0:
            job.phase, job.message = "exited", "completed"
        else:
            job.phase = "failed"
            job.message = f"exited with code {code}" if code is not None else "killed"
        job.exit_code = code
        self.cgroup.kill_all()
        self._save()

    def job_status(self) -> dict[str, Any]:
        with self._lock:
            self._refresh()
            job = self._job
            if job is None:
                return {"phase": "none"}
            return {
                "job_id": job.launch.job_id,
                "phase": job.phase,
                "message": job.message,
                "exit_code": job.exit_code,
                "kind": job.launch.kind,
                "pid": job.process.init_pid if job.process else None,
                "started_at": job.process.started_at if job.process else None,
                "oom_stalled": job.oom_stalled_at is not None,
                "reclaim_at": self._reclaim_at,
                "reclaim_source": self._reclaim_source,
                "restored": job.restored,
                # A storage move kept the images of the ended tree (Migrator): the job can
                # be restored here if the move was cut (control plane restart).
                "kept_checkpoint": job.phase == "stopped"
                and (self.cfg.work_dir / "checkpoint" / "job.json").exists(),
                "image_progress": list(self._image_progress)[-10:],
                "image_progress_total": self._image_progress_total,
            }

    def _require_job(self, *phases: str) -> JobState:
        self._refresh()
        job = self._job
        if job is None:
            raise NotFoundError(f"instance {self.cfg.instance_id} has no job")
        if phases and job.phase not in phases:
            raise ConflictError(f"job {job.launch.job_id} is {job.phase}, not {'/'.join(phases)}")
        return job

    def stop_job(self, grace: float = 5.0) -> dict[str, Any]:
        with self._lock:
            job = self._require_job()
            self._unlock_network()
            if self.cgroup.exists():
                if self.cgroup.frozen():
                    self.cgroup.thaw()
                stop_tree(self.cgroup.procs, grace)
            if job.phase in ("preparing", "starting", "running", "checkpointed"):
                job.phase, job.message = "stopped", "stopped"
            self._save()
            return self.job_status()

    def forget_job(self) -> None:
        with self._lock:
            self._job = None
            self._save()

    def logs(self, stream: str, offset: int, limit: int = 256 * 1024) -> dict[str, Any]:
        job = self._require_job()
        dirs = self.dirs_for(job.launch.job_id)
        path = {"stdout": dirs.stdout, "stderr": dirs.stderr}.get(stream)
        if path is None:
            raise NotFoundError(f"no log stream {stream!r} (use stdout or stderr)")
        try:
            with path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                start = min(max(offset, 0), size)
                f.seek(start)
                data = f.read(limit)
        except FileNotFoundError:
            return {"data": "", "offset": 0, "size": 0}
        # Never split a UTF-8 sequence between two reads: stop before an incomplete tail.
        cut = len(data)
        for back in range(1, min(4, len(data)) + 1):
            b = data[-back]
            if b & 0xC0 == 0x80:
                continue  # continuation byte: keep looking for the lead byte
            need = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4
            if need > back:
                cut = len(data) - back
            break
        data = data[:cut]
        return {"data": data.decode(errors="replace"), "offset": start + len(data), "size": size}

    # ---- metrics and evadeOOM -------------------------------------------------------
    def sample(self) -> dict[str, Any] | None:
        if not self.cgroup.exists():
            return None
        m = self.cgroup.memory_stats()
        c = self.cgroup.cpu_stats()
        p = self.cgroup.pressure()
        now = time.time()
        used = 0.0
        if self._last_cpu is not None and now > self._last_cpu[0]:
            used = (c.usage_ns - self._last_cpu[1]) / 1e9 / (now - self._last_cpu[0])
        self._last_cpu = (now, c.usage_ns)
        return {
            "t": now,
            "mem_used_bytes": m.usage_bytes,
            "mem_rss_bytes": m.rss_bytes,
            "mem_cache_bytes": m.cache_bytes,
            "mem_swap_bytes": m.swap_bytes,
            "mem_limit_bytes": m.limit_bytes,
            "cpu_used_vcpus": round(max(used, 0.0), 4),
            "cpu_quota_vcpus": c.quota_vcpus,
            "cpu_throttled_ns": c.throttled_ns,
            "mem_pressure_some_avg10": p.some_avg10 if p else None,
            "mem_pressure_full_avg10": p.full_avg10 if p else None,
            "oom_stalled": m.oom_stalled,
            "oom_kills": m.oom_kills,
        }

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.cfg.sample_interval):
            try:
                s = self.sample()
                if s is not None:
                    self._samples.append(s)
            except OutgrowError as exc:
                log.debug("sampling failed: %s", exc)

    def _oom_loop(self) -> None:
        """Notice an OOM stall at once (eventfd on v1) and record it; the tree stays
        stalled (never killed) until the control plane moves it to a bigger instance."""
        while not self._stop.is_set():
            if not self.cgroup.exists():
                self._stop.wait(0.5)
                continue
            try:
                with self.cgroup.oom_watch() as watch:
                    while not self._stop.is_set():
                        if watch.wait(0.5):
                            self._mark_stalled()
                            self._stop.wait(0.1)
                        elif (
                            self._job
                            and self._job.oom_stalled_at
                            and not self.cgroup.memory_stats().oom_stalled
                        ):
                            self._job.oom_stalled_at = None
            except OutgrowError as exc:
                log.debug("oom watch: %s", exc)
                self._stop.wait(0.5)

    def _mark_stalled(self) -> None:
        job = self._job
        if job and job.oom_stalled_at is None and job.phase in ("running", "starting"):
            job.oom_stalled_at = time.time()
            log.warning("job %s is stalled at its memory limit (evadeOOM)", job.launch.job_id)
            self._samples.append(self.sample() or {})

    def metrics(self, since: float = 0.0) -> list[dict[str, Any]]:
        return [s for s in list(self._samples) if s.get("t", 0) > since]

    # ---- checkpoint (source side) ---------------------------------------------------
    def _lock_network(self) -> None:
        """Cut the job off from outside peers before the dump: drop new inbound
        connections (except to the agent) and destroy non-loopback sockets in every
        connected state (not only established: a peer that closed first leaves CLOSE_WAIT,
        which CRIU cannot bind back on another address) other than the agent's own. CRIU
        can only move connections inside the tree."""
        port = self.cfg.port
        rules = f"""table inet {self._lock_table} {{
  chain input {{ type filter hook input priority -5; policy accept;
    iifname "lo" accept
    tcp dport {port} accept
    tcp flags & (syn | ack) == syn drop
  }}
}}"""
        _run(["nft", "-f", "-"], input_=rules)
        _run(
            [
                "ss",
                "-tnK",
                "state",
                "connected",
                f"( not dst 127.0.0.0/8 and not sport = :{port} and not dport = :{port} )",
            ]
        )

    def _unlock_network(self) -> None:
        subprocess.run(
            ["nft", "delete", "table", "inet", self._lock_table], capture_output=True, check=False
        )

    def _freeze(self, timeout: float = 10.0) -> float:
        """Freeze the tree. A tree stalled at its limit cannot reach the freezer, so grant
        it headroom in small steps only while it is still stalled."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            stats = self.cgroup.memory_stats()
            if stats.oom_stalled and stats.limit_bytes is not None:
                self.cgroup.set_memory_limit(stats.limit_bytes + self.cfg.oom_headroom_bytes)
            try:
                self.cgroup.freeze(timeout=0.2)
                return time.monotonic() - t0
            except RuntimeFailure:
                if time.monotonic() > deadline:
                    raise

    def checkpoint(
        self,
        *,
        target_url: str | None,
        target_token: str | None,
        receive_id: str | None,
        page_server_port: int | None,
        dest_dir: str | None,
        dest_url: str | None = None,
    ) -> dict[str, Any]:
        """Freeze, dump (pages streamed to the target's page server when given), send the
        remaining images to the target (or write them to dest_dir, or upload them to
        ``dest_url``, an s3:// URL). The tree is left frozen: commit() kills it, abort()
        resumes it — so a failed upload loses nothing."""
        with self._lock:
            job = self._require_job("running", "starting")
            assert job.process is not None
            t_all = time.monotonic()
            self._lock_network()
            try:
                freeze_s = self._freeze()
                ckpt = Path(dest_dir) if dest_dir else self.cfg.work_dir / "checkpoint"
                if ckpt.exists() and not dest_dir:
                    shutil.rmtree(ckpt)
                ckpt.mkdir(parents=True, exist_ok=True)
                (ckpt / "job.json").write_text(json.dumps(job.to_dict()))
                (ckpt / "source-address").write_text(self.cfg.address)
                ps = (
                    (_host_of(target_url), page_server_port)
                    if (target_url and page_server_port)
                    else None
                )
                stats_before = self.cgroup.memory_stats()
                run = self.criu.dump(
                    job.process.init_pid,
                    ckpt,
                    netns_inode=self.netns_inode,
                    freezer_path=self.cgroup.freezer_path(),
                    page_server=ps,
                )
                local_bytes = images_size(ckpt)
                t_x = time.monotonic()
                if target_url and receive_id:
                    from outgrow.agent.client import AgentClient

                    with AgentClient(target_url, target_token or "") as peer:
                        for p in sorted(ckpt.iterdir()):
                            if p.is_file():
                                peer.upload(receive_id, p)
                elif dest_url:
                    # boto3 is optional (outgrow[aws]): imported only for S3 checkpoints.
                    from outgrow.providers.aws.storage import upload_url

                    upload_url(ckpt, dest_url)
                transfer_s = time.monotonic() - t_x
            except BaseException:
                self._resume_after_failure()
                raise
            job.phase = "checkpointed"
            self._save()
            return {
                "freeze_s": round(freeze_s, 4),
                "dump_s": round(run.seconds, 4),
                "transfer_s": round(transfer_s, 4),
                "local_bytes": local_bytes,
                "rss_bytes": stats_before.rss_bytes,
                "mem_used_bytes": stats_before.usage_bytes,
                "total_s": round(time.monotonic() - t_all, 4),
                "images_dir": str(ckpt),
            }

    def _resume_after_failure(self) -> None:
        try:
            self._unlock_network()
            self.cgroup.thaw()  # also ends a freeze that timed out half-way (FREEZING)
            signal_pids(self.cgroup.procs(), signal.SIGCONT)
        except OutgrowError as exc:
            log.error("could not resume the job after a failed checkpoint: %s", exc)

    def abort(self) -> dict[str, Any]:
        """Roll back a checkpoint: the job keeps running here, nothing lost."""
        with self._lock:
            job = self._require_job()
            self._resume_after_failure()
            if job.phase == "checkpointed":
                job.phase = "running"
            self._save()
            return self.job_status()

    def commit(self, keep_images: bool = False) -> dict[str, Any]:
        """The target restored the job: end the stopped copy here. ``keep_images``: keep
        the local checkpoint so the job can be restored here again if the move fails
        after this point (jobs whose storage moves: the tree must end before its
        directory can be released)."""
        with self._lock:
            job = self._require_job("checkpointed")
            pids = self.cgroup.procs()
            self.cgroup.kill_all()
            if self.cgroup.frozen():
                self.cgroup.thaw()
            # Dying tasks leave cgroup.procs at once but hold memory and sockets until they
            # are reaped: wait for the pid-namespace init, which goes last (measured:
            # up to 0.7 s for a 4 GiB kernel).
            if job.process is not None:
                self._reap_wait(job.process.init_pid, 30.0)
            wait_gone(pids, 30.0)
            self._unlock_network()
            job.phase, job.message = "stopped", "moved to another instance"
            ckpt = self.cfg.work_dir / "checkpoint"
            if (ckpt / "dump.log").exists():  # kept for post-mortems; the images are not
                shutil.copy(ckpt / "dump.log", self.cfg.work_dir / "last-dump.log")
            if not keep_images:
                shutil.rmtree(ckpt, ignore_errors=True)
            self._save()
            return self.job_status()

    def discard_images(self) -> None:
        """Drop a checkpoint kept by commit(keep_images=True)."""
        with self._lock:
            shutil.rmtree(self.cfg.work_dir / "checkpoint", ignore_errors=True)

    # ---- job storage: the job directory arrives and leaves with the job --------------
    def mount_storage(self, job_id: str, storage: JobStorage) -> dict[str, Any]:
        with self._lock:
            self._check_storage_free(job_id, "mount")
            return mount_job_dir(storage, self.dirs_for(job_id).root)

    def release_storage(self, job_id: str, storage: JobStorage) -> dict[str, Any]:
        with self._lock:
            self._check_storage_free(job_id, "release")
            return release_job_dir(storage, self.dirs_for(job_id).root)

    def _check_storage_free(self, job_id: str, what: str) -> None:
        if "/" in job_id or job_id in ("", ".", ".."):
            raise StorageError(f"bad job id {job_id!r}")
        self._refresh()
        job = self._job
        if job and job.launch.job_id == job_id and job.phase in LIVE_PHASES:
            raise ConflictError(
                f"cannot {what} the storage of job {job_id}: it is {job.phase} here"
            )

    @staticmethod
    def _reap_wait(pid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)  # we are its parent or subreaper
                if done == pid:
                    return
            except ChildProcessError:
                if not Path(f"/proc/{pid}").exists():
                    return
            time.sleep(0.01)

    # ---- receive and restore (target side) ------------------------------------------
    def prepare_receive(self, page_server: bool) -> dict[str, Any]:
        with self._lock:
            if self._job and self._job.phase in (
                "preparing",
                "starting",
                "running",
                "checkpointed",
            ):
                raise ConflictError(f"instance {self.cfg.instance_id} already runs a job")
            rid = secrets.token_hex(6)
            rdir = self.cfg.work_dir / "receive" / rid
            rdir.mkdir(parents=True)
            rec = Receive(rid=rid, dir=rdir)
            if page_server:
                rec.port = page_server_port(self.cfg.address)
                rec.page_server = self.criu.start_page_server(rdir, self.cfg.address, rec.port)
            self._receives[rid] = rec
            return {"receive_id": rid, "page_server_port": rec.port}

    def receive_path(self, rid: str, name: str) -> Path:
        rec = self._receives.get(rid)
        if rec is None:
            raise NotFoundError(f"no receive {rid!r} on this instance")
        if "/" in name or name.startswith(".") or not name:
            raise CheckpointError(f"bad image file name {name!r}")
        return rec.dir / name

    def drop_receive(self, rid: str) -> None:
        rec = self._receives.pop(rid, None)
        if rec:
            if rec.page_server and rec.page_server.poll() is None:
                rec.page_server.kill()
                rec.page_server.wait()
            shutil.rmtree(rec.dir, ignore_errors=True)

    def restore(
        self,
        *,
        receive_id: str | None,
        source_dir: str | None,
        source_url: str | None = None,
        local_checkpoint: bool = False,
    ) -> dict[str, Any]:
        """Restore from a receive (a migration), a directory (a suspend on this host), an
        s3:// URL (a suspend on a cloud) or this instance's own kept checkpoint (the
        rollback of a move whose storage had already left)."""
        if source_url:
            from outgrow.providers.aws.storage import download_url

            tmp = self.cfg.work_dir / f"download-{secrets.token_hex(4)}"
            try:
                download_url(source_url, tmp)
                return self.restore(receive_id=None, source_dir=str(tmp))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        if local_checkpoint:
            source_dir = str(self.cfg.work_dir / "checkpoint")
        with self._lock:
            if receive_id:
                rec = self._receives.get(receive_id)
                if rec is None:
                    raise NotFoundError(f"no receive {receive_id!r} on this instance")
                if rec.page_server is not None:
                    try:
                        rec.page_server.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        self.drop_receive(receive_id)
                        raise CheckpointError("the page server did not finish") from None
                images = rec.dir
            elif source_dir:
                images = Path(source_dir)
            else:
                raise CheckpointError("restore needs a receive_id or a source_dir")
            try:
                state = JobState.from_dict(json.loads((images / "job.json").read_text()))
            except (OSError, ValueError, KeyError) as exc:
                raise CheckpointError("the checkpoint has no readable job.json") from exc
            t0 = time.monotonic()
            received = images_size(images)
            self.cgroup.set_oom_stall(state.launch.evade_oom)
            try:
                source = images / "source-address"
                with borrowed_address(
                    self.cfg.netns_path,
                    source.read_text().strip() if source.exists() else None,
                    self.cfg.address,
                ):
                    pid, run = self.criu.restore(
                        images,
                        netns_path=self.cfg.netns_path,
                        cgroup_roots=self.cgroup.criu_cgroup_roots(),
                    )
                ticks = proc_start_ticks(pid)
                if ticks is None:
                    raise CheckpointError("the restored job exited at once")
                state.process = JobProcess(state.launch.job_id, pid, ticks, time.time())
                state.phase, state.restored, state.oom_stalled_at = "running", True, None
                self._job = state
                if state.launch.kind in JUPYTER_KINDS:
                    self._wait_jupyter(state.launch, timeout=20)
            except BaseException:
                self.cgroup.kill_all()
                self._job = None
                self._save()
                raise
            finally:
                if receive_id:
                    self.drop_receive(receive_id)
            self._save()
            return {
                "restore_s": round(run.seconds, 4),
                "images_bytes": received,
                "healthy_s": round(time.monotonic() - t0, 4),
                "pid": pid,
            }


def page_server_port(address: str, ports: tuple[int, int] = PAGE_SERVER_PORTS) -> int:
    """The first free port of the page-server range (the security group lets only this
    range in from other instances)."""
    for port in range(ports[0], ports[1] + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as CRIU's own socket
            try:
                s.bind((address, port))
            except OSError:
                continue
            return port
    raise CheckpointError(f"no free page-server port in {ports[0]}-{ports[1]}")


def _host_of(url: str) -> str:
    return httpx.URL(url).host


def _run(argv: list[str], input_: str | None = None) -> None:
    proc = subprocess.run(argv, input=input_, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeFailure(f"{argv[0]} failed", detail=f"{' '.join(argv)}: {proc.stderr.strip()}")


def iter_file(path: Path, chunk: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as f:
        while data := f.read(chunk):
            yield data


def image_spec_from(d: dict[str, Any]) -> ImageSpec:
    if d.get("name") in BUILTIN_IMAGES and not d.get("pip"):
        return BUILTIN_IMAGES[d["name"]]
    return ImageSpec(
        name=d["name"],
        kind=d["kind"],
        pip=tuple(d["pip"]),
        description=d.get("description", ""),
        docs=d.get("docs", ""),
        default_port=d.get("default_port"),
    )
