"""The reconciler: at start-up, put every job that was mid-action when the control plane
died back on its feet, and sweep instances no job owns.

Deciding is a pure function, :func:`decide` — (the job's status, its current instance,
what each of its live instances' agents say) → a :class:`Plan` — unit-tested as a table.
:class:`Reconciler` observes, decides and carries the plan out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from outgrow.agentapi.models import AgentPhase, RestoreRequest
from outgrow.controlplane.instances import Instances
from outgrow.controlplane.jobdirs import JobDirs
from outgrow.controlplane.jobs import JobActions
from outgrow.controlplane.lifecycle import Lifecycle
from outgrow.controlplane.snapshots import Snapshots
from outgrow.controlplane.workers import Workers
from outgrow.domain.states import JobState as S
from outgrow.errors import OutgrowError
from outgrow.orchestrator.migrate import Connect
from outgrow.providers.base import Capability, InstanceInfo, Provider
from outgrow.store import JobRecord, Store

log = logging.getLogger("outgrow.reconcile")

# A job in one of these holds no instance: whatever is still live is released.
PARKED = frozenset(
    {
        S.COMPLETED,
        S.CANCELLED,
        S.FAIL_TO_COMPLETE,
        S.FAIL_TO_EXECUTE,
        S.SUSPENDED,
        S.SUBMITTED,
        S.NO_AVAILABLE_HOST,
    }
)
# A job in one of these runs (or ran) on an instance we must find again.
HOLDING = frozenset({S.EXECUTING, S.FLOATING, S.SUSPENDING, S.RESUMING, S.STARTING})


@dataclass(frozen=True)
class Observed:
    """One live instance of the job, as seen at start-up."""

    exists: bool = True  # the provider still knows it
    phase: AgentPhase | None = None  # None: its agent did not answer
    restored: bool = False  # the job there was restored (the target of a move)
    kept_checkpoint: bool = False  # the source of a storage move kept its images

    @property
    def usable(self) -> bool:
        return self.exists and self.phase is not None


UNUSABLE = Observed(exists=False)


class Step(StrEnum):
    ABORT = "abort"  # resume the frozen tree on the kept instance (a cut move/suspend)
    RESTORE_KEPT = "restore-kept"  # restore the kept instance from its own checkpoint
    WAIT_START = "wait-start"  # the job is still starting there: wait for it (a worker)
    START = "start"  # start the job anew once orphans are swept (a worker)
    CANCEL = "cancel"  # finish a cancel (a worker)
    RESTORE_SNAPSHOT = "restore-snapshot"  # the instance is gone: restore the last snapshot


@dataclass(frozen=True)
class Plan:
    keep: str | None = None  # the instance the job runs on afterwards
    end: Mapping[str, str] = field(default_factory=dict)  # instance → status to record
    steps: tuple[Step, ...] = ()
    to: S | None = None  # the job's new status
    reason: str = ""


def decide(
    status: S, current: str | None, seen: Mapping[str, Observed], has_snapshot: bool = False
) -> Plan:
    """What to do with a job found in ``status`` whose live instances are ``seen``
    (``has_snapshot``: the job has a snapshot to come back from if they are all gone)."""
    if status in PARKED:
        return Plan(end={i: "released" for i in seen})
    if status == S.INITIALIZING:  # its instance (if any) never ran it: start over
        return Plan(end={i: "failed" for i in seen}, steps=(Step.START,))
    if status == S.CANCELLING:
        return Plan(steps=(Step.CANCEL,))
    if status not in HOLDING:  # pragma: no cover - every state is handled above
        return Plan()
    cur = seen.get(current or "", UNUSABLE)
    running = [i for i, o in seen.items() if o.usable and o.phase == AgentPhase.RUNNING]
    restored = [i for i in running if seen[i].restored and i != current]
    keep: str | None = None
    steps: tuple[Step, ...] = ()
    if status in (S.FLOATING, S.RESUMING) and restored:
        keep = restored[0]  # the move (or resume) finished: the copy there runs
    elif current in running:
        keep = current
    elif status in (S.FLOATING, S.SUSPENDING) and cur.usable:
        if cur.phase == AgentPhase.CHECKPOINTED:  # cut after the dump: resume the source
            keep, steps = current, (Step.ABORT,)
        elif status == S.FLOATING and cur.kept_checkpoint:  # cut after the source ended
            keep, steps = current, (Step.RESTORE_KEPT,)
    elif (
        status == S.STARTING
        and cur.usable
        and cur.phase
        in (
            AgentPhase.PREPARING,
            AgentPhase.STARTING,
        )
    ):
        return Plan(keep=current, steps=(Step.WAIT_START,), reason="job still starting")
    if keep is None and has_snapshot and status in (S.EXECUTING, S.FLOATING):
        # The host restarted (or the instance died): the job comes back from its newest
        # snapshot on a new instance, once orphans are swept (a worker).
        return Plan(
            end={i: "failed" for i in seen},
            steps=(Step.RESTORE_SNAPSHOT,),
            to=S.FLOATING if status == S.EXECUTING else None,
            reason="instance lost (host restart?): restoring the job from its last snapshot",
        )
    if keep is None:
        to, reason = {
            S.RESUMING: (S.SUSPENDED, "control plane restarted mid-resume"),
            S.STARTING: (S.FAIL_TO_EXECUTE, "instance lost while starting"),
        }.get(status, (S.FAIL_TO_COMPLETE, "instance lost"))
        return Plan(end={i: "failed" for i in seen}, to=to, reason=reason)
    # the source of a finished move, or a target that never took over
    end = {i: ("migrated-from" if i == current else "failed") for i in seen if i != keep}
    if status == S.EXECUTING:
        return Plan(keep, end, steps)
    return Plan(keep, end, steps, S.EXECUTING, f"reconciled after a restart (was {status.value})")


class Reconciler:
    def __init__(
        self,
        store: Store,
        provider: Provider,
        connect: Connect,
        lifecycle: Lifecycle,
        instances: Instances,
        jobdirs: JobDirs,
        actions: JobActions,
        workers: Workers,
        snapshots: Snapshots,
    ):
        self.store = store
        self.provider = provider
        self.connect = connect
        self.lifecycle = lifecycle
        self.instances = instances
        self.jobdirs = jobdirs
        self.actions = actions
        self.workers = workers
        self.snapshots = snapshots

    def run(self) -> None:
        """Reconcile every job, then delete instances no job owns (never those of another
        job: only instances of this control plane's provider are listed)."""
        known: set[str] = set()
        starts: list[str] = []
        restores: list[tuple[str, str | None]] = []
        for rec in self.store.list_jobs(None):
            records = [r for r in self.store.instances(rec.id) if r.ended_at is None]
            live = [r.id for r in records]
            known |= set(live)
            try:
                steps = self.reconcile(rec, live)
                if Step.START in steps:
                    starts.append(rec.id)
                if Step.RESTORE_SNAPSHOT in steps:
                    lost = next((r for r in records if r.id == rec.current_instance_id), None)
                    restores.append((rec.id, lost.type if lost else None))
            except OutgrowError as exc:
                log.error("reconciling job %s: %s", rec.id, exc)
                self.store.add_event(rec.id, "error", f"reconcile: {exc}")
        for inst in self.provider.list_instances():
            if inst.id not in known:
                log.warning("deleting orphan instance %s", inst.id)
                self.provider.delete_instance(inst.id)
        # Only now: a start queued earlier could create an instance the sweep above
        # would take for an orphan.
        for job_id in starts:
            self.workers.run(job_id, self.actions.start)
        for job_id, lost_type in restores:
            self.workers.run(job_id, self.snapshots.recover, lost_type)

    def observe(self, instance_id: str) -> tuple[InstanceInfo | None, Observed]:
        inst = self.provider.describe_instance(instance_id)
        if inst is None:
            return None, UNUSABLE
        if inst.state != "running" and self.provider.supports(Capability.RESTART_AGENT):
            try:
                self.provider.restart_agent(instance_id)  # the agent re-adopts its job
            except OutgrowError as exc:
                # No agent to ask (after a host restart its network is gone too: a
                # connection would follow the default route off the machine).
                log.warning("restarting the agent of %s: %s", instance_id, exc)
                return inst, Observed()
        try:
            with self.connect(inst, 5.0) as a:
                st = a.job()
        except OutgrowError:
            return inst, Observed()
        return inst, Observed(
            phase=st.phase, restored=st.restored, kept_checkpoint=st.kept_checkpoint
        )

    def reconcile(self, rec: JobRecord, live: list[str]) -> tuple[Step, ...]:
        """Carry out the plan for one job; returns its steps (START is the caller's)."""
        found = {i: self.observe(i) for i in live} if S(rec.status) in HOLDING else {}
        seen = {i: found[i][1] if i in found else Observed() for i in live}
        has_snapshot = bool(self.store.snapshots(rec.id)) if S(rec.status) in HOLDING else False
        plan = decide(S(rec.status), rec.current_instance_id, seen, has_snapshot)
        if plan.keep is not None and (Step.ABORT in plan.steps or Step.RESTORE_KEPT in plan.steps):
            inst = found[plan.keep][0]
            try:
                assert inst is not None
                self._recover(rec, inst, plan, [i for i, _ in found.values() if i is not None])
            except OutgrowError as exc:  # then the job is lost: decide again without it
                self.store.add_event(rec.id, "error", f"reconcile: restore failed: {exc}")
                seen = {**seen, plan.keep: UNUSABLE}
                plan = decide(S(rec.status), rec.current_instance_id, seen, has_snapshot)
        for iid, status in plan.end.items():
            self.instances.end(iid, status)
        if Step.CANCEL in plan.steps:
            self.workers.run(rec.id, self.actions.cancel, "cancelled (finished after a restart)")
        if Step.WAIT_START in plan.steps:
            self.store.add_event(rec.id, "info", f"reconcile: {plan.reason}")
            self.workers.run(rec.id, self.actions.await_start)
            return plan.steps
        if plan.keep is not None:
            self.store.update_instance(plan.keep, status="normal")
            self.store.update_job(rec.id, current_instance_id=plan.keep)
        elif plan.to is not None:
            self.store.update_job(rec.id, current_instance_id=None)
        if plan.to is not None:
            self.lifecycle.transition(rec.id, plan.to, plan.reason)
        return plan.steps

    def _recover(
        self, rec: JobRecord, inst: InstanceInfo, plan: Plan, others: list[InstanceInfo]
    ) -> None:
        if Step.ABORT in plan.steps:
            with self.connect(inst, 30.0) as a:
                a.abort()  # the move/suspend did not finish: resume the source copy
            return
        # A move with non-shared storage was cut after the source's tree ended: take the
        # storage back from wherever it got to and restore the job on the source from the
        # images it kept (what Migrator would have done had the move failed).
        for other in [*(o for o in others if o.id != inst.id), inst]:  # the source last
            try:
                self.jobdirs.release(rec.id, other, keep_logs=False)
            except OutgrowError as exc:  # not there, or held by another instance
                log.info("reconcile %s: storage not released from %s: %s", rec.id, other.id, exc)
        self.jobdirs.mount(rec.id, inst)
        with self.connect(inst, 30.0) as a:
            a.restore(RestoreRequest(local_checkpoint=True))
            a.discard_images()
        self.store.add_event(
            rec.id,
            "info",
            f"reconcile: the move was cut after the job stopped on {inst.id}; "
            "restored there from its kept checkpoint",
        )
