"""The control-plane store: users, tokens, jobs, runs, events, instances, metrics,
templates and images behind one thread-safe class (see docs/control-plane.md, "Store").

Every method is one short transaction on its own session (``StoreBase._tx``); methods
that write open theirs with ``BEGIN IMMEDIATE`` on SQLite (see :mod:`outgrow.store.engine`)
and lock the job row (``SELECT … FOR UPDATE``) on backends that have row locks.
Users, tokens, templates and images are in :mod:`outgrow.store.accounts`. ORM rows never
leave: methods return the domain views or :class:`JobRecord` / :class:`InstanceRecord`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, get_args

from sqlalchemy import CursorResult, delete, false, func, insert, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from outgrow.domain.jobs import EventView, InstanceView, JobSpec, MetricPoint
from outgrow.domain.states import (
    JobState,
    check_restart,
    check_transition,
    is_terminal,
    parse_state,
)
from outgrow.errors import ConfigError, ConflictError, NotFoundError, ValidationError
from outgrow.store.accounts import AccountsMixin
from outgrow.store.base import (
    flush_or_conflict,
    get_user_row,
    is_unavailable,
    live_job,
    reject_unknown,
    store_unavailable,
)
from outgrow.store.engine import make_engine, upgrade
from outgrow.store.models import Event, Instance, Job, Metric, Run, User, utcnow
from outgrow.store.records import (
    InstanceRecord,
    JobRecord,
    event_view,
    instance_record,
    job_record,
    metric_point,
)
from outgrow.store.snapshots import SnapshotsMixin

JOB_FIELDS = frozenset(
    {
        "spec",
        "current_instance_id",
        "exit_code",
        "checkpoint_dir",
        "last_migration_at",
        "run",
        "status_reason",
    }
)
INSTANCE_FIELDS = frozenset({"status", "ended_at", "address", "agent_url", "agent_token"})
INSTANCE_STATUSES: tuple[str, ...] = get_args(InstanceView.model_fields["status"].annotation)


def _instance_status(value: str) -> str:
    if value not in INSTANCE_STATUSES:
        raise ValidationError(
            f"unknown instance status {value!r} (known: {', '.join(INSTANCE_STATUSES)})",
            field="status",
        )
    return value


def _state_event(
    job_id: str, reason: str, from_state: str | None, to_state: str, **data: Any
) -> Event:
    return Event(
        job_id=job_id,
        time=utcnow(),
        type="state",
        reason=reason,
        from_state=from_state,
        to_state=to_state,
        data=data,
    )


class Store(AccountsMixin, SnapshotsMixin):
    """Persistent state of the control plane. Safe to share between threads."""

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect and bring the schema to the newest revision (``alembic upgrade head``);
        StoreUnavailable (naming the URL, never its password) if the database cannot be
        reached."""
        engine = make_engine(url)
        try:
            upgrade(engine)
        except (DBAPIError, PoolTimeout) as exc:
            engine.dispose()
            damaged = _damaged_sqlite(engine.url, exc)
            if damaged is not None:
                raise damaged from exc
            if not is_unavailable(exc, engine.url.get_backend_name()):
                raise
            raise store_unavailable(engine.url, exc, where=True) from exc
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    # --- jobs -------------------------------------------------------------------------

    def create_job(self, owner_id: int, spec: JobSpec, jupyter_token: str) -> str:
        """A new Submitted job (run 1, a "submitted" state event); returns its id."""
        conflict = f"a job named {spec.name!r} already exists"
        with self._tx(write=True) as s:
            get_user_row(s, owner_id)
            existing = s.scalar(
                select(Job.id).where(
                    Job.owner_id == owner_id, Job.name == spec.name, Job.deleted == false()
                )
            )
            if existing is not None:
                raise ConflictError(f"{conflict} ({existing})", field="name")
            job_id = "j" + secrets.token_hex(5)
            while s.get(Job, job_id) is not None:
                job_id = "j" + secrets.token_hex(5)
            now, submitted = utcnow(), JobState.SUBMITTED.value
            s.add(
                Job(
                    id=job_id,
                    name=spec.name,
                    owner_id=owner_id,
                    spec=spec.model_dump(mode="json"),
                    status=submitted,
                    status_reason="submitted",
                    run=1,
                    jupyter_token=jupyter_token,
                    deleted=False,
                    created_at=now,
                    updated_at=now,
                )
            )
            flush_or_conflict(s, conflict, "name")  # the job row first: the others refer to it
            s.add(Run(job_id=job_id, number=1, started_at=now, status=submitted))
            s.add(_state_event(job_id, "submitted", None, submitted))
            return job_id

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._tx() as s:
            row = s.execute(
                select(Job, User.name)
                .join(User, Job.owner_id == User.id)
                .where(Job.id == job_id, Job.deleted == false())
            ).first()
            return None if row is None else job_record(row[0], row[1])

    def find_job(self, owner_id: int | None, ref: str) -> JobRecord | None:
        """By id, else by name; ``owner_id`` None = any owner (ConflictError when several
        owners have a job of that name: the id is needed then)."""
        query = select(Job, User.name).join(User, Job.owner_id == User.id)
        query = query.where(Job.deleted == false())
        if owner_id is not None:
            query = query.where(Job.owner_id == owner_id)
        with self._tx() as s:
            row = s.execute(query.where(Job.id == ref)).first()
            if row is not None:
                return job_record(row[0], row[1])
            rows = s.execute(query.where(Job.name == ref).order_by(Job.created_at)).all()
            if len(rows) > 1:
                ids = ", ".join(f"{r[0].id} of {r[1]}" for r in rows)
                raise ConflictError(f"several jobs are named {ref!r} ({ids}): use the id")
            return job_record(rows[0][0], rows[0][1]) if rows else None

    def list_jobs(
        self, owner_id: int | None, statuses: Sequence[str] | None = None
    ) -> list[JobRecord]:
        query = select(Job, User.name).join(User, Job.owner_id == User.id)
        query = query.where(Job.deleted == false())
        if owner_id is not None:
            query = query.where(Job.owner_id == owner_id)
        if statuses is not None:
            query = query.where(Job.status.in_([parse_state(v, "status").value for v in statuses]))
        with self._tx() as s:
            rows = s.execute(query.order_by(Job.created_at, Job.id)).all()
            return [job_record(r[0], r[1]) for r in rows]

    def set_status(self, job_id: str, status: str, reason: str) -> JobState:
        """Move the job to ``status`` (a legal transition, else ConflictError) and record a
        "state" event, in one transaction; returns the state it left. Terminal → Submitted
        is :meth:`restart_job`. The control plane calls this only through its Lifecycle
        (controlplane/lifecycle.py), which runs the transition's hooks after the commit."""
        with self._tx(write=True) as s:
            job = live_job(s, job_id)
            current = job.status
            check_transition(current, status)
            new, now = JobState(status).value, utcnow()
            job.status, job.status_reason, job.updated_at = new, reason, now
            run = s.get(Run, (job_id, job.run))
            if run is not None:
                run.status = new
                if is_terminal(new) and run.ended_at is None:
                    run.ended_at = now
            s.add(_state_event(job_id, reason, current, new))
            return JobState(current)

    def restart_job(self, job_id: str) -> int:
        """A new run of a finished job: closes the last run, opens the next, sets Submitted
        (reason "restart") and clears the run's exit code, instance and checkpoint.
        Returns the new run number; ConflictError unless the job is in a terminal state."""
        with self._tx(write=True) as s:
            job = live_job(s, job_id)
            current = job.status
            check_restart(current)
            now, submitted = utcnow(), JobState.SUBMITTED.value
            last = s.scalar(select(func.max(Run.number)).where(Run.job_id == job_id)) or 0
            previous = s.get(Run, (job_id, job.run))
            if previous is not None:
                previous.status = current
                previous.ended_at = previous.ended_at or now
            number = max(job.run, last) + 1
            s.add(Run(job_id=job_id, number=number, started_at=now, status=submitted))
            job.run, job.status, job.status_reason = number, submitted, "restart"
            job.exit_code, job.current_instance_id = None, None
            job.checkpoint_dir, job.last_migration_at = None, None
            job.updated_at = now
            s.add(_state_event(job_id, "restart", current, submitted, run=number))
            return number

    def delete_job(self, job_id: str) -> None:
        """Hide a finished job (soft delete: its name can be used again)."""
        with self._tx(write=True) as s:
            job = live_job(s, job_id)
            if not is_terminal(job.status):
                raise ConflictError(f"cannot delete a job that is {job.status} (cancel it first)")
            job.deleted, job.updated_at = True, utcnow()

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Set fields of the job (those of JobRecord listed in ``JOB_FIELDS``)."""
        reject_unknown("update_job", fields, JOB_FIELDS)
        spec = fields.get("spec")
        if "spec" in fields:
            if not isinstance(spec, JobSpec):
                raise TypeError("update_job(spec=...) takes a JobSpec")
            fields["spec"] = spec.model_dump(mode="json")
        with self._tx(write=True) as s:
            job = live_job(s, job_id)
            if spec is not None and spec.name != job.name:
                raise ValidationError("a job's name cannot be changed", field="name")
            for key, value in fields.items():
                setattr(job, key, value)
            job.updated_at = utcnow()

    def add_event(self, job_id: str, type: str, reason: str, **data: Any) -> EventView:
        """Record an event; ``from_state``/``to_state`` go to their columns, the rest
        (migration fields: from_type, to_type, downtime_s, checkpoint_bytes) to ``data``."""
        from_state, to_state = data.pop("from_state", None), data.pop("to_state", None)
        try:
            payload = json.loads(json.dumps(data))
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"event data is not JSON: {exc}", field="data") from exc
        with self._tx(write=True) as s:
            live_job(s, job_id)
            event = Event(
                job_id=job_id,
                time=utcnow(),
                type=type,
                reason=reason,
                from_state=from_state,
                to_state=to_state,
                data=payload,
            )
            s.add(event)
            s.flush()
            return event_view(event)

    def events(self, job_id: str, since_id: int = 0) -> list[EventView]:
        """The job's events with an id above ``since_id``, oldest first."""
        with self._tx() as s:
            rows = s.scalars(
                select(Event).where(Event.job_id == job_id, Event.id > since_id).order_by(Event.id)
            )
            return [event_view(e) for e in rows]

    # --- instances ----------------------------------------------------------------------

    def add_instance(self, job_id: str, inst: InstanceRecord) -> None:
        if inst.job_id != job_id:
            raise ValidationError(
                f"instance {inst.id} belongs to job {inst.job_id}, not {job_id}", field="job_id"
            )
        _instance_status(inst.status)
        conflict = f"instance {inst.id!r} is already recorded"
        with self._tx(write=True) as s:
            live_job(s, job_id)
            if s.get(Instance, inst.id) is not None:
                raise ConflictError(conflict)
            s.add(Instance(**asdict(inst)))
            flush_or_conflict(s, conflict)

    def update_instance(self, instance_id: str, **fields: Any) -> None:
        """Set ``status``, ``ended_at``, ``address``, ``agent_url`` or ``agent_token``."""
        reject_unknown("update_instance", fields, INSTANCE_FIELDS)
        if "status" in fields:
            _instance_status(fields["status"])
        with self._tx(write=True) as s:
            inst = s.get(Instance, instance_id, with_for_update=True)
            if inst is None:
                raise NotFoundError(f"no instance {instance_id!r}", field="instance")
            for key, value in fields.items():
                setattr(inst, key, value)

    def instances(self, job_id: str) -> list[InstanceRecord]:
        """Every instance the job ran on, oldest first."""
        with self._tx() as s:
            rows = s.scalars(
                select(Instance)
                .where(Instance.job_id == job_id)
                .order_by(Instance.started_at, Instance.id)
            )
            return [instance_record(i) for i in rows]

    def live_instances(self) -> list[InstanceRecord]:
        """Instances of any job that have not ended (what a reconciler checks)."""
        with self._tx() as s:
            rows = s.scalars(
                select(Instance)
                .where(Instance.ended_at.is_(None))
                .order_by(Instance.started_at, Instance.id)
            )
            return [instance_record(i) for i in rows]

    def all_instances(self) -> list[InstanceRecord]:
        """Every instance of every job, ended ones too (what the Prometheus totals need in
        one query)."""
        with self._tx() as s:
            rows = s.scalars(select(Instance).order_by(Instance.started_at, Instance.id))
            return [instance_record(i) for i in rows]

    def events_of_type(self, type: str) -> list[tuple[str, EventView]]:
        """(job id, event) of every event of this type, any job (deleted ones too: counters
        built from them must never go down), oldest first."""
        with self._tx() as s:
            rows = s.scalars(select(Event).where(Event.type == type).order_by(Event.id))
            return [(e.job_id, event_view(e)) for e in rows]

    # --- metrics ------------------------------------------------------------------------

    def add_metrics(self, job_id: str, points: Sequence[MetricPoint]) -> None:
        if not points:
            return
        rows = [
            {
                "job_id": job_id,
                "instance_id": p.instance_id,
                "t": p.t,
                "mem_used": p.mem_used_bytes,
                "mem_cache": p.mem_cache_bytes,
                "mem_swap": p.mem_swap_bytes,
                "mem_limit": p.mem_limit_bytes,
                "cpu_used": p.cpu_used_vcpus,
                "cpu_quota": p.cpu_quota_vcpus,
            }
            for p in points
        ]
        with self._tx(write=True) as s:
            live_job(s, job_id)
            s.execute(insert(Metric), rows)

    def metrics(self, job_id: str, t_from: float | None, t_to: float | None) -> list[MetricPoint]:
        """The job's samples with ``t_from <= t <= t_to`` (either bound optional), by time."""
        query = select(Metric).where(Metric.job_id == job_id)
        if t_from is not None:
            query = query.where(Metric.t >= t_from)
        if t_to is not None:
            query = query.where(Metric.t <= t_to)
        with self._tx() as s:
            return [metric_point(p) for p in s.scalars(query.order_by(Metric.t, Metric.id))]

    def prune_metrics(self, older_than: float) -> int:
        """Delete every sample (any job) with ``t < older_than`` (a Unix time); returns
        how many were deleted."""
        with self._tx(write=True) as s:
            result = s.execute(delete(Metric).where(Metric.t < older_than))
            assert isinstance(result, CursorResult)
            return int(result.rowcount)


SQLITE_DAMAGED = ("file is not a database", "database disk image is malformed")


def _damaged_sqlite(url: Any, exc: BaseException) -> ConfigError | None:
    """A clear, final error for an SQLite file that is not (or no longer) a database:
    nothing is touched, and waiting would not help."""
    reason = str(getattr(exc, "orig", exc))
    if url.get_backend_name() != "sqlite" or not any(m in reason for m in SQLITE_DAMAGED):
        return None
    return ConfigError(
        f"the database {url.database} is damaged ({reason}): restore it from a backup; "
        "nothing was changed"
    )
