"""The ORM tables of the control plane (SQLAlchemy 2 typed declarative).

Rows never leave the store: :mod:`outgrow.store.store` converts them to the domain views
(``outgrow.domain.jobs``) and the records of :mod:`outgrow.store.records`.

Every datetime column is :class:`UTCDateTime`: timezone-aware UTC in and out, on every
backend (SQLite has no time zones: the value is stored as naive UTC there).
The schema is created and upgraded by Alembic (``migrations/versions``); a change here needs
a new revision (see ``outgrow.store.engine.alembic_config``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# 64-bit ids for the tables that grow without bound; SQLite only autoincrements INTEGER.
BIG_ID = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC on the Python side."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        if dialect.name == "sqlite":  # no time zone support: store naive UTC
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 (read by SQLAlchemy as a class attribute)
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
    }


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the secret
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Image(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    pip: Mapped[list[str]] = mapped_column()
    description: Mapped[str] = mapped_column(Text, default="")
    docs: Mapped[str] = mapped_column(Text, default="")
    default_port: Mapped[int | None] = mapped_column(Integer, default=None)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    base: Mapped[str | None] = mapped_column(String(64), default=None)
    owner_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # OCI images (format "oci", revision 0002): the manifest digest in the host cache,
    # where it came from, its blobs' size, its parsed config and labels, and what its
    # rootfs offers (RootfsFacts) once it was unpacked.
    format: Mapped[str] = mapped_column(String(8), default="venv", server_default="venv")
    oci_digest: Mapped[str | None] = mapped_column(String(71), default=None, index=True)
    oci_reference: Mapped[str | None] = mapped_column(Text, default=None)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    oci_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    labels: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    oci_facts: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class Template(Base):
    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("owner_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column()  # JobSpec.model_dump()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # One live job per (owner, name): a partial unique index where the backend has
        # them (SQLite, PostgreSQL); Store.create_job also checks inside its transaction.
        Index(
            "uq_jobs_owner_id_name_live",
            "owner_id",
            "name",
            unique=True,
            sqlite_where=text("deleted = 0"),
            postgresql_where=text("NOT deleted"),
        ),
        Index("ix_jobs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column()  # JobSpec.model_dump()
    status: Mapped[str] = mapped_column(String(32))
    status_reason: Mapped[str] = mapped_column(Text, default="")
    run: Mapped[int] = mapped_column(Integer, default=1)
    jupyter_token: Mapped[str] = mapped_column(String(128))
    current_instance_id: Mapped[str | None] = mapped_column(String(128), default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    checkpoint_dir: Mapped[str | None] = mapped_column(Text, default=None)
    last_migration_at: Mapped[float | None] = mapped_column(Float, default=None)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Run(Base):
    __tablename__ = "runs"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    status: Mapped[str] = mapped_column(String(32))


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (Index("ix_instances_ended_at", "ended_at"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # the provider's id
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    type: Mapped[str] = mapped_column(String(64))
    vcpus: Mapped[float] = mapped_column(Float)
    memory_gib: Mapped[float] = mapped_column(Float)
    spot: Mapped[bool] = mapped_column(Boolean, default=False)
    price_per_hour: Mapped[float] = mapped_column(Float)
    address: Mapped[str | None] = mapped_column(String(255), default=None)
    agent_url: Mapped[str | None] = mapped_column(Text, default=None)
    agent_token: Mapped[str | None] = mapped_column(String(255), default=None)
    started_at: Mapped[datetime] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    status: Mapped[str] = mapped_column(String(32))


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_job_id_id", "job_id", "id"),
        Index("ix_events_type_id", "type", "id"),  # /metrics: every migration, each scrape
    )

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    time: Mapped[datetime] = mapped_column(default=utcnow)
    type: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")
    from_state: Mapped[str | None] = mapped_column(String(32), default=None)
    to_state: Mapped[str | None] = mapped_column(String(32), default=None)
    data: Mapped[dict[str, Any]] = mapped_column()


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_job_id_t", "job_id", "t"), Index("ix_metrics_t", "t"))

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    instance_id: Mapped[str] = mapped_column(String(128))
    t: Mapped[float] = mapped_column(Float)  # Unix time, seconds
    mem_used: Mapped[int] = mapped_column(BigInteger)
    mem_cache: Mapped[int] = mapped_column(BigInteger)
    mem_swap: Mapped[int] = mapped_column(BigInteger)
    mem_limit: Mapped[int | None] = mapped_column(BigInteger, default=None)
    cpu_used: Mapped[float] = mapped_column(Float)
    cpu_quota: Mapped[float | None] = mapped_column(Float, default=None)


class Snapshot(Base):
    """A stored snapshot of a job (a checkpoint it runs on from): where its images are
    (a directory of the data dir, or an object URL) and what it cost."""

    __tablename__ = "snapshots"
    __table_args__ = (Index("ix_snapshots_job_id_time", "job_id", "time"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    time: Mapped[datetime] = mapped_column()  # when the job was frozen for it
    location: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    duration_s: Mapped[float] = mapped_column(Float)
    frozen_s: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(String(64), default="periodic")
    instance_id: Mapped[str | None] = mapped_column(String(128), default=None)
