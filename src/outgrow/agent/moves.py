"""Moving a job away (source side) and in (target side): the agent half of a migration.

Source: cut the job off from outside peers, freeze it, ``criu dump`` (pages streamed to
the target's page server), send the other images to the target (or write them to a
directory, or upload them to object storage), and leave the tree frozen: ``commit`` ends
it once the target runs the job, ``abort`` resumes it — so a failed move loses nothing.

Target: ``prepare_receive`` (a CRIU page server on a port of the page-server range), the
images arrive over HTTP, ``restore`` brings the tree back in this instance's network
namespace and cgroup and waits until it answers.

Post-copy (``CheckpointRequest.lazy``): the source's ``criu dump --lazy-pages`` writes every
image but the memory pages and serves those itself, on a port of the page-server range
of its own address; the target starts ``criu lazy-pages`` against it and restores with
``--lazy-pages`` (the job runs at once; a page it touches is fetched first, the others
follow); ``drain`` waits for the last page. The source tree stays stopped until then:
``commit`` waits for its CRIU to finish serving before it ends the tree.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from outgrow.agent.checkpoint import images_size, lazy_pages_copied
from outgrow.agent.core import AgentCore
from outgrow.agent.netalias import borrowed_address, nonlocal_bind
from outgrow.agent.runtime import JobProcess, proc_start_ticks, signal_pids, wait_gone
from outgrow.agent.sandbox import Sandbox, mounted_root
from outgrow.agent.state import AgentJob
from outgrow.agentapi.client import AgentClient
from outgrow.agentapi.models import (
    AgentPhase,
    CheckpointRequest,
    CheckpointResult,
    DrainResult,
    JobStatus,
    ReceiveTicket,
    RestoreRequest,
    RestoreResult,
)
from outgrow.domain.security import PAGE_SERVER_PORTS
from outgrow.errors import (
    CheckpointError,
    ConflictError,
    NotFoundError,
    OutgrowError,
    RuntimeFailure,
)

log = logging.getLogger("outgrow.agent")


@dataclass
class Receive:
    rid: str
    dir: Path
    page_server: subprocess.Popen[bytes] | None = None
    port: int | None = None
    created: float = field(default_factory=time.time)


@dataclass
class Lazy:
    """A post-copy transfer under way: the source's serving dump, or the target's
    lazy-pages daemon (with its receive directory, kept until the drain ends)."""

    proc: subprocess.Popen[bytes]
    dir: Path
    since: float = field(default_factory=time.monotonic)


class Moves:
    """The migration half of an agent (on the same core as its job lifecycle)."""

    def __init__(self, agent: AgentCore, prepare: Callable[[Mapping[str, Any]], None]):
        """``prepare(image)``: make what a job's root is made of (its image, as
        ``AgentJob.image``) present here before a restore."""
        self.agent = agent
        self.prepare = prepare
        self.cfg = agent.cfg
        self._receives: dict[str, Receive] = {}
        self._lock_table = f"og-move-{agent.cfg.instance_id}"
        self._serving: Lazy | None = None  # source: the dump serving pages
        self._pulling: Lazy | None = None  # target: the lazy-pages daemon

    # ---- source side ----------------------------------------------------------------
    def lock_network(self, page_port: int | None = None) -> None:
        """Cut the job off from outside peers before the dump: drop new inbound
        connections (except to the agent) and destroy non-loopback sockets in every
        connected state (not only established: a peer that closed first leaves CLOSE_WAIT,
        which CRIU cannot bind back on another address) other than the agent's own. CRIU
        can only move connections inside the tree. ``page_port``: a post-copy dump serves
        pages there (the target's lazy-pages connects to it)."""
        port = self.cfg.port
        serve = f"\n    tcp dport {page_port} accept" if page_port else ""
        rules = f"""table inet {self._lock_table} {{
  chain input {{ type filter hook input priority -5; policy accept;
    iifname "lo" accept
    tcp dport {port} accept{serve}
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

    def unlock_network(self) -> None:
        subprocess.run(
            ["nft", "delete", "table", "inet", self._lock_table], capture_output=True, check=False
        )

    def _freeze(self, timeout: float = 10.0) -> float:
        """Freeze the tree. A tree stalled at its limit cannot reach the freezer, so grant
        it headroom in small steps only while it is still stalled."""
        cgroup = self.agent.cgroup
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            stats = cgroup.memory_stats()
            if stats.oom_stalled and stats.limit_bytes is not None:
                cgroup.set_memory_limit(stats.limit_bytes + self.cfg.oom_headroom_bytes)
            try:
                cgroup.freeze(timeout=0.2)
                return time.monotonic() - t0
            except RuntimeFailure:
                if time.monotonic() > deadline:
                    raise

    def checkpoint(self, req: CheckpointRequest) -> CheckpointResult:
        """Freeze, dump, send the images where ``req`` says; the tree is left frozen."""
        return self._dump(req, keep_running=False)

    def snapshot(self, req: CheckpointRequest) -> CheckpointResult:
        """A checkpoint the job runs on from (a periodic snapshot): frozen for the dump
        only (as long as a move's freeze), then resumed; the images are sent while it runs."""
        if req.target_url or req.receive_id:
            raise CheckpointError("a snapshot goes to a directory or object storage")
        return self._dump(req, keep_running=True)

    def _dump(self, req: CheckpointRequest, *, keep_running: bool) -> CheckpointResult:
        a = self.agent
        with a.lock:
            job = a.require_job(AgentPhase.RUNNING, AgentPhase.STARTING)
            assert job.process is not None
            t_all = time.monotonic()
            lazy_port = None
            if req.lazy:
                if not (req.target_url and req.receive_id) or keep_running:
                    raise CheckpointError("a post-copy checkpoint goes to a target's receive")
                lazy_port = page_server_port(self.cfg.address)
            self.lock_network(lazy_port)
            try:
                freeze_s = self._freeze()
                ckpt = Path(req.dest_dir) if req.dest_dir else self.cfg.checkpoint_dir
                if ckpt.exists() and not req.dest_dir:
                    shutil.rmtree(ckpt)
                ckpt.mkdir(parents=True, exist_ok=True)
                (ckpt / "job.json").write_text(json.dumps(job.to_dict()))
                (ckpt / "source-address").write_text(self.cfg.address)
                ps = None
                if req.target_url and req.page_server_port:
                    ps = (httpx.URL(req.target_url).host, req.page_server_port)
                stats_before = a.cgroup.memory_stats()
                sandbox = Sandbox.from_dict(job.sandbox) if job.sandbox else None
                if lazy_port is not None:
                    proc, run = a.criu.lazy_dump(
                        job.process.init_pid,
                        ckpt,
                        netns_inode=a.netns_inode,
                        freezer_path=a.cgroup.freezer_path(),
                        serve=(self.cfg.address, lazy_port),
                        extra=sandbox.criu_dump_args() if sandbox else None,
                    )
                    self._serving = Lazy(proc, ckpt)
                else:
                    run = a.criu.dump(
                        job.process.init_pid,
                        ckpt,
                        netns_inode=a.netns_inode,
                        freezer_path=a.cgroup.freezer_path(),
                        page_server=ps,
                        extra=sandbox.criu_dump_args() if sandbox else None,
                        leave_running=keep_running,
                    )
                if keep_running:
                    self.resume_after_failure()  # thawed and reachable again: it runs on
                local_bytes = images_size(ckpt)
                t_x = time.monotonic()
                if req.target_url and req.receive_id:
                    with AgentClient(req.target_url, req.target_token or "") as peer:
                        files = sorted(p for p in ckpt.iterdir() if p.is_file())
                        peer.upload_all(req.receive_id, files)
                elif req.dest_url:
                    # boto3 is optional (outgrow[aws]): imported only for S3 checkpoints.
                    from outgrow.transfer.s3 import upload_url

                    upload_url(ckpt, req.dest_url)
                transfer_s = time.monotonic() - t_x
            except BaseException:
                self._stop_serving()
                self.resume_after_failure()
                raise
            if not keep_running:
                job.phase = AgentPhase.CHECKPOINTED
                a.save()
            return CheckpointResult(
                freeze_s=round(freeze_s, 4),
                dump_s=round(run.seconds, 4),
                transfer_s=round(transfer_s, 4),
                local_bytes=local_bytes,
                rss_bytes=stats_before.rss_bytes,
                mem_used_bytes=stats_before.usage_bytes,
                total_s=round(time.monotonic() - t_all, 4),
                images_dir=str(ckpt),
                mode="postcopy" if lazy_port is not None else "plain",
                lazy_address=self.cfg.address if lazy_port is not None else None,
                lazy_port=lazy_port,
            )

    def _stop_serving(self) -> None:
        """End a post-copy dump's page server (the target will not restore, or has every
        page): it holds the stopped tree under ptrace until it exits."""
        serving, self._serving = self._serving, None
        if serving is not None and serving.proc.poll() is None:
            serving.proc.kill()
            serving.proc.wait()

    def resume_after_failure(self) -> None:
        try:
            self.unlock_network()
            self.agent.cgroup.thaw()  # also ends a freeze that timed out half-way (FREEZING)
            signal_pids(self.agent.cgroup.procs(), signal.SIGCONT)
        except OutgrowError as exc:
            log.error("could not resume the job after a failed checkpoint: %s", exc)

    def abort(self) -> JobStatus:
        """Roll back a checkpoint: the job keeps running here, nothing lost."""
        a = self.agent
        with a.lock:
            job = a.require_job()
            self._stop_serving()
            self.resume_after_failure()
            if job.phase == AgentPhase.CHECKPOINTED:
                job.phase = AgentPhase.RUNNING
            a.save()
            return a.job_status()

    def commit(self, keep_images: bool = False) -> JobStatus:
        """The target restored the job: end the stopped copy here. ``keep_images``: keep
        the local checkpoint so the job can be restored here again if the move fails
        after this point (jobs whose storage moves: the tree must end before its
        directory can be released)."""
        a = self.agent
        with a.lock:
            job = a.require_job(AgentPhase.CHECKPOINTED)
            serving = self._serving
            if serving is not None:
                # Post-copy: the target has drained every page, so the serving dump ends
                # by itself; never cut it short while it may still be serving.
                try:
                    rc = serving.proc.wait(timeout=60)
                    if rc != 0:
                        log.error("the post-copy dump ended with %s (see dump.log)", rc)
                except subprocess.TimeoutExpired:
                    log.error("the post-copy dump still serves 60 s after the drain: killed")
                self._stop_serving()
            pids = a.cgroup.procs()
            a.cgroup.kill_all()
            if a.cgroup.frozen():
                a.cgroup.thaw()
            # Dying tasks leave cgroup.procs at once but hold memory and sockets until they
            # are reaped: wait for the pid-namespace init, which goes last (measured:
            # up to 0.7 s for a 4 GiB kernel).
            if job.process is not None:
                reap_wait(job.process.init_pid, 30.0)
            wait_gone(pids, 30.0)
            self.unlock_network()
            job.phase, job.message = AgentPhase.STOPPED, "moved to another instance"
            ckpt = self.cfg.checkpoint_dir
            if (ckpt / "dump.log").exists():  # kept for post-mortems; the images are not
                shutil.copy(ckpt / "dump.log", self.cfg.work_dir / "last-dump.log")
            if not keep_images:
                shutil.rmtree(ckpt, ignore_errors=True)
            a.save()
            return a.job_status()

    def discard_images(self) -> None:
        """Drop a checkpoint kept by commit(keep_images=True)."""
        with self.agent.lock:
            shutil.rmtree(self.cfg.checkpoint_dir, ignore_errors=True)

    # ---- target side ----------------------------------------------------------------
    def prepare_receive(
        self, page_server: bool, image: Mapping[str, Any] | None = None
    ) -> ReceiveTicket:
        a = self.agent
        if image is not None:  # before the source freezes: never inside the downtime
            self.prepare(image)
        with a.lock:
            if a.job is not None and a.job.phase.live:
                raise ConflictError(f"instance {self.cfg.instance_id} already runs a job")
            rid = secrets.token_hex(6)
            rdir = self.cfg.work_dir / "receive" / rid
            rdir.mkdir(parents=True)
            rec = Receive(rid=rid, dir=rdir)
            if page_server:
                rec.port = page_server_port(self.cfg.address)
                rec.page_server = a.criu.start_page_server(rdir, self.cfg.address, rec.port)
            self._receives[rid] = rec
            return ReceiveTicket(receive_id=rid, page_server_port=rec.port)

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

    def restore(self, req: RestoreRequest) -> RestoreResult:
        """Restore from a receive (a migration), a directory (a suspend on this host), an
        s3:// URL (a suspend on a cloud) or this instance's own kept checkpoint (the
        rollback of a move whose storage had already left)."""
        if req.source_url:
            from outgrow.transfer.s3 import download_url

            tmp = self.cfg.work_dir / f"download-{secrets.token_hex(4)}"
            try:
                download_url(req.source_url, tmp)
                return self.restore(RestoreRequest(source_dir=str(tmp)))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        if req.local_checkpoint:
            return self.restore(RestoreRequest(source_dir=str(self.cfg.checkpoint_dir)))
        a = self.agent
        with a.lock:
            if req.receive_id:
                rec = self._receives.get(req.receive_id)
                if rec is None:
                    raise NotFoundError(f"no receive {req.receive_id!r} on this instance")
                if rec.page_server is not None:
                    try:
                        rec.page_server.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        self.drop_receive(req.receive_id)
                        raise CheckpointError("the page server did not finish") from None
                images = rec.dir
            elif req.source_dir:
                images = Path(req.source_dir)
            else:
                raise CheckpointError("restore needs a receive_id or a source_dir")
            try:
                job = AgentJob.from_dict(json.loads((images / "job.json").read_text()))
            except (OSError, ValueError, KeyError) as exc:
                raise CheckpointError("the checkpoint has no readable job.json") from exc
            t0 = time.monotonic()
            received = images_size(images)
            a.cgroup.set_oom_stall(job.launch.evade_oom)
            if job.sandbox is None:
                raise CheckpointError("the checkpoint has no sandbox (made by an older agent)")
            sandbox = Sandbox.from_dict(job.sandbox)
            self.prepare(job.image)
            lazy = req.lazy_port is not None
            try:
                if lazy:
                    if not (req.receive_id and req.lazy_address and req.lazy_port):
                        raise CheckpointError("a post-copy restore needs a receive and a source")
                    pages_from = (req.lazy_address, req.lazy_port)
                    self._pulling = Lazy(a.criu.start_lazy_pages(images, pages_from), images)
                source = images / "source-address"
                source_address = source.read_text().strip() if source.exists() else None
                with (
                    mounted_root(sandbox, self.cfg.root_mount(job.job_id)) as root,
                    nonlocal_bind(self.cfg.netns_path)
                    if lazy
                    else borrowed_address(self.cfg.netns_path, source_address, self.cfg.address),
                ):
                    pid, run = a.criu.restore(
                        images,
                        netns_path=self.cfg.netns_path,
                        cgroup_roots=a.cgroup.criu_cgroup_roots(),
                        extra=sandbox.criu_restore_args(root),
                        lazy=lazy,
                        # Without the memory a restore takes a second; one whose lazy-pages
                        # died can hang instead of failing (seen once): do not wait long.
                        timeout=120 if lazy else 600,
                    )
                if self._pulling is not None:
                    self._pulling.since = time.monotonic()  # the drain starts now
                ticks = proc_start_ticks(pid)
                if ticks is None:
                    raise CheckpointError("the restored job exited at once")
                job.process = JobProcess(job.job_id, pid, ticks, time.time())
                job.phase, job.restored, job.oom_stalled_at = AgentPhase.RUNNING, True, None
                a.job = job
                if job.launch.is_jupyter:
                    # Post-copy: every page the server touches first comes over the
                    # network, on demand; on a loaded host that takes longer.
                    a.wait_jupyter(job.launch, timeout=60 if lazy else 20)
            except BaseException:
                self._stop_pulling()
                a.cgroup.kill_all()
                a.job = None
                a.save()
                raise
            finally:
                if req.receive_id and self._pulling is not None:
                    self._receives.pop(req.receive_id, None)  # its images: until the drain
                elif req.receive_id:
                    self.drop_receive(req.receive_id)
            a.save()
            return RestoreResult(
                restore_s=round(run.seconds, 4),
                images_bytes=received,
                healthy_s=round(time.monotonic() - t0, 4),
                pid=pid,
                lazy=lazy,
            )

    def _stop_pulling(self) -> Lazy | None:
        pulling, self._pulling = self._pulling, None
        if pulling is not None:
            if pulling.proc.poll() is None:
                pulling.proc.kill()
                pulling.proc.wait()
            log_file = pulling.dir / "lazy-pages.log"
            if log_file.exists():  # kept for post-mortems
                shutil.copy(log_file, self.cfg.work_dir / "last-lazy-pages.log")
            shutil.rmtree(pulling.dir, ignore_errors=True)
        return pulling

    def drain(self, timeout: float = 840.0) -> DrainResult:
        """Wait until a post-copy restore has every page. If the transfer broke (the
        source or the link went away) the job misses memory it can never get: it is
        killed here (lost) and the answer says so."""
        pulling = self._pulling
        if pulling is None:
            raise ConflictError(f"no post-copy restore under way on {self.cfg.instance_id}")
        try:  # not under the agent's lock: the job's status stays readable meanwhile
            rc: int | None = pulling.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        drain_s = time.monotonic() - pulling.since
        pages = lazy_pages_copied(pulling.dir / "lazy-pages.log")
        a = self.agent
        with a.lock:
            self._stop_pulling()
            if rc == 0:
                return DrainResult(ok=True, drain_s=round(drain_s, 4), pages=pages)
            why = "timed out" if rc is None else f"criu lazy-pages exited with {rc}"
            msg = f"post-copy page transfer broke ({why}): the restored job misses memory"
            log.error("%s; killing it", msg)
            a.cgroup.kill_all()
            if a.job is not None:
                a.job.phase, a.job.message = AgentPhase.FAILED, msg
                a.save()
            return DrainResult(ok=False, drain_s=round(drain_s, 4), pages=pages, message=msg)


def reap_wait(pid: int, timeout: float) -> None:
    """Wait until ``pid`` (our child, or re-parented to us as subreaper) is reaped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return
        except ChildProcessError:
            if not Path(f"/proc/{pid}").exists():
                return
        time.sleep(0.01)


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


def _run(argv: list[str], input_: str | None = None) -> None:
    proc = subprocess.run(argv, input=input_, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeFailure(f"{argv[0]} failed", detail=f"{' '.join(argv)}: {proc.stderr.strip()}")
