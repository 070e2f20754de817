"""Shared machinery of the store: the session factory, transactions and row helpers.

The store's boundary for database outages: a transaction that fails because the database
cannot be reached (PostgreSQL down or restarting, a network cut, a pool that cannot hand
out a connection, SQLite busy past its timeout) raises :class:`StoreUnavailable` (HTTP
503, "try again") instead of SQLAlchemy's error (a 500 with a traceback in the log). The
next transaction reconnects by itself (``pool_pre_ping``, see :mod:`outgrow.store.engine`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from outgrow.domain.jobs import check_name
from outgrow.errors import ConflictError, NotFoundError, StoreUnavailable, ValidationError
from outgrow.store.engine import BEGIN_OPTION, safe_url
from outgrow.store.models import Job, User

UNAVAILABLE_MESSAGE = "the control plane's database is unavailable; try again shortly"
# SQLite reports its own bugs (no such table, syntax) as OperationalError too: only these
# mean "the file cannot be used right now".
SQLITE_UNAVAILABLE = ("locked", "busy", "unable to open", "disk i/o", "readonly", "disk is full")


def is_unavailable(exc: BaseException, backend: str) -> bool:
    """Whether ``exc`` says the database cannot be reached or used now (not a bug)."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, OperationalError | InterfaceError):
        return isinstance(exc, DBAPIError) and exc.connection_invalidated
    if backend == "sqlite":
        return any(w in str(exc.orig).lower() for w in SQLITE_UNAVAILABLE)
    return True


def store_unavailable(url: object, exc: BaseException, where: bool = False) -> StoreUnavailable:
    """The StoreUnavailable for ``exc``: its detail (for logs) names the URL without its
    password and the driver's reason on one line; with ``where`` the message does too
    (for the operator starting the control plane, not for API clients)."""
    reason = exc.orig if isinstance(exc, DBAPIError) else exc
    why = " ".join(str(reason).split())[:300] or type(reason).__name__
    detail = f"{safe_url(str(url))}: {why}"
    message = f"cannot reach the database {detail}" if where else UNAVAILABLE_MESSAGE
    return StoreUnavailable(message, detail=detail)


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
        """A session in one transaction: committed at the end, rolled back on error; a
        database that cannot be reached is a StoreUnavailable (module docstring)."""
        try:
            with self._serial, (self._write if write else self._read)() as s, s.begin():
                yield s
        except (DBAPIError, PoolTimeout) as exc:
            if not is_unavailable(exc, self._engine.url.get_backend_name()):
                raise
            raise store_unavailable(self._engine.url, exc) from exc
