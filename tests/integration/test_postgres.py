"""The store on a real PostgreSQL 15 (a throwaway cluster, tests/pg.py): what SQLite cannot
show — row locks (``SELECT … FOR UPDATE``) serialising concurrent writers of one job,
unique-index races between sessions — and a database that goes away and comes back.
The rest of the store's suite runs on PostgreSQL too (tests/unit/test_store.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text

import pg as pgmod
from outgrow.domain.jobs import JobSpec
from outgrow.errors import ConflictError, StoreUnavailable
from outgrow.store import Store
from outgrow.store.engine import make_engine
from waiting import wait_until


@pytest.fixture
def store(pg_url: str) -> Iterator[Store]:
    s = Store.open(pg_url)
    yield s
    s.close()


@pytest.fixture
def own_pg() -> Iterator[pgmod.PgCluster]:
    """A cluster of the test's own, which it may stop and start."""
    why = pgmod.unavailable()
    if why:
        pytest.skip(why)
    cluster = pgmod.cluster()
    yield cluster
    cluster.destroy()


def executing_job(store: Store, name: str = "nb") -> str:
    user = store.get_user("alice") or store.create_user("alice", "pw")
    job_id = store.create_job(user.id, JobSpec(name=name, image="python", script="1"), "t")
    for status in ("Initializing", "Starting", "Executing"):
        store.set_status(job_id, status, "go")
    return job_id


def race(n: int, fn: Callable[[int], Any]) -> list[object]:
    """``fn(i)`` in ``n`` threads released together; each one's result or exception."""
    barrier = threading.Barrier(n)
    out: list[object] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_urls_get_the_psycopg_driver_and_a_connect_timeout(pg_url: str) -> None:
    assert pg_url.startswith("postgresql://")
    engine = make_engine(pg_url)
    try:
        assert engine.url.drivername == "postgresql+psycopg"
        assert engine.dialect.name == "postgresql"
        with engine.connect() as conn:
            assert conn.execute(text("SHOW server_version")).scalar().startswith("15.")
    finally:
        engine.dispose()


def test_a_status_write_waits_for_the_job_row_lock(store: Store) -> None:
    """set_status reads the job with SELECT … FOR UPDATE: while another transaction holds
    the row, it waits, then decides on what that transaction committed (here: the job is
    already Floating, so a second move to Floating is refused, not recorded twice)."""
    job_id = executing_job(store)
    got: dict[str, object] = {}

    def write() -> None:
        try:
            got["left"] = store.set_status(job_id, "Floating", "policy")
        except Exception as exc:
            got["error"] = exc

    def lock_waiters() -> int:
        # a new transaction each time: pg_stat_activity is a snapshot per transaction
        with store._engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()"
                    )
                ).scalar_one()
            )

    with store._engine.connect() as holder:
        tx = holder.begin()
        holder.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
        writer = threading.Thread(target=write)
        writer.start()
        wait_until(lock_waiters, timeout=30, what="the store's write to wait on the job's row lock")
        assert got == {}  # still waiting
        holder.execute(text("UPDATE jobs SET status = 'Floating' WHERE id = :id"), {"id": job_id})
        tx.commit()
    writer.join(30)
    assert isinstance(got.get("error"), ConflictError), got
    assert "already Floating" in str(got["error"])
    job = store.get_job(job_id)
    assert job is not None and job.status == "Floating"
    assert [e.to_state for e in store.events(job_id)].count("Floating") == 0


@pytest.mark.slow
def test_concurrent_moves_of_one_job_one_wins(store: Store) -> None:
    job_id = executing_job(store)
    results = race(8, lambda i: store.set_status(job_id, "Floating", f"writer {i}"))
    won = [r for r in results if r == "Executing"]
    lost = [r for r in results if isinstance(r, ConflictError)]
    assert (len(won), len(lost)) == (1, 7), results
    moves = [e for e in store.events(job_id) if e.to_state == "Floating"]
    assert len(moves) == 1 and moves[0].from_state == "Executing"


@pytest.mark.slow
def test_concurrent_duplicate_names_one_wins(store: Store) -> None:
    uid = store.create_user("alice", "pw").id
    results = race(8, lambda i: store.create_job(uid, JobSpec(name="same", image="python"), "t"))
    ids = [r for r in results if isinstance(r, str)]
    conflicts = [r for r in results if isinstance(r, ConflictError)]
    assert (len(ids), len(conflicts)) == (1, 7), results
    assert [j.id for j in store.list_jobs(uid)] == ids


def test_a_database_that_goes_away_is_unavailable_then_comes_back(
    own_pg: pgmod.PgCluster,
) -> None:
    url = own_pg.create_database()
    store = Store.open(url)
    try:
        job_id = executing_job(store)
        store.add_event(job_id, "info", "before")
        own_pg.stop()
        with pytest.raises(StoreUnavailable) as caught:
            store.get_job(job_id)
        exc = caught.value
        assert exc.message == "the control plane's database is unavailable; try again shortly"
        assert exc.code == "store_unavailable"
        assert exc.detail is not None and f"127.0.0.1:{own_pg.port}" in exc.detail
        assert own_pg.password not in exc.detail and ":***@" in exc.detail
        with pytest.raises(StoreUnavailable):
            store.add_event(job_id, "info", "while down")
        own_pg.start()
        # the pool's connections died with the server: pre-ping replaces them
        job = store.get_job(job_id)
        assert job is not None and job.status == "Executing"
        store.add_event(job_id, "info", "after")
        assert [e.reason for e in store.events(job_id) if e.type == "info"] == [
            "before",
            "after",
        ]
    finally:
        store.close()


def test_opening_a_database_that_is_down_names_the_url_without_the_password(
    own_pg: pgmod.PgCluster,
) -> None:
    url = own_pg.create_database()
    own_pg.stop()
    with pytest.raises(StoreUnavailable) as caught:
        Store.open(url)
    msg = caught.value.message
    assert msg.startswith(
        f"cannot reach the database postgresql+psycopg://outgrow:***@127.0.0.1:{own_pg.port}/"
    )
    assert "Connection refused" in msg
    assert own_pg.password not in msg and "\n" not in msg
