"""Shared machinery of the store: the session factory, transactions and row helpers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from outgrow.domain.jobs import check_name
from outgrow.errors import ConflictError, NotFoundError, ValidationError
from outgrow.store.engine import BEGIN_OPTION
from outgrow.store.models import Job, User


def valid_name(value: str, field: str, what: str) -> str:
    try:
        return check_name(value, what)
    except ValueError as exc:
        raise ValidationError(str(exc), field=field) from exc


def reject_unknown(method: str, given: Any, allowed: frozenset[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise TypeError(f"{method}() got unknown fields {unknown} (allowed: {sorted(allowed)})")


def flush_or_conflict(s: Session, message: str, field: str | None = None) -> None:
    """Flush the one new row, turning a constraint violation (a concurrent duplicate
    that passed the explicit check) into ConflictError. Flush only the row that can
    conflict this way: any other integrity error is a bug and must not read as a duplicate."""
    try:
        s.flush()
    except IntegrityError as exc:
        raise ConflictError(message, field=field) from exc


def live_job(s: Session, job_id: str) -> Job:
    """The job row, locked for this transaction; NotFoundError if unknown or deleted."""
    job = s.get(Job, job_id, with_for_update=True)
    if job is None or job.deleted:
        raise NotFoundError(f"no job {job_id!r}", field="job")
    return job


def get_user_row(s: Session, user_id: int) -> User:
    user = s.get(User, user_id)
    if user is None:
        raise NotFoundError(f"no user with id {user_id}", field="user")
    return user


class StoreBase:
    """One engine and two session factories: reads begin with a plain ``BEGIN``, writes
    with ``BEGIN IMMEDIATE`` on SQLite (see :mod:`outgrow.store.engine`)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._read = sessionmaker(engine, expire_on_commit=False)
        writer = engine.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})
        self._write = sessionmaker(writer, expire_on_commit=False)
        # An in-memory SQLite database is one connection shared by every thread
        # (engine.py): its transactions must take turns.
        memory = engine.url.get_backend_name() == "sqlite" and engine.url.database in (
            None,
            "",
            ":memory:",
        )
        self._serial: AbstractContextManager[object] = (
            threading.RLock() if memory else nullcontext()
        )

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed at the end, rolled back on error."""
        with self._serial, (self._write if write else self._read)() as s, s.begin():
            yield s
