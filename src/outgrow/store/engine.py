"""Engine creation and schema migrations.

SQLite gets, on every new connection: ``busy_timeout=5000``, ``journal_mode=WAL`` and
``foreign_keys=ON``; and SQLAlchemy (not the ``sqlite3`` module) emits ``BEGIN``, so that
write transactions can start with ``BEGIN IMMEDIATE``: a writer takes the write lock
before it reads, waits for it with the busy timeout, and never hits the read-then-write
upgrade deadlock (``SQLITE_BUSY`` without waiting) of deferred transactions. Read-only
transactions use a plain ``BEGIN`` and, with WAL, never wait for writers.

PostgreSQL (``OUTGROW_DATABASE_URL=postgresql://user:password@host/db``, the ``postgres``
extra) goes through psycopg 3: a URL without a driver gets ``+psycopg`` (SQLAlchemy's
default would be psycopg2, which outgrow does not ship). Pooled connections are pinged
before use (``pool_pre_ping``), so connections a database restart cut are replaced
instead of failing a request, and connecting gives up after ``PG_CONNECT_TIMEOUT_S``
(a down host must not hang a request or the start for minutes).

Alembic is configured in code (:func:`alembic_config`): no ini file, the script location
is the ``migrations`` directory next to this module, wherever the package is installed.
To write a new revision, from the repository::

    python -c "from alembic import command; from outgrow.store.engine import alembic_config; \
command.revision(alembic_config('sqlite:////tmp/og.db'), 'what changed', autogenerate=True)"

(after ``command.upgrade(cfg, 'head')`` on that scratch database), then read and fix it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.pool import StaticPool

from outgrow.errors import ConfigError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BEGIN_OPTION = "outgrow_sqlite_begin"  # execution option read by the SQLite "begin" hook
SQLITE_BUSY_TIMEOUT_MS = 5000
PG_CONNECT_TIMEOUT_S = 5


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for the packaged migrations (``url`` for the alembic commands
    that connect themselves; :func:`upgrade` passes its own connection)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """``alembic upgrade head`` on this engine, in one (write) transaction."""
    cfg = alembic_config()
    with engine.execution_options(**{BEGIN_OPTION: "IMMEDIATE"}).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; for SQLite, creates the database file's directory and
    installs the per-connection pragmas and the BEGIN hook."""
    u = make_url(url)
    if u.get_backend_name() == "postgresql":
        if u.drivername == "postgresql":
            u = u.set(drivername="postgresql+psycopg")
        connect: dict[str, Any] = {}
        if "connect_timeout" not in u.query:
            connect["connect_timeout"] = PG_CONNECT_TIMEOUT_S
        try:
            return create_engine(u, pool_pre_ping=True, connect_args=connect)
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"{safe_url(u)} needs the PostgreSQL driver: pip install 'outgrow[postgres]'"
            ) from exc
    if u.get_backend_name() != "sqlite":
        return create_engine(u, pool_pre_ping=True)

    database = u.database or ""
    memory = database in ("", ":memory:") or "mode=memory" in str(u)
    kwargs: dict[str, Any] = {}
    if memory:
        # One connection shared by every thread, so that they all see one database
        # (tests and throw-away use only; a file is what the control plane uses).
        kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    elif not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(u, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module (its legacy mode never begins before a
        # SELECT and cannot BEGIN IMMEDIATE); the "begin" hook below emits it instead.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(BEGIN_OPTION, "DEFERRED")
        if mode not in ("DEFERRED", "IMMEDIATE"):
            raise ValueError(f"bad {BEGIN_OPTION} {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def safe_url(url: str | URL) -> str:
    """The URL with its password masked (``***``), for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: show nothing of it that could be a secret
        return "<an invalid database URL>"
