"""The scheduler loop and the reconciler.

Every tick (0.25 s) it looks at each Executing job: collects its samples (WaveWatcher),
notices a job that ended, and runs the policy rules (domain/rules.py); a decision to grow,
shrink, suspend or pre-create the next size becomes a job action. At start-up the
reconciler puts every job that was mid-action when the control plane died back on its feet.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import datetime
from typing import Any

import httpx

from outgrow.controlplane import actions, jobdirs
from outgrow.domain.jobs import MetricPoint
from outgrow.domain.policy import parse_cpu_range, parse_mem_range
from outgrow.domain.rules import Context, Sample, evaluate
from outgrow.domain.states import JobState as S
from outgrow.errors import OutgrowError
from outgrow.orchestrator.migrate import agent
from outgrow.store import JobRecord

log = logging.getLogger("outgrow.scheduler")
TICK = 0.25
WINDOW = 3600  # samples kept per job for the rules (1 h at 1 s)
IDLE_CHECK_EVERY = 15.0


class Scheduler(threading.Thread):
    def __init__(self, cp: Any):
        super().__init__(name="scheduler", daemon=True)
        self.cp = cp
        self._windows: dict[str, deque[Sample]] = {}
        self._last_t: dict[str, float] = {}
        self._last_metrics_poll: dict[str, float] = {}
        self._idle: dict[str, tuple[float, float | None]] = {}  # job → (checked at, idle since)
        self._last_prune = 0.0
        self._retry_at: dict[str, float] = {}
        self._preparing: set[str] = set()
        self.retention_s = cp.settings.metrics_retention_days * 86400
        self._restart_after_sweep: list[str] = []  # jobs to start once orphans are gone

    def last_sample(self, job_id: str) -> Sample | None:
        w = self._windows.get(job_id)
        return w[-1] if w else None

    def run(self) -> None:
        while not self.cp.stopping.wait(TICK):
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed")

    # ---- the loop -------------------------------------------------------------------
    def tick(self) -> None:
        store = self.cp.store
        for rec in store.list_jobs(None, [S.SUBMITTED, S.NO_AVAILABLE_HOST, S.EXECUTING]):
            if self.cp.busy(rec.id):
                continue
            if rec.status == S.SUBMITTED:
                self.cp.run_action(rec.id, actions.start)
            elif rec.status == S.NO_AVAILABLE_HOST:
                at = self._retry_at.setdefault(rec.id, time.time() + rec.spec.vm().retry_interval)
                if time.time() >= at:
                    self._retry_at.pop(rec.id, None)
                    self.cp.run_action(rec.id, actions.start)
            else:
                try:
                    self.watch(rec)
                except OutgrowError as exc:
                    log.warning("watching job %s: %s", rec.id, exc)
        for gone in self.cp.provider.enforce_reclaims():
            self._lost(gone)
        if time.time() - self._last_prune > 600:
            self._last_prune = time.time()
            store.prune_metrics(time.time() - self.retention_s)

    def _lost(self, instance_id: str) -> None:
        """An instance was taken away (reclaim deadline passed) with a job still on it."""
        for rec in self.cp.store.list_jobs(None, [S.EXECUTING]):
            if rec.current_instance_id == instance_id and not self.cp.busy(rec.id):
                self.cp.store.update_instance(
                    instance_id, status="reclaimed", ended_at=actions.now()
                )
                self.cp.store.update_job(rec.id, current_instance_id=None)
                self.cp.store.set_status(
                    rec.id, S.FAIL_TO_COMPLETE, "instance reclaimed before the job could move"
                )

    def watch(self, rec: JobRecord) -> None:
        inst = self.cp.provider.describe_instance(rec.current_instance_id or "")
        if inst is None:
            return
        with agent(inst, timeout=5) as a:
            st = a.job()
            if st.get("phase") in ("exited", "failed"):
                self.cp.run_action(
                    rec.id, actions.finish, st["phase"], st.get("exit_code"), st.get("message", "")
                )
                return
            now = time.time()
            if st.get("oom_stalled") or now - self._last_metrics_poll.get(rec.id, 0) >= 1.0:
                self._last_metrics_poll[rec.id] = now
                m = a.metrics(since=self._last_t.get(rec.id, 0.0))
                self._ingest(rec, inst.id, m["samples"], m.get("now"), bool(st.get("oom_stalled")))
        self._decide(
            rec, inst, reclaim=st.get("reclaim_at") is not None, reclaim_at=st.get("reclaim_at")
        )

    def _ingest(
        self,
        rec: JobRecord,
        instance_id: str,
        samples: list[dict[str, Any]],
        now_sample: dict[str, Any] | None,
        stalled: bool,
    ) -> None:
        window = self._windows.setdefault(rec.id, deque(maxlen=WINDOW))
        points = []
        for s in samples:
            if not s or s.get("mem_limit_bytes") is None or not s.get("cpu_quota_vcpus"):
                continue
            self._last_t[rec.id] = max(self._last_t.get(rec.id, 0.0), s["t"])
            window.append(_sample(s))
            points.append(
                MetricPoint(
                    t=s["t"],
                    instance_id=instance_id,
                    mem_used_bytes=s["mem_used_bytes"],
                    mem_cache_bytes=s["mem_cache_bytes"],
                    mem_swap_bytes=s["mem_swap_bytes"],
                    mem_limit_bytes=s["mem_limit_bytes"],
                    cpu_used_vcpus=s["cpu_used_vcpus"],
                    cpu_quota_vcpus=s["cpu_quota_vcpus"],
                )
            )
        if points:
            self.cp.store.add_metrics(rec.id, points)
        if stalled and now_sample and now_sample.get("mem_limit_bytes"):
            # The agent noticed the stall between its 1 s samples: decide on it now.
            window.append(_sample({**now_sample, "oom_stalled": True}))

    def _decide(
        self, rec: JobRecord, inst: Any, reclaim: bool = False, reclaim_at: float | None = None
    ) -> None:
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
        policy = rec.spec.migrate()
        idle_since = self._idle_since(rec, inst)
        ctx = Context(
            policy=policy,
            current=inst.type,
            catalog=self.cp.catalog,
            cpu_range=parse_cpu_range(rec.spec.cpu),
            mem_range=parse_mem_range(rec.spec.mem),
            now=time.time(),
            last_migration_at=rec.last_migration_at,
            spot=inst.spot,
            reclaim_notice=reclaim,
            idle_since=idle_since,
            idle_timeout=rec.spec.idle_timeout_s or None,
            spot_only=rec.spec.vm().mode == "spotOnly",
        )
        d = evaluate(ctx, list(window))
        if d.action in ("grow", "shrink", "migrate") and d.target is not None:
            self._windows.pop(rec.id, None)  # a new instance starts a new window
            if d.rule == "reclaim" and reclaim_at is not None and self._too_short(rec, reclaim_at):
                self.cp.run_action(rec.id, actions.evacuate, d.target, d.reason)
                return
            self.cp.run_action(
                rec.id, actions.migrate, d.target, d.reason, "migration", d.rule == "reclaim"
            )
        elif d.action == "suspend":
            self.cp.run_action(rec.id, actions.suspend, d.reason)
        elif d.action == "prepare" and d.target is not None:
            self._prepare(rec, d.target, d.reason)

    def _too_short(self, rec: JobRecord, reclaim_at: float) -> bool:
        """No time to create a target before the instance goes (and none is warm)."""
        if self.cp.warm_type(rec.id) is not None:
            return False
        estimate = float(self.cp.provider.create_estimate_s)
        return reclaim_at - time.time() < estimate

    def _prepare(self, rec: JobRecord, target: Any, reason: str) -> None:
        """Pre-create the next size up so the move finds it warm."""
        if self.cp.warm_type(rec.id) == target.name or self.cp.busy(rec.id):
            return
        if rec.id in self._preparing:
            return
        self._preparing.add(rec.id)

        def work() -> None:
            try:
                inst = actions.create_instance(
                    self.cp, self.cp.job(rec.id), target, {"outgrow:warm": "1"}
                )
                old = self.cp.put_warm(rec.id, inst)
                if old is not None:
                    actions.end_instance(self.cp, old.id, "released")
                self.cp.store.add_event(rec.id, "policy", f"prepared {target.name}: {reason}")
            except OutgrowError as exc:
                log.warning("prepare for %s failed: %s", rec.id, exc)
            finally:
                self._preparing.discard(rec.id)

        threading.Thread(target=work, daemon=True).start()

    def _idle_since(self, rec: JobRecord, inst: Any) -> float | None:
        """For Jupyter jobs: since when no kernel is busy and no client is connected."""
        if not rec.spec.idle_timeout_s:
            return None
        checked, since = self._idle.get(rec.id, (0.0, None))
        if time.time() - checked < IDLE_CHECK_EVERY:
            return since
        base = f"http://{inst.address}:8888/jobs/{rec.id}/api/"
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

    # ---- reconcile ------------------------------------------------------------------
    def reconcile(self) -> None:
        """Bring every unfinished job back to a steady state after a restart."""
        store, provider = self.cp.store, self.cp.provider
        known = set()
        self._restart_after_sweep = []
        for rec in store.list_jobs(None):
            live = [r for r in store.instances(rec.id) if r.ended_at is None]
            known |= {r.id for r in live}
            try:
                self._reconcile_job(rec, live)
            except OutgrowError as exc:
                log.error("reconciling job %s: %s", rec.id, exc)
                store.add_event(rec.id, "error", f"reconcile: {exc}")
        for inst in provider.list_instances():
            if inst.id not in known:
                log.warning("deleting orphan instance %s", inst.id)
                provider.delete_instance(inst.id)
        # Only now: a start queued earlier could create an instance the sweep above
        # would take for an orphan.
        for job_id in self._restart_after_sweep:
            self.cp.run_action(job_id, actions.start)

    def _restore_kept(self, rec: JobRecord, source: Any, others: list[Any]) -> None:
        """A move with non-shared storage was cut after the source's tree ended: take the
        storage back from wherever it got to and restore the job on the source from the
        images it kept (what Migrator would have done had the move failed)."""
        cp = self.cp
        for inst in [*others, source]:  # detached from every instance, the source last
            try:
                jobdirs.release(cp, rec.id, inst, keep_logs=False)
            except OutgrowError as exc:  # not there, or held by another instance
                log.info("reconcile %s: storage not released from %s: %s", rec.id, inst.id, exc)
        jobdirs.mount(cp, rec.id, source)
        with agent(source) as a:
            a.restore(local_checkpoint=True)
            a.discard_images()
        cp.store.add_event(
            rec.id,
            "info",
            f"reconcile: the move was cut after the job stopped on {source.id}; "
            "restored there from its kept checkpoint",
        )

    def _phase(self, instance_id: str) -> tuple[Any, dict[str, Any] | None]:
        inst = self.cp.provider.describe_instance(instance_id)
        if inst is None:
            return None, None
        if inst.state != "running" and hasattr(self.cp.provider, "restart_agent"):
            self.cp.provider.restart_agent(instance_id)  # the agent re-adopts its job
        try:
            with agent(inst, timeout=5) as a:
                return inst, a.job()
        except OutgrowError:
            return inst, None

    def _reconcile_job(self, rec: JobRecord, live: list[Any]) -> None:
        cp, store = self.cp, self.cp.store
        status = S(rec.status)
        if status in (
            S.COMPLETED,
            S.CANCELLED,
            S.FAIL_TO_COMPLETE,
            S.FAIL_TO_EXECUTE,
            S.SUSPENDED,
            S.SUBMITTED,
            S.NO_AVAILABLE_HOST,
        ):
            for r in live:  # a terminal or parked job holds no instance
                actions.end_instance(cp, r.id, "released")
            return
        phases = {r.id: self._phase(r.id) for r in live}
        running = [
            i
            for i, (inst, st) in phases.items()
            if inst is not None and st and st.get("phase") == "running"
        ]
        if status in (S.EXECUTING, S.FLOATING, S.SUSPENDING, S.RESUMING, S.STARTING):
            # Prefer a restored copy (a move that finished), else the one we think is current.
            restored = [
                i
                for i in running
                if (phases[i][1] or {}).get("restored") and i != rec.current_instance_id
            ]
            keep = (
                restored[0]
                if (status in (S.FLOATING, S.RESUMING) and restored)
                else (rec.current_instance_id if rec.current_instance_id in running else None)
            )
            if keep is None and status == S.FLOATING and rec.current_instance_id in phases:
                inst, st = phases[rec.current_instance_id]
                if inst is not None and st and st.get("phase") == "checkpointed":
                    with agent(inst) as a:
                        a.abort()  # the move did not finish: resume the source copy
                    keep = rec.current_instance_id
            if keep is None and status == S.FLOATING and rec.current_instance_id in phases:
                inst, st = phases[rec.current_instance_id]
                if inst is not None and st and st.get("kept_checkpoint"):
                    others = [i for i, _ in phases.values() if i is not None and i.id != inst.id]
                    try:
                        self._restore_kept(rec, inst, others)
                        keep = rec.current_instance_id
                    except OutgrowError as exc:  # then the job is lost: FailToComplete below
                        store.add_event(rec.id, "error", f"reconcile: restore failed: {exc}")
            if keep is None and status == S.SUSPENDING and rec.current_instance_id in phases:
                inst, st = phases[rec.current_instance_id]
                if inst is not None and st and st.get("phase") == "checkpointed":
                    with agent(inst) as a:
                        a.abort()
                    keep = rec.current_instance_id
            if keep is None and status == S.STARTING and rec.current_instance_id in phases:
                inst, st = phases[rec.current_instance_id]
                if inst is not None and st and st.get("phase") in ("preparing", "starting"):
                    keep = rec.current_instance_id
                    store.add_event(rec.id, "info", "reconcile: job still starting")
                    return
            for r in live:
                if r.id != keep:
                    # the source of a finished move, or a target that never took over
                    status_ = "migrated-from" if r.id == rec.current_instance_id else "failed"
                    actions.end_instance(cp, r.id, status_ if keep else "failed")
            if keep is None:
                if status == S.RESUMING:
                    store.set_status(rec.id, S.SUSPENDED, "control plane restarted mid-resume")
                elif status == S.STARTING:
                    store.set_status(rec.id, S.FAIL_TO_EXECUTE, "instance lost while starting")
                else:
                    store.set_status(rec.id, S.FAIL_TO_COMPLETE, "instance lost")
                store.update_job(rec.id, current_instance_id=None)
                return
            store.update_instance(keep, status="normal")
            store.update_job(rec.id, current_instance_id=keep)
            if status != S.EXECUTING:
                store.set_status(
                    rec.id, S.EXECUTING, f"reconciled after a restart (was {status.value})"
                )
        elif status == S.INITIALIZING:
            for r in live:
                actions.end_instance(cp, r.id, "failed")
            self._restart_after_sweep.append(rec.id)
        elif status == S.CANCELLING:
            cp.run_action(rec.id, actions.cancel, "cancelled (finished after a restart)")


def _sample(s: dict[str, Any]) -> Sample:
    return Sample(
        t=float(s["t"]),
        mem_used_bytes=int(s["mem_used_bytes"]),
        mem_limit_bytes=int(s["mem_limit_bytes"]),
        cpu_used_vcpus=float(s["cpu_used_vcpus"]),
        cpu_quota_vcpus=float(s["cpu_quota_vcpus"]),
        oom_stalled=bool(s.get("oom_stalled")),
    )


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
