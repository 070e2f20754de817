"""The scheduler loop: every tick (0.25 s) it starts Submitted jobs, retries those that found
no host, and looks at each Executing job — collects its samples (WaveWatcher), notices a
job that ended, and runs the policy rules (domain/rules.py); a decision to grow, shrink,
suspend or pre-create the next size becomes a job action on the job's worker, and so
does a periodic snapshot that is due (controlplane/snapshots.py)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import datetime

import httpx

from outgrow.agentapi.models import MetricsSample
from outgrow.controlplane.hub import job_base_url
from outgrow.controlplane.images import Images
from outgrow.controlplane.instances import Instances
from outgrow.controlplane.jobs import JobActions
from outgrow.controlplane.snapshots import Snapshots
from outgrow.controlplane.workers import Workers
from outgrow.domain.images import DEFAULT_JUPYTER_PORT
from outgrow.domain.instance_types import InstanceType
from outgrow.domain.jobs import MetricPoint
from outgrow.domain.policy import parse_cpu_range, parse_mem_range
from outgrow.domain.rules import Context, Sample, evaluate
from outgrow.domain.states import JobState as S
from outgrow.errors import NotFoundError, OutgrowError, StoreUnavailable
from outgrow.orchestrator.migrate import Connect
from outgrow.providers.base import InstanceInfo, Provider
from outgrow.store import JobRecord, Store

log = logging.getLogger("outgrow.scheduler")
TICK = 0.25
WINDOW = 3600  # samples kept per job for the rules (1 h at 1 s)
IDLE_CHECK_EVERY = 15.0


class Scheduler(threading.Thread):
    def __init__(
        self,
        store: Store,
        provider: Provider,
        connect: Connect,
        actions: JobActions,
        workers: Workers,
        instances: Instances,
        images: Images,
        stopping: threading.Event,
        retention_s: float,
        snapshots: Snapshots | None = None,
    ):
        super().__init__(name="scheduler", daemon=True)
        self.store = store
        self.provider = provider
        self.connect = connect
        self.actions = actions
        self.workers = workers
        self.instances = instances
        self.images = images
        self.stopping = stopping
        self.retention_s = retention_s
        self.snapshots = snapshots
        self._windows: dict[str, deque[Sample]] = {}
        self._last_t: dict[str, float] = {}
        self._last_metrics_poll: dict[str, float] = {}
        self._idle: dict[str, tuple[float, float | None]] = {}  # job → (checked at, idle since)
        self._last_prune = 0.0
        self._retry_at: dict[str, float] = {}
        self._preparing: set[str] = set()
        self._stuck: dict[str, str] = {}  # job → why its evadeOOM stall has nowhere to go

    def last_sample(self, job_id: str) -> Sample | None:
        w = self._windows.get(job_id)
        return w[-1] if w else None

    def run(self) -> None:
        paused = False  # the database was away at the last tick
        while not self.stopping.wait(TICK):
            try:
                self.tick()
            except StoreUnavailable as exc:
                # Not a bug: say so once (not four tracebacks a second) and tick on; the
                # samples not stored meanwhile are fetched again (see _ingest).
                if not paused:
                    log.warning("scheduler paused: %s (%s)", exc, exc.detail or "")
                paused = True
                continue
            except Exception:
                log.exception("scheduler tick failed")
            if paused:
                log.warning("the database is back: the scheduler resumes")
                paused = False

    # ---- the loop -------------------------------------------------------------------
    def tick(self) -> None:
        for rec in self.store.list_jobs(None, [S.SUBMITTED, S.NO_AVAILABLE_HOST, S.EXECUTING]):
            if self.workers.busy(rec.id):
                continue
            if rec.status == S.SUBMITTED:
                self.workers.run(rec.id, self.actions.start)
            elif rec.status == S.NO_AVAILABLE_HOST:
                at = self._retry_at.setdefault(rec.id, time.time() + rec.spec.vm().retry_interval)
                if time.time() >= at:
                    self._retry_at.pop(rec.id, None)
                    self.workers.run(rec.id, self.actions.start)
            else:
                try:
                    self.watch(rec)
                    if self.snapshots is not None:
                        self.snapshots.consider(rec)  # a periodic snapshot, when due
                except StoreUnavailable:
                    raise  # the whole tick waits for the database (run())
                except OutgrowError as exc:
                    log.warning("watching job %s: %s", rec.id, exc)
        for gone in self.provider.enforce_reclaims():
            self._lost(gone)
        if time.time() - self._last_prune > 600:
            self._last_prune = time.time()
            self.store.prune_metrics(time.time() - self.retention_s)

    def _lost(self, instance_id: str) -> None:
        """An instance was taken away (reclaim deadline passed) with a job still on it."""
        for rec in self.store.list_jobs(None, [S.EXECUTING]):
            if rec.current_instance_id == instance_id:
                self.workers.run(
                    rec.id,
                    self.actions.lost,
                    instance_id,
                    "reclaimed",
                    "instance reclaimed before the job could move",
                )

    def watch(self, rec: JobRecord) -> None:
        inst = self.provider.describe_instance(rec.current_instance_id or "")
        if inst is None:
            return
        with self.connect(inst, 5.0) as a:
            st = a.job()
            if st.phase.ended:
                self.workers.run(rec.id, self.actions.finish, st.phase, st.exit_code, st.message)
                return
            now = time.time()
            if st.oom_stalled or now - self._last_metrics_poll.get(rec.id, 0) >= 1.0:
                self._last_metrics_poll[rec.id] = now
                m = a.metrics(since=self._last_t.get(rec.id, 0.0))
                self._ingest(rec, inst.id, m.samples, m.now, st.oom_stalled)
        self._decide(rec, inst, st.reclaim_at)

    def _ingest(
        self,
        rec: JobRecord,
        instance_id: str,
        samples: list[MetricsSample],
        now_sample: MetricsSample | None,
        stalled: bool,
    ) -> None:
        window = self._windows.setdefault(rec.id, deque(maxlen=WINDOW))
        kept = [s for s in samples if s.mem_limit_bytes is not None and s.cpu_quota_vcpus]
        points = []
        for s in kept:
            points.append(
                MetricPoint(
                    t=s.t,
                    instance_id=instance_id,
                    mem_used_bytes=s.mem_used_bytes,
                    mem_cache_bytes=s.mem_cache_bytes,
                    mem_swap_bytes=s.mem_swap_bytes,
                    mem_limit_bytes=s.mem_limit_bytes,
                    cpu_used_vcpus=s.cpu_used_vcpus,
                    cpu_quota_vcpus=s.cpu_quota_vcpus,
                )
            )
        if points:
            # Stored first: if the store is away, the agent (which keeps an hour of
            # samples) is asked for them again at the next poll, and none is lost.
            self.store.add_metrics(rec.id, points)
        for s in kept:
            self._last_t[rec.id] = max(self._last_t.get(rec.id, 0.0), s.t)
            window.append(_sample(s))
        if stalled and now_sample is not None and now_sample.mem_limit_bytes:
            # The agent noticed the stall between its 1 s samples: decide on it now.
            window.append(_sample(now_sample.model_copy(update={"oom_stalled": True})))

    def _decide(self, rec: JobRecord, inst: InstanceInfo, reclaim_at: float | None) -> None:
        reclaim = reclaim_at is not None
        window = self._windows.get(rec.id)
        if not window:
            if not reclaim:
                return
            window = deque(
                [
                    Sample(
                        t=time.time(),
                        mem_used_bytes=0,
                        mem_limit_bytes=inst.type.memory_bytes,
                        cpu_used_vcpus=0.0,
                        cpu_quota_vcpus=inst.type.vcpus,
                    )
                ]
            )
        vm = rec.spec.vm()
        ctx = Context(
            policy=rec.spec.migrate(),
            current=inst.type,
            catalog=self.instances.catalog,
            cpu_range=parse_cpu_range(rec.spec.cpu),
            mem_range=parse_mem_range(rec.spec.mem),
            now=time.time(),
            last_migration_at=rec.last_migration_at,
            spot=inst.spot,
            reclaim_notice=reclaim,
            idle_since=self._idle_since(rec, inst),
            idle_timeout=rec.spec.idle_timeout_s or None,
            spot_only=not vm.allows_on_demand,
        )
        d = evaluate(ctx, list(window))
        self._note_stuck(rec.id, d.reason if d.action == "none" and d.rule == "evadeOOM" else "")
        if d.action in ("grow", "shrink", "migrate") and d.target is not None:
            self._windows.pop(rec.id, None)  # a new instance starts a new window
            if d.rule == "reclaim" and reclaim_at is not None and self._too_short(rec, reclaim_at):
                self.workers.run(rec.id, self.actions.evacuate, d.target, d.reason)
                return
            self.workers.run(
                rec.id,
                self.actions.migrate,
                d.target,
                d.reason,
                "migration",
                d.rule == "reclaim",
                d.rule,
            )
        elif d.action == "suspend":
            self.workers.run(rec.id, self.actions.suspend, d.reason)
        elif d.action == "prepare" and d.target is not None:
            self._prepare(rec, d.target, d.reason)

    def _note_stuck(self, job_id: str, why: str) -> None:
        """A job stalled at its limit with no larger type to go to stays stalled (never
        killed): say so once per stall, with the rule's reason."""
        if why and self._stuck.get(job_id) != why:
            self.store.add_event(job_id, "policy", f"{why}; the job stays stalled at its limit")
        if why:
            self._stuck[job_id] = why
        else:
            self._stuck.pop(job_id, None)

    def _too_short(self, rec: JobRecord, reclaim_at: float) -> bool:
        """No time to create a target before the instance goes (and none is warm)."""
        if self.instances.warm_type(rec.id) is not None:
            return False
        return reclaim_at - time.time() < float(self.provider.create_estimate_s)

    def _prepare(self, rec: JobRecord, target: InstanceType, reason: str) -> None:
        """Pre-create the next size up so the move finds it warm."""
        if self.instances.warm_type(rec.id) == target.name or self.workers.busy(rec.id):
            return
        if rec.id in self._preparing:
            return
        self._preparing.add(rec.id)

        def work() -> None:
            try:
                inst = self.instances.create(rec, target, {"outgrow:warm": "1"})
                self.instances.put_warm(rec.id, inst)
                self.store.add_event(rec.id, "policy", f"prepared {target.name}: {reason}")
            except OutgrowError as exc:
                log.warning("prepare for %s failed: %s", rec.id, exc)
            finally:
                self._preparing.discard(rec.id)

        threading.Thread(target=work, daemon=True).start()

    def _idle_since(self, rec: JobRecord, inst: InstanceInfo) -> float | None:
        """For Jupyter jobs: since when no kernel is busy and no client is connected."""
        if not rec.spec.idle_timeout_s:
            return None
        checked, since = self._idle.get(rec.id, (0.0, None))
        if time.time() - checked < IDLE_CHECK_EVERY:
            return since
        try:
            port = self.images.for_job(rec.spec).port or DEFAULT_JUPYTER_PORT
        except NotFoundError:
            port = DEFAULT_JUPYTER_PORT
        base = f"http://{inst.address}:{port}{job_base_url(rec)}api/"
        headers = {"Authorization": f"token {rec.jupyter_token}"}
        try:
            status = httpx.get(base + "status", headers=headers, timeout=3).json()
            kernels = httpx.get(  # no_track_activity: our own poll is not user activity
                base + "kernels?no_track_activity=1", headers=headers, timeout=3
            ).json()
        except (httpx.HTTPError, ValueError):
            return since
        busy = any(k.get("execution_state") == "busy" for k in kernels)
        if busy or status.get("connections", 0) > 0:
            since = None
        else:
            last = status.get("last_activity")
            since = _parse_time(last) if last else time.time()
        self._idle[rec.id] = (time.time(), since)
        return since


def _sample(s: MetricsSample) -> Sample:
    assert s.mem_limit_bytes is not None and s.cpu_quota_vcpus is not None
    return Sample(
        t=s.t,
        mem_used_bytes=s.mem_used_bytes,
        mem_limit_bytes=s.mem_limit_bytes,
        cpu_used_vcpus=s.cpu_used_vcpus,
        cpu_quota_vcpus=s.cpu_quota_vcpus,
        oom_stalled=s.oom_stalled,
    )


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
