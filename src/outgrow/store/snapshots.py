"""Snapshots of jobs (mixed into :class:`outgrow.store.Store`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select

from outgrow.domain.snapshots import SnapshotView
from outgrow.errors import NotFoundError
from outgrow.store.base import StoreBase, live_job
from outgrow.store.models import Snapshot, as_utc


def snapshot_view(s: Snapshot) -> SnapshotView:
    return SnapshotView(
        id=s.id,
        job_id=s.job_id,
        time=as_utc(s.time),
        size_bytes=s.size_bytes,
        duration_s=s.duration_s,
        frozen_s=s.frozen_s,
        reason=s.reason,
        instance_id=s.instance_id,
    )


class SnapshotsMixin(StoreBase):
    def add_snapshot(
        self,
        job_id: str,
        snapshot_id: str,
        *,
        time: datetime,
        location: str,
        size_bytes: int,
        duration_s: float,
        frozen_s: float,
        reason: str,
        instance_id: str | None,
    ) -> SnapshotView:
        with self._tx(write=True) as s:
            live_job(s, job_id)
            row = Snapshot(
                id=snapshot_id,
                job_id=job_id,
                time=time,
                location=location,
                size_bytes=size_bytes,
                duration_s=duration_s,
                frozen_s=frozen_s,
                reason=reason,
                instance_id=instance_id,
            )
            s.add(row)
            s.flush()
            return snapshot_view(row)

    def snapshots(self, job_id: str) -> list[SnapshotView]:
        """The job's snapshots, oldest first."""
        with self._tx() as s:
            rows = s.scalars(
                select(Snapshot)
                .where(Snapshot.job_id == job_id)
                .order_by(Snapshot.time, Snapshot.id)
            )
            return [snapshot_view(r) for r in rows]

    def snapshot_location(self, job_id: str, snapshot_id: str) -> tuple[SnapshotView, str]:
        """The snapshot and where its images are; NotFoundError when the job has none of
        that id."""
        with self._tx() as s:
            row = s.get(Snapshot, snapshot_id)
            if row is None or row.job_id != job_id:
                raise NotFoundError(f"no snapshot {snapshot_id!r} of this job", field="snapshot")
            return snapshot_view(row), row.location

    def delete_snapshot(self, snapshot_id: str) -> None:
        with self._tx(write=True) as s:
            s.execute(delete(Snapshot).where(Snapshot.id == snapshot_id))
