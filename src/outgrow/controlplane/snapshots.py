"""Snapshots: checkpoints a job runs on from, taken periodically (or on demand), kept
where the job's checkpoints live (a directory of the data dir on the local provider,
outside the job's own directory; object storage on a cloud), the last N kept.

Three job actions, each run on the job's worker (so never during a move, a suspend or
another snapshot, and a cancel interrupts them like any action):

    take      freeze + dump (the job runs on), record, drop the oldest beyond N
    restore   roll a running job back to a snapshot on a fresh instance; the running
              copy is frozen meanwhile and resumed if anything fails
    recover   after a host restart lost the job's instance: restore its newest
              snapshot on a new instance (reconcile.py decides when)

The scheduler asks :meth:`Snapshots.consider` at every tick for each Executing job; the
decision itself is the pure :func:`outgrow.domain.snapshots.snapshot_due`.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime

from outgrow.agentapi.models import CheckpointRequest, RestoreRequest
from outgrow.cancel import check
from outgrow.controlplane.images import Images
from outgrow.controlplane.instances import Instances
from outgrow.controlplane.jobdirs import JobDirs
from outgrow.controlplane.lifecycle import Lifecycle
from outgrow.controlplane.workers import Workers
from outgrow.domain.snapshots import (
    Due,
    SnapshotResult,
    SnapshotView,
    effective_interval,
    snapshot_due,
)
from outgrow.domain.states import JobState as S
from outgrow.errors import CancelledError, ConflictError, NotFoundError, OutgrowError
from outgrow.orchestrator.migrate import Connect
from outgrow.providers.base import Capability, InstanceInfo, Provider
from outgrow.store import JobRecord, Store

log = logging.getLogger("outgrow.snapshots")


def clock(t: datetime) -> str:
    """``HH:MM:SS`` (UTC) of a snapshot's time, as events name it."""
    return t.astimezone(UTC).strftime("%H:%M:%S")


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


class Snapshots:
    def __init__(
        self,
        store: Store,
        provider: Provider,
        connect: Connect,
        lifecycle: Lifecycle,
        instances: Instances,
        jobdirs: JobDirs,
        images: Images,
        workers: Workers,
        keep: int,
        default_interval_s: float,
        on_cancelled: Callable[[str, CancelledError], None],
    ):
        self.store = store
        self.provider = provider
        self.connect = connect
        self.lifecycle = lifecycle
        self.instances = instances
        self.jobdirs = jobdirs
        self.images = images
        self.workers = workers
        self.keep = keep
        self.default_interval_s = default_interval_s
        self.on_cancelled = on_cancelled  # JobActions._cancelled: end the job Cancelled
        self._guard = threading.Lock()
        self._last: dict[str, float] = {}  # job → newest snapshot (Unix time)
        self._failed: dict[str, float] = {}  # job → last failed periodic snapshot
        self._since: dict[str, tuple[str, float]] = {}  # job → (instance, running since)
        self._jupyter: dict[str, tuple[str, bool]] = {}  # job → (image, is Jupyter)
        lifecycle.on_terminal(self._drop_all, name="delete the job's snapshots")

    # ---- the periodic decision --------------------------------------------------------
    def interval(self, rec: JobRecord) -> float:
        cached = self._jupyter.get(rec.id)
        if cached is None or cached[0] != rec.spec.image:
            try:
                is_jupyter = self.images.for_job(rec.spec).is_jupyter
            except NotFoundError:
                is_jupyter = False
            cached = (rec.spec.image, is_jupyter)
            self._jupyter[rec.id] = cached
        return effective_interval(rec.spec.checkpoint_interval, cached[1], self.default_interval_s)

    def due(self, rec: JobRecord, now: float) -> Due:
        last = self._last.get(rec.id)
        if last is None:
            snaps = self.store.snapshots(rec.id)
            last = snaps[-1].time.timestamp() if snaps else 0.0
            self._last[rec.id] = last
        return snapshot_due(
            now,
            S(rec.status),
            self.interval(rec),
            last or None,
            self._running_since(rec, now),
            busy=self.workers.busy(rec.id),
            last_failure_at=self._failed.get(rec.id),
        )

    def consider(self, rec: JobRecord) -> None:
        """Queue a periodic snapshot of ``rec`` when one is due (the scheduler's tick)."""
        if self.due(rec, time.time()).due:
            self.workers.run(rec.id, self.take, "periodic")

    def _running_since(self, rec: JobRecord, now: float) -> float:
        """Since when the job runs on its current instance (the instance's start)."""
        iid = rec.current_instance_id or ""
        cached = self._since.get(rec.id)
        if cached is None or cached[0] != iid:
            started = next(
                (i.started_at.timestamp() for i in self.store.instances(rec.id) if i.id == iid),
                now,
            )
            cached = (iid, started)
            self._since[rec.id] = cached
        return cached[1]

    # ---- take -------------------------------------------------------------------------
    def take(
        self, job_id: str, reason: str = "periodic", done: Future[SnapshotResult] | None = None
    ) -> None:
        """The worker action: take a snapshot; a failure is an event (the job runs on).
        ``done`` receives the result or the error (a user waiting for it)."""
        try:
            result = self._take(job_id, reason)
        except CancelledError as exc:
            if done is not None:
                done.set_exception(exc)
            self.on_cancelled(job_id, exc)
            return
        except OutgrowError as exc:
            self._failed[job_id] = time.time()
            if done is not None:
                done.set_exception(exc)
            with contextlib.suppress(NotFoundError):
                self.store.add_event(job_id, "error", f"snapshot failed, job runs on: {exc}")
            return
        except BaseException as exc:
            if done is not None:
                done.set_exception(exc)
            raise
        if done is not None:
            done.set_result(result)

    def _take(self, job_id: str, reason: str) -> SnapshotResult:
        rec = self._job(job_id)
        if rec.status != S.EXECUTING or rec.current_instance_id is None:
            raise ConflictError(f"job {rec.name} is {rec.status}: only a running job is saved")
        inst = self.provider.describe_instance(rec.current_instance_id)
        if inst is None:
            raise ConflictError(f"the instance of job {rec.name} is gone")
        check(self.workers.token(job_id), "taking a snapshot")
        sid = secrets.token_hex(5)
        where = self.provider.checkpoint_location(job_id, f"snapshot-{sid}")
        at = datetime.now(UTC)
        t0 = time.monotonic()
        # The proxy holds the job's websockets meanwhile (the agent cuts every outside
        # connection before the dump) and re-attaches them once the job runs on.
        self.lifecycle.before_checkpoint(job_id)
        try:
            with self.connect(inst, 30.0) as a:
                ck = a.snapshot(CheckpointRequest.into(where))
        except BaseException:
            self._drop_location(where)
            raise
        finally:
            self.lifecycle.after_checkpoint(job_id)
        view = self.store.add_snapshot(
            job_id,
            sid,
            time=at,
            location=where,
            size_bytes=ck.local_bytes,
            duration_s=round(time.monotonic() - t0, 4),
            frozen_s=round(ck.freeze_s + ck.dump_s, 4),
            reason=reason,
            instance_id=inst.id,
        )
        self._last[job_id] = at.timestamp()
        self._failed.pop(job_id, None)
        deleted = self.prune(job_id)
        self.store.add_event(
            job_id,
            "snapshot",
            f"snapshot {sid} ({reason}): {human_bytes(view.size_bytes)}, job frozen "
            f"{view.frozen_s:.2f} s, {view.duration_s:.2f} s in all"
            + (f"; deleted {', '.join(deleted)}" if deleted else ""),
            snapshot_id=sid,
            size_bytes=view.size_bytes,
            frozen_s=view.frozen_s,
            duration_s=view.duration_s,
            deleted=deleted,
        )
        return SnapshotResult(snapshot=view, deleted=deleted)

    def prune(self, job_id: str) -> list[str]:
        """Delete the oldest snapshots beyond the last ``keep``; their ids."""
        snaps = self.store.snapshots(job_id)
        gone = snaps[: max(len(snaps) - self.keep, 0)]
        for s in gone:
            self._delete(job_id, s.id)
        return [s.id for s in gone]

    def _delete(self, job_id: str, snapshot_id: str) -> None:
        try:
            _, where = self.store.snapshot_location(job_id, snapshot_id)
        except NotFoundError:
            return
        self._drop_location(where)
        self.store.delete_snapshot(snapshot_id)

    def _drop_location(self, where: str) -> None:
        try:
            self.provider.delete_checkpoint(where)
        except OutgrowError as exc:
            log.error("deleting snapshot images at %s: %s", where, exc)

    def _drop_all(self, job_id: str, _: object) -> None:
        """The job ended: its snapshots go with it."""
        for s in self.store.snapshots(job_id):
            self._delete(job_id, s.id)
        for cache in (self._last, self._failed, self._since, self._jupyter):
            cache.pop(job_id, None)

    # ---- restore (a user's rollback) --------------------------------------------------
    def restore(
        self, job_id: str, snapshot_id: str, who: str, done: Future[None] | None = None
    ) -> None:
        """The worker action: replace the running job by ``snapshot_id`` restored on a
        fresh instance. The running copy is frozen (checkpointed, kept) while the snapshot
        is restored, then ended; any failure resumes it: the job runs on as it was."""
        try:
            self._restore(job_id, snapshot_id, who)
        except CancelledError as exc:
            if done is not None:
                done.set_exception(exc)
            self.on_cancelled(job_id, exc)
            return
        except BaseException as exc:
            if done is not None:
                done.set_exception(exc)
            if isinstance(exc, OutgrowError):
                return
            raise
        if done is not None:
            done.set_result(None)

    def check_restorable(self, rec: JobRecord) -> None:
        if not self.provider.supports(Capability.SHARED_JOB_STORAGE):
            raise ConflictError(
                "restoring a snapshot of a running job needs job storage shared between "
                f"instances; provider {self.provider.name} moves it (suspend, then resume)"
            )

    def _restore(self, job_id: str, snapshot_id: str, who: str) -> None:
        rec = self._job(job_id)
        view, where = self.store.snapshot_location(job_id, snapshot_id)
        if rec.status != S.EXECUTING or rec.current_instance_id is None:
            raise ConflictError(f"job {rec.name} is {rec.status}: only a running job rolls back")
        self.check_restorable(rec)
        source = self.provider.describe_instance(rec.current_instance_id)
        itype = self.instances.current_type(rec)
        if source is None or itype is None:
            raise ConflictError(f"the instance of job {rec.name} is gone")
        what = f"snapshot {snapshot_id} of {clock(view.time)}"
        self.lifecycle.transition(job_id, S.FLOATING, f"restoring {what} (asked by {who})")
        cancel = self.workers.token(job_id)
        try:
            target = self.instances.create(rec, itype, cancel=cancel)
        except CancelledError:
            raise
        except OutgrowError as exc:
            self._kept(job_id, f"restore of {what} failed, job kept running: {exc}")
            raise
        self.instances.record(job_id, target, status="starting")
        hold = self.provider.checkpoint_location(job_id, f"hold-{secrets.token_hex(4)}")
        t0 = time.monotonic()
        try:
            self.lifecycle.before_checkpoint(job_id)
            with self.connect(source, 30.0) as a:
                a.checkpoint(CheckpointRequest.into(hold))  # frozen and kept until commit
            try:
                check(cancel, f"restoring {what}")
                self.jobdirs.mount(job_id, target)
                with self.connect(target, 30.0) as b:
                    rs = b.restore(RestoreRequest.out_of(where))
            except BaseException:
                with self.connect(source, 30.0) as a, contextlib.suppress(OutgrowError):
                    a.abort()
                raise
        except BaseException as exc:
            self.instances.end(target.id, "failed")
            self._drop_location(hold)
            if isinstance(exc, OutgrowError) and not isinstance(exc, CancelledError):
                self._kept(job_id, f"restore of {what} failed, job kept running: {exc}")
            raise
        try:
            with self.connect(source, 30.0) as a:
                a.commit()
        except OutgrowError as exc:  # the restored copy runs; the old one dies with its instance
            log.error("commit on %s failed: %s", source.id, exc)
        self._drop_location(hold)
        self.instances.end(source.id, "migrated-from")
        self.store.update_instance(target.id, status="normal")
        self.store.update_job(job_id, current_instance_id=target.id, last_migration_at=time.time())
        self.store.add_event(
            job_id,
            "info",
            f"rolled back to {what} on {target.id} in {time.monotonic() - t0:.2f} s",
            snapshot_id=snapshot_id,
            restore_s=rs.restore_s,
            checkpoint_bytes=rs.images_bytes,
        )
        self.lifecycle.transition(job_id, S.EXECUTING, f"restored from {what} on {target.id}")

    def _kept(self, job_id: str, why: str) -> None:
        self.store.add_event(job_id, "error", why)
        self.lifecycle.transition(job_id, S.EXECUTING, "restore failed; the job runs on as it was")

    # ---- recover (after a host restart) -------------------------------------------------
    def recover(self, job_id: str, lost_type: str | None) -> None:
        """The worker action after a restart found the job's instance gone (reconcile.py
        put it in Floating): restore its newest snapshot that restores on a new instance
        of the type it had; none: the job failed (its directory is kept)."""
        rec = self._job(job_id)
        if rec.status != S.FLOATING:
            return
        snaps = list(reversed(self.store.snapshots(job_id)))
        cancel = self.workers.token(job_id)
        errors: list[str] = []
        t0 = time.monotonic()
        try:
            try:
                itype = self.instances.catalog.get(lost_type or "")
            except OutgrowError:  # gone from the catalog since: the size it asks for
                itype = self.instances.initial_type(rec)
            inst = self.instances.create(rec, itype, cancel=cancel)
        except CancelledError as exc:
            self.on_cancelled(job_id, exc)
            return
        except OutgrowError as exc:
            self._lost(job_id, f"no instance to restore it on: {exc}")
            return
        self.instances.record(job_id, inst)
        try:
            self.jobdirs.mount(job_id, inst)
        except OutgrowError as exc:
            errors.append(f"job directory: {exc}")
            snaps = []
        for snap in snaps:
            try:
                _, where = self.store.snapshot_location(job_id, snap.id)
                with self.connect(inst, 30.0) as a:
                    a.restore(RestoreRequest.out_of(where))
            except OutgrowError as exc:
                log.error("job %s: restoring snapshot %s failed: %s", job_id, snap.id, exc)
                errors.append(f"snapshot {snap.id}: {exc}")
                continue
            self._restored(rec, inst, snap, time.monotonic() - t0)
            return
        self.jobdirs.release_quietly(job_id, inst, keep_logs=True)
        self.instances.end(inst.id, "failed")
        self._lost(job_id, "; ".join(errors) or "no snapshot")

    def _restored(
        self, rec: JobRecord, inst: InstanceInfo, snap: SnapshotView, took: float
    ) -> None:
        lost_s = self._lost_work_s(rec.id, snap)
        self.store.update_job(rec.id, current_instance_id=inst.id, last_migration_at=time.time())
        self.store.add_event(
            rec.id,
            "info",
            f"restored from checkpoint of {clock(snap.time)} after host restart "
            f"(lost {lost_s:.0f} s of work)",
            snapshot_id=snap.id,
            lost_s=round(lost_s, 1),
            restore_total_s=round(took, 3),
            instance=inst.id,
        )
        self.lifecycle.transition(
            rec.id, S.EXECUTING, f"restored from snapshot {snap.id} on {inst.id} after host restart"
        )

    def _lost_work_s(self, job_id: str, snap: SnapshotView) -> float:
        """How much the job had run past the snapshot when the host went down: up to its
        last metric sample (taken every second while it ran), else up to now."""
        t = snap.time.timestamp()
        points = self.store.metrics(job_id, t, None)
        last_seen = points[-1].t if points else time.time()
        return max(last_seen - t, 0.0)

    def _lost(self, job_id: str, why: str) -> None:
        self.store.update_job(job_id, current_instance_id=None)
        self.lifecycle.transition(
            job_id, S.FAIL_TO_COMPLETE, f"instance lost; restoring from a snapshot failed: {why}"
        )

    def _job(self, job_id: str) -> JobRecord:
        rec = self.store.get_job(job_id)
        if rec is None:
            raise NotFoundError(f"no job {job_id}")
        return rec
