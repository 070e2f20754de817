"""The control-plane store on real SQLite files (Alembic schema, WAL, threads) and on a real
PostgreSQL 15 (a throwaway cluster, tests/pg.py): every test that is not about SQLite itself
runs on both backends. PostgreSQL's row locks: tests/integration/test_postgres.py."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event, func, inspect, select, text

from outgrow.domain.jobs import ImageView, JobSpec, MetricPoint
from outgrow.errors import ConflictError, NotFoundError, ValidationError
from outgrow.store import InstanceRecord, Store
from outgrow.store.engine import alembic_config, make_engine
from outgrow.store.models import Base, Event, Metric, Run
from waiting import wait_until

TABLES = {"users", "tokens", "images", "templates", "jobs", "runs", "instances", "events"}
TABLES |= {"metrics", "snapshots"}
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def db_url(path: Path) -> str:
    return f"sqlite:///{path}"


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def spec(name: str = "nb", **kw: object) -> JobSpec:
    return JobSpec(name=name, image="jupyter-lab", **kw)  # type: ignore[arg-type]


def instance(job_id: str, iid: str, started: datetime, **kw: object) -> InstanceRecord:
    fields: dict[str, object] = {
        "id": iid,
        "job_id": job_id,
        "provider": "local",
        "type": "m.large",
        "vcpus": 2.0,
        "memory_gib": 8.0,
        "spot": False,
        "price_per_hour": 0.1,
        "address": "198.18.0.2",
        "agent_url": "http://198.18.0.2:7070",
        "agent_token": "agent-secret",
        "started_at": started,
        "ended_at": None,
        "status": "starting",
    }
    fields.update(kw)
    return InstanceRecord(**fields)  # type: ignore[arg-type]


def point(t: float, used: int = 1 << 30, iid: str = "i-1") -> MetricPoint:
    return MetricPoint(
        t=t,
        instance_id=iid,
        mem_used_bytes=used,
        mem_cache_bytes=1 << 20,
        mem_swap_bytes=0,
        mem_limit_bytes=8 << 30,
        cpu_used_vcpus=0.5,
        cpu_quota_vcpus=2.0,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "outgrow.db"  # "data" does not exist yet: open creates it


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, db_path: Path) -> str:
    """A new database: a SQLite file, or a database on the session's PostgreSQL cluster."""
    if request.param == "sqlite":
        return db_url(db_path)
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store.open(store_url)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(db_path: Path) -> Iterator[Store]:
    """For the tests of SQLite itself (pragmas, BEGIN IMMEDIATE, the file's bytes)."""
    s = Store.open(db_url(db_path))
    yield s
    s.close()


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def scalar(store: Store, sql: str) -> object:
    with store._engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


@pytest.fixture
def alice(store: Store) -> int:
    return store.create_user("alice", "alice-pw").id


@pytest.fixture
def bob(store: Store) -> int:
    return store.create_user("bob", "bob-pw").id


# --- schema -------------------------------------------------------------------------------


def test_open_creates_schema_with_alembic(store: Store) -> None:
    assert tables(store._engine) >= TABLES | {"alembic_version"}
    assert scalar(store, "SELECT version_num FROM alembic_version") == head_revision()


def test_sqlite_file_is_created_in_wal_mode(sqlite_store: Store, db_path: Path) -> None:
    assert db_path.is_file()
    with sqlite3.connect(db_path) as raw:
        journal = raw.execute("PRAGMA journal_mode").fetchone()
    assert journal == ("wal",)  # WAL is persistent in the file


def test_migrations_match_the_models(store: Store) -> None:
    with store._engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_sqlite_pragmas_on_every_connection(sqlite_store: Store) -> None:
    store = sqlite_store
    conns = [store._engine.connect() for _ in range(3)]  # three pooled connections
    try:
        for conn in conns:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        for conn in conns:
            conn.close()


def test_writes_begin_immediate_and_reads_do_not(sqlite_store: Store) -> None:
    store = sqlite_store
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.startswith("BEGIN"):
            seen.append(statement)

    event.listen(store._engine, "before_cursor_execute", record)
    try:
        store.user_count()
        assert seen == ["BEGIN DEFERRED"]
        store.create_user("carol", "pw")
        assert seen == ["BEGIN DEFERRED", "BEGIN IMMEDIATE"]
    finally:
        event.remove(store._engine, "before_cursor_execute", record)


def test_reopen_keeps_data_and_does_not_migrate_again(store_url: str) -> None:
    s = Store.open(store_url)
    uid = s.create_user("alice", "pw").id
    job_id = s.create_job(uid, spec(), "jt")
    s.close()
    s = Store.open(store_url)
    try:
        job = s.get_job(job_id)
        assert job is not None and job.owner == "alice" and job.jupyter_token == "jt"
        assert s.check_password("alice", "pw") is not None
    finally:
        s.close()


def test_downgrade_to_base_and_upgrade_again(store_url: str) -> None:
    Store.open(store_url).close()
    cfg = alembic_config(store_url)  # env.py connects by itself here
    command.downgrade(cfg, "base")
    engine = make_engine(store_url)
    try:
        assert not tables(engine) & TABLES
    finally:
        engine.dispose()
    command.upgrade(cfg, "head")
    s = Store.open(store_url)
    try:
        assert s.user_count() == 0
    finally:
        s.close()


def test_upgrade_from_the_first_revision_to_head_on_an_empty_database(store_url: str) -> None:
    """Every revision in order, one ``alembic upgrade`` each, on a database with no tables:
    the schema at head is the models' (and Store.open finds nothing left to do)."""
    engine = make_engine(store_url)
    try:
        assert tables(engine) == set()
        cfg = alembic_config(store_url)
        revisions = [r.revision for r in ScriptDirectory.from_config(cfg).walk_revisions()]
        for rev in reversed(revisions):  # walk_revisions goes from head down
            command.upgrade(cfg, rev)
            with engine.connect() as conn:
                assert MigrationContext.configure(conn).get_current_revision() == rev
        assert revisions[0] == head_revision()
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
    finally:
        engine.dispose()
    s = Store.open(store_url)
    try:
        assert s.create_user("alice", "pw").id == 1
    finally:
        s.close()


def test_migration_renders_for_postgresql(capsys: pytest.CaptureFixture[str]) -> None:
    command.upgrade(alembic_config("postgresql://u@localhost/outgrow"), "head", sql=True)
    sql = capsys.readouterr().out
    live_names = "uq_jobs_owner_id_name_live ON jobs (owner_id, name) WHERE NOT deleted"
    assert f"CREATE UNIQUE INDEX {live_names}" in sql
    assert "TIMESTAMP WITH TIME ZONE" in sql and "BIGSERIAL" in sql
    assert "PRAGMA" not in sql and "deleted = 0" not in sql


def test_in_memory_url_works() -> None:
    s = Store.open("sqlite://")
    try:
        s.create_user("alice", "pw")
        assert s.user_count() == 1
    finally:
        s.close()


# --- users and tokens ---------------------------------------------------------------------


def test_users(store: Store) -> None:
    assert store.user_count() == 0
    admin = store.create_user("admin", "s3cret", is_admin=True)
    assert admin.is_admin and admin.name == "admin"
    assert admin.created_at.tzinfo is not None and admin.created_at.utcoffset() == timedelta(0)
    with pytest.raises(ConflictError, match="already exists"):
        store.create_user("admin", "other")
    with pytest.raises(ValidationError):
        store.create_user("bad name!", "pw")
    with pytest.raises(ValidationError):
        store.create_user("nopw", "")
    assert store.user_count() == 1
    got = store.get_user("admin")
    assert got is not None and got.id == admin.id and got.is_admin
    assert store.get_user("nobody") is None


def test_check_password(store: Store) -> None:
    store.create_user("alice", "correct horse")
    ok = store.check_password("alice", "correct horse")
    assert ok is not None and ok.name == "alice"
    assert store.check_password("alice", "wrong") is None
    assert store.check_password("alice", "") is None
    assert store.check_password("nobody", "correct horse") is None
    stored = scalar(store, "SELECT password_hash FROM users")
    assert re.fullmatch(r"scrypt\$[0-9a-f]{32}\$[0-9a-f]{64}", str(stored))
    # salted: the same password hashes differently for another user
    store.create_user("bob", "correct horse")
    assert scalar(store, "SELECT count(DISTINCT password_hash) FROM users") == 2


def test_token_secret_is_shown_once_and_only_its_hash_is_stored(
    sqlite_store: Store, db_path: Path
) -> None:
    store = sqlite_store
    alice = store.create_user("alice", "alice-pw").id
    view, secret = store.create_token(alice, "laptop")
    assert re.fullmatch(r"og_[A-Za-z0-9_-]{40}", secret)
    assert view.prefix == secret[:8] and view.name == "laptop" and not view.revoked
    assert view.last_used_at is None
    digest = hashlib.sha256(secret.encode()).hexdigest()
    store.close()  # checkpoint the WAL into the file
    blobs = b"".join(p.read_bytes() for p in db_path.parent.iterdir() if p.is_file())
    assert secret.encode() not in blobs
    assert secret[8:].encode() not in blobs
    assert digest.encode() in blobs


def test_user_for_token(store: Store, alice: int) -> None:
    view, secret = store.create_token(alice, "cli")
    assert store.list_tokens(alice)[0].last_used_at is None
    user = store.user_for_token(secret)
    assert user is not None and user.id == alice
    first = store.list_tokens(alice)[0].last_used_at
    assert first is not None and first.tzinfo is not None
    wait_until(
        lambda: datetime.now(UTC) > first,
        timeout=5,
        interval=0.001,
        what=f"the clock to pass the first use ({first})",
    )
    assert store.user_for_token(secret) is not None
    second = store.list_tokens(alice)[0].last_used_at
    assert second is not None and second > first
    assert store.user_for_token(secret + "x") is None
    assert store.user_for_token("og_" + "A" * 40) is None
    assert store.user_for_token("") is None
    assert store.user_for_token(view.prefix) is None


def test_revoke_token(store: Store, alice: int, bob: int) -> None:
    t1, s1 = store.create_token(alice, "one")
    _, s2 = store.create_token(alice, "two")
    tb, sb = store.create_token(bob, "bobs")
    with pytest.raises(NotFoundError):
        store.revoke_token(alice, tb.id)  # bob's token
    with pytest.raises(NotFoundError):
        store.revoke_token(alice, 9999)
    store.revoke_token(alice, t1.id)
    store.revoke_token(alice, t1.id)  # again: no error
    assert store.user_for_token(s1) is None
    assert store.user_for_token(s2) is not None
    assert store.user_for_token(sb) is not None
    tokens = store.list_tokens(alice)
    assert [(t.name, t.revoked) for t in tokens] == [("one", True), ("two", False)]
    assert [t.name for t in store.list_tokens(bob)] == ["bobs"]
    with pytest.raises(NotFoundError):
        store.create_token(9999, "ghost")
    with pytest.raises(ValidationError):
        store.create_token(alice, "")


# --- jobs ---------------------------------------------------------------------------------


def test_create_and_get_job(store: Store, alice: int) -> None:
    s = spec(cpu="2:8", mem="4:64", env={"A": "1"}, migrate_policy="[mem.upperBoundRatio=80]")
    job_id = store.create_job(alice, s, "jupyter-secret")
    assert re.fullmatch(r"j[0-9a-f]{10}", job_id)
    job = store.get_job(job_id)
    assert job is not None
    assert (job.id, job.name, job.owner_id, job.owner) == (job_id, "nb", alice, "alice")
    assert job.spec == s
    assert (job.status, job.run, job.jupyter_token) == ("Submitted", 1, "jupyter-secret")
    assert job.current_instance_id is None and job.exit_code is None
    assert job.created_at.tzinfo is not None and job.created_at == job.updated_at
    events = store.events(job_id)
    assert [(e.type, e.from_state, e.to_state, e.reason) for e in events] == [
        ("state", None, "Submitted", "submitted")
    ]
    assert store.get_job("jffffffffff") is None


def test_job_names_are_unique_per_owner(store: Store, alice: int, bob: int) -> None:
    a = store.create_job(alice, spec("train"), "t")
    with pytest.raises(ConflictError, match="train"):
        store.create_job(alice, spec("train"), "t")
    b = store.create_job(bob, spec("train"), "t")  # another owner: fine
    assert a != b
    assert len(store.list_jobs(None)) == 2
    with pytest.raises(NotFoundError):
        store.create_job(9999, spec("x"), "t")


def test_find_job(store: Store, alice: int, bob: int) -> None:
    a = store.create_job(alice, spec("train"), "t")
    b = store.create_job(bob, spec("train"), "t")
    only_b = store.create_job(bob, spec("solo"), "t")
    found = store.find_job(alice, a)
    assert found is not None and found.id == a
    found = store.find_job(alice, "train")
    assert found is not None and found.id == a
    found = store.find_job(bob, "train")
    assert found is not None and found.id == b
    assert store.find_job(alice, b) is None  # bob's job, by id
    assert store.find_job(alice, "solo") is None
    found = store.find_job(None, "solo")
    assert found is not None and found.id == only_b
    found = store.find_job(None, b)
    assert found is not None and found.owner == "bob"
    with pytest.raises(ConflictError, match="use the id"):
        store.find_job(None, "train")  # two owners have one
    assert store.find_job(None, "nope") is None


def test_list_jobs(store: Store, alice: int, bob: int) -> None:
    a1 = store.create_job(alice, spec("a1"), "t")
    a2 = store.create_job(alice, spec("a2"), "t")
    b1 = store.create_job(bob, spec("b1"), "t")
    store.set_status(a2, "Initializing", "scheduled")
    assert [j.id for j in store.list_jobs(None)] == [a1, a2, b1]
    assert [j.id for j in store.list_jobs(alice)] == [a1, a2]
    assert [j.id for j in store.list_jobs(bob)] == [b1]
    assert [j.id for j in store.list_jobs(None, ["Initializing"])] == [a2]
    assert [j.id for j in store.list_jobs(None, ["Submitted", "Initializing"])] == [a1, a2, b1]
    assert [j.id for j in store.list_jobs(bob, ["Initializing"])] == []
    assert store.list_jobs(None, []) == []
    with pytest.raises(ValidationError, match="unknown job state"):
        store.list_jobs(None, ["Running"])


def test_set_status_legal_and_illegal(store: Store, alice: int) -> None:
    job_id = store.create_job(alice, spec(), "t")
    for status in ("Initializing", "Starting", "Executing"):
        store.set_status(job_id, status, f"to {status}")
    job = store.get_job(job_id)
    assert job is not None and job.status == "Executing" and job.status_reason == "to Executing"
    assert job.updated_at > job.created_at
    with pytest.raises(ConflictError, match="cannot go from Executing to Submitted"):
        store.set_status(job_id, "Submitted", "nope")
    with pytest.raises(ConflictError, match=r"already Executing"):
        store.set_status(job_id, "Executing", "nope")
    with pytest.raises(ValidationError, match="unknown job state"):
        store.set_status(job_id, "Running", "nope")
    with pytest.raises(NotFoundError):
        store.set_status("jffffffffff", "Initializing", "nope")
    job = store.get_job(job_id)
    assert job is not None and job.status == "Executing"  # unchanged by the failures
    states = [(e.from_state, e.to_state) for e in store.events(job_id)]
    assert states == [
        (None, "Submitted"),
        ("Submitted", "Initializing"),
        ("Initializing", "Starting"),
        ("Starting", "Executing"),
    ]
    store.set_status(job_id, "Completed", "exit 0")
    with pytest.raises(ConflictError, match="use restart"):
        store.set_status(job_id, "Submitted", "again")


def test_set_status_returns_the_state_left(store: Store, alice: int) -> None:
    job_id = store.create_job(alice, spec(), "t")
    assert store.set_status(job_id, "Cancelling", "user") == "Submitted"
    assert store.set_status(job_id, "Cancelled", "done") == "Cancelling"
    job = store.get_job(job_id)
    assert job is not None and job.status == "Cancelled"
    assert len(store.events(job_id)) == 3


def runs(store: Store, job_id: str) -> list[tuple[int, str, bool]]:
    with store._engine.connect() as conn:
        rows = conn.execute(select(Run).where(Run.job_id == job_id).order_by(Run.number))
        return [(r.number, r.status, r.ended_at is not None) for r in rows]


def test_restart(store: Store, alice: int) -> None:
    job_id = store.create_job(alice, spec(), "t")
    with pytest.raises(ConflictError, match="has not finished"):
        store.restart_job(job_id)
    for status in ("Initializing", "Starting", "Executing"):
        store.set_status(job_id, status, "go")
    store.update_job(job_id, exit_code=1, current_instance_id="i-1", checkpoint_dir="/c")
    store.set_status(job_id, "FailToComplete", "exit 1")
    assert runs(store, job_id) == [(1, "FailToComplete", True)]
    assert store.restart_job(job_id) == 2
    job = store.get_job(job_id)
    assert job is not None
    assert (job.run, job.status, job.status_reason) == (2, "Submitted", "restart")
    assert job.exit_code is None and job.current_instance_id is None
    assert job.checkpoint_dir is None
    last = store.events(job_id)[-1]
    assert (last.type, last.from_state, last.to_state, last.reason) == (
        "state",
        "FailToComplete",
        "Submitted",
        "restart",
    )
    assert last.data == {"run": 2}
    assert runs(store, job_id) == [(1, "FailToComplete", True), (2, "Submitted", False)]
    store.set_status(job_id, "Cancelled", "user")
    assert store.restart_job(job_id) == 3
    assert runs(store, job_id)[1:] == [(2, "Cancelled", True), (3, "Submitted", False)]


def test_update_job(store: Store, alice: int) -> None:
    job_id = store.create_job(alice, spec(), "t")
    new_spec = spec(migrate_policy="[mem.upperBoundRatio=70]", vm_policy="[onDemand=true]")
    store.update_job(
        job_id,
        spec=new_spec,
        current_instance_id="i-9",
        exit_code=0,
        checkpoint_dir="/var/lib/outgrow/ckpt",
        last_migration_at=1714564800.5,
        status_reason="policy",
    )
    job = store.get_job(job_id)
    assert job is not None
    assert job.spec == new_spec and job.spec.migrate().mem.upper_bound_ratio == 70
    assert (job.current_instance_id, job.exit_code) == ("i-9", 0)
    assert (job.checkpoint_dir, job.last_migration_at) == ("/var/lib/outgrow/ckpt", 1714564800.5)
    assert job.status_reason == "policy" and job.status == "Submitted"
    store.update_job(job_id, current_instance_id=None)
    job = store.get_job(job_id)
    assert job is not None and job.current_instance_id is None
    with pytest.raises(TypeError, match="status"):
        store.update_job(job_id, status="Executing")
    with pytest.raises(ValidationError):
        store.update_job(job_id, spec=spec("renamed"))
    with pytest.raises(NotFoundError):
        store.update_job("jffffffffff", exit_code=1)


def test_delete_job_frees_the_name(store: Store, alice: int) -> None:
    job_id = store.create_job(alice, spec("nb"), "t")
    with pytest.raises(ConflictError, match="cancel it first"):
        store.delete_job(job_id)
    store.set_status(job_id, "Cancelled", "user")
    store.delete_job(job_id)
    assert store.get_job(job_id) is None
    assert store.find_job(alice, "nb") is None
    assert store.list_jobs(alice) == []
    again = store.create_job(alice, spec("nb"), "t")  # the name is free again
    found = store.find_job(alice, "nb")
    assert found is not None and found.id == again


# --- events -------------------------------------------------------------------------------


def test_events(store: Store, alice: int, bob: int) -> None:
    job_id = store.create_job(alice, spec(), "t")
    other = store.create_job(bob, spec(), "t")
    mig = store.add_event(
        job_id,
        "migration",
        "mem.upperBoundRatio",
        from_type="m.large",
        to_type="m.xlarge",
        downtime_s=1.25,
        checkpoint_bytes=5 << 30,
        attempt=1,
    )
    assert (mig.type, mig.reason, mig.from_type, mig.to_type) == (
        "migration",
        "mem.upperBoundRatio",
        "m.large",
        "m.xlarge",
    )
    assert (mig.downtime_s, mig.checkpoint_bytes) == (1.25, 5 << 30)
    assert mig.data == {"attempt": 1}
    assert mig.time.tzinfo is not None
    info = store.add_event(job_id, "info", "note", from_state="Executing", to_state="Executing")
    store.add_event(other, "info", "bob's")
    events = store.events(job_id)
    assert [e.type for e in events] == ["state", "migration", "info"]
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert events[1] == mig
    assert (events[2].from_state, events[2].to_state) == ("Executing", "Executing")
    assert [e.id for e in store.events(job_id, since_id=mig.id)] == [info.id]
    assert store.events(job_id, since_id=info.id) == []
    assert [e.reason for e in store.events(other)] == ["submitted", "bob's"]
    with pytest.raises(ValidationError):
        store.add_event(job_id, "info", "bad", when=datetime.now(UTC))
    with pytest.raises(NotFoundError):
        store.add_event("jffffffffff", "info", "x")


# --- instances ----------------------------------------------------------------------------


def test_instances(store: Store, alice: int) -> None:
    job_id = store.create_job(alice, spec(), "t")
    other = store.create_job(alice, spec("other"), "t")
    first = instance(job_id, "i-1", T0)
    store.add_instance(job_id, first)
    store.add_instance(job_id, instance(job_id, "i-2", T0 + timedelta(hours=1), spot=True))
    store.add_instance(other, instance(other, "i-3", T0 + timedelta(minutes=5)))
    with pytest.raises(ConflictError):
        store.add_instance(job_id, first)
    with pytest.raises(ValidationError):
        store.add_instance(job_id, instance(job_id, "i-4", T0, status="running"))
    with pytest.raises(ValidationError):
        store.add_instance(other, instance(job_id, "i-5", T0))
    with pytest.raises(NotFoundError):
        store.add_instance("jffffffffff", instance("jffffffffff", "i-6", T0))
    assert store.instances(job_id)[0] == first

    # an aware time in another zone comes back as the same instant, in UTC
    plus2 = timezone(timedelta(hours=2))
    store.update_instance(
        "i-1", status="migrated-from", ended_at=datetime(2024, 5, 1, 15, 0, tzinfo=plus2)
    )
    store.update_instance("i-2", status="normal", address="198.18.0.9")
    hist = store.instances(job_id)
    assert [(i.id, i.status) for i in hist] == [("i-1", "migrated-from"), ("i-2", "normal")]
    ended = hist[0].ended_at
    assert ended == T0 + timedelta(hours=1) and ended.tzinfo == UTC
    assert hist[1].spot and hist[1].address == "198.18.0.9"
    assert hist[1].agent_token == "agent-secret"
    assert [i.id for i in store.live_instances()] == ["i-3", "i-2"]
    with pytest.raises(NotFoundError):
        store.update_instance("i-404", status="released")
    with pytest.raises(TypeError):
        store.update_instance("i-2", vcpus=4)
    with pytest.raises(ValidationError):
        store.update_instance("i-2", status="gone")


# --- metrics ------------------------------------------------------------------------------


def test_metrics(store: Store, alice: int) -> None:
    job_id = store.create_job(alice, spec(), "t")
    other = store.create_job(alice, spec("other"), "t")
    big = 96 << 30  # above 32 bits
    store.add_metrics(job_id, [point(110.0), point(100.0, used=big), point(120.0, iid="i-2")])
    store.add_metrics(other, [point(105.0)])
    store.add_metrics(job_id, [])
    pts = store.metrics(job_id, None, None)
    assert [p.t for p in pts] == [100.0, 110.0, 120.0]
    assert pts[0].mem_used_bytes == big and pts[0] == point(100.0, used=big)
    assert [p.t for p in store.metrics(job_id, 110.0, None)] == [110.0, 120.0]
    assert [p.t for p in store.metrics(job_id, None, 110.0)] == [100.0, 110.0]
    assert [p.t for p in store.metrics(job_id, 101.0, 119.0)] == [110.0]
    assert store.metrics(job_id, 121.0, None) == []
    assert store.prune_metrics(110.0) == 2  # 100 of job_id, 105 of other
    assert [p.t for p in store.metrics(job_id, None, None)] == [110.0, 120.0]
    assert store.metrics(other, None, None) == []
    assert store.prune_metrics(0.0) == 0
    with pytest.raises(NotFoundError):
        store.add_metrics("jffffffffff", [point(1.0)])


# --- templates and images -----------------------------------------------------------------


def test_templates(store: Store, alice: int, bob: int) -> None:
    s1 = spec("nb", cpu="2")
    t = store.save_template(alice, "small", s1)
    assert (t.name, t.owner, t.spec) == ("small", "alice", s1)
    with pytest.raises(ConflictError):
        store.save_template(alice, "small", spec("x"))
    with pytest.raises(ValidationError):
        store.save_template(alice, "no spaces", s1)
    store.save_template(bob, "small", spec("bob-nb"))
    store.save_template(alice, "big", spec("nb", mem="64"))
    got = store.get_template(alice, "small")
    assert got is not None and got.id == t.id and got.spec == s1
    got = store.get_template(bob, "small")
    assert got is not None and got.owner == "bob"
    assert store.get_template(bob, "big") is None
    found = store.get_template(None, "big")
    assert found is not None and found.owner == "alice"
    with pytest.raises(ConflictError):
        store.get_template(None, "small")  # two owners
    assert [x.name for x in store.list_templates(alice)] == ["big", "small"]
    assert [(x.name, x.owner) for x in store.list_templates(None)] == [
        ("big", "alice"),
        ("small", "alice"),
        ("small", "bob"),
    ]
    store.delete_template(alice, "small")
    with pytest.raises(NotFoundError):
        store.delete_template(alice, "small")
    assert store.get_template(alice, "small") is None
    store.delete_template(None, "small")  # only bob's is left: unambiguous
    assert store.list_templates(bob) == []


def test_images(store: Store, alice: int) -> None:
    builtin = ImageView(
        name="jupyter-lab",
        kind="jupyter",
        pip=["jupyterlab"],
        description="JupyterLab",
        default_port=8888,
        builtin=True,
    )
    assert store.add_image(builtin, None) == builtin
    mine = ImageView(name="pandas", kind="jupyter", pip=["pandas", "pyarrow"], base="jupyter-lab")
    added = store.add_image(mine, alice)
    assert added.owner == "alice" and added.pip == ["pandas", "pyarrow"]
    with pytest.raises(ConflictError):
        store.add_image(mine, alice)
    with pytest.raises(ValidationError):
        store.add_image(ImageView(name="bad name", kind="batch", pip=[]), None)
    with pytest.raises(NotFoundError):
        store.add_image(ImageView(name="ghost", kind="batch", pip=[]), 9999)
    assert store.get_image("pandas") == added
    assert store.get_image("nope") is None
    assert [i.name for i in store.list_images()] == ["jupyter-lab", "pandas"]
    store.delete_image("pandas")
    with pytest.raises(NotFoundError):
        store.delete_image("pandas")
    assert [i.name for i in store.list_images()] == ["jupyter-lab"]


def test_oci_images(store: Store, alice: int) -> None:
    digest = "sha256:" + "ab" * 32
    oci = ImageView(
        name="nb",
        kind="python",
        pip=[],
        description="a notebook image",
        default_port=8888,
        format="oci",
        oci={"digest": digest, "reference": "nb.tar"},
        size_bytes=123_456_789_012,
        config={"cmd": ["jupyter", "server"], "exposed_ports": ["8888/tcp"]},
        labels={"org.opencontainers.image.description": "a notebook image"},
    )
    added = store.add_image(oci, alice)
    assert added == oci.model_copy(update={"owner": "alice"})
    assert added.digest == digest
    store.set_image_facts("nb", {"has_sh": True, "found": {"jupyter": "/usr/bin/jupyter"}})
    got = store.get_image("nb")
    assert got is not None and got.facts == {
        "has_sh": True,
        "found": {"jupyter": "/usr/bin/jupyter"},
    }
    with pytest.raises(NotFoundError):
        store.set_image_facts("nope", {})
    venv = store.add_image(ImageView(name="plain", kind="python", pip=["six"]), alice)
    assert venv.format == "venv" and venv.oci is None and venv.labels == {}


def test_upgrade_from_0001_keeps_venv_images(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    command.upgrade(alembic_config(url), "0001")
    with sqlite3.connect(tmp_path / "old.db") as raw:
        raw.execute(
            "INSERT INTO images (name, kind, pip, description, docs, builtin, created_at) "
            "VALUES ('old', 'python', '[\"six\"]', '', '', 0, '2026-01-01 00:00:00')"
        )
    store = Store.open(url)
    try:
        old = store.get_image("old")
        assert old is not None and old.format == "venv" and old.pip == ["six"]
    finally:
        store.close()


# --- concurrency --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_concurrent_writers(store: Store) -> None:
    threads, per_thread = 8, 20
    uid = store.create_user("alice", "pw").id
    _, secret = store.create_token(uid, "t")
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []
    created: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                job_id = store.create_job(uid, spec(f"w{n}-{i}"), "t")
                with lock:
                    created.append(job_id)
                store.set_status(job_id, "Initializing", "scheduled")
                assert store.user_for_token(secret) is not None  # a write too
                store.set_status(job_id, "Starting", "up")
                store.add_event(job_id, "info", "tick", n=n)
                store.set_status(job_id, "Executing", "running")
                store.add_metrics(job_id, [point(float(i))])
                assert store.find_job(uid, f"w{n}-{i}") is not None
                assert store.list_jobs(uid, ["Executing"])
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    jobs = store.list_jobs(uid)
    assert len(jobs) == len(set(created)) == threads * per_thread
    assert {j.status for j in jobs} == {"Executing"}
    with store._engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Event)) == 5 * len(jobs)
        assert conn.scalar(select(func.count()).select_from(Metric)) == len(jobs)
