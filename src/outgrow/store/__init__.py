"""Persistence of the control plane (SQLAlchemy 2 + Alembic); see docs/control-plane.md."""

from outgrow.store.records import InstanceRecord, JobRecord
from outgrow.store.store import Store

__all__ = ["InstanceRecord", "JobRecord", "Store"]
