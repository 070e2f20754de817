"""The control plane on a real PostgreSQL 15 (a throwaway cluster, tests/pg.py), for real:
a real `outgrow up` with OUTGROW_DATABASE_URL and the local provider runs a batch job
through its whole life (Executing, a live move, Completed); a database that is down at
start is waited for (bounded, one line per try, then a one-line error without the
password); a database that goes away mid-run makes requests answer 503 with a JSON error,
the job runs on, and everything recovers by itself when the database is back, nothing lost.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

import pg as pgmod
from conftest import free_pool, leftovers, make_settings, unique_prefix
from cp_server import ServerProcess, free_port
from outgrow.providers.local.provider import LocalProvider
from waiting import wait_for_value, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

# Prints a counter until the file `stop` appears in its $HOME (home/ in its job directory),
# then exits 0.
COUNTER = """
import os, time
stop = os.path.join(os.environ["HOME"], "stop")
i = 0
while not os.path.exists(stop):
    i += 1
    print(i, flush=True)
    time.sleep(0.05)
print("done", flush=True)
"""


@pytest.fixture
def cluster() -> Iterator[pgmod.PgCluster]:
    """A cluster of the test's own: the tests stop and start it."""
    why = pgmod.unavailable()
    if why:
        pytest.skip(why)
    c = pgmod.cluster()
    yield c
    c.destroy()


def server(tmp: Path, url: str, **env: str) -> ServerProcess:
    prefix = unique_prefix()
    extra = {"OUTGROW_DATABASE_URL": url, **env}
    return ServerProcess(tmp, prefix, free_port(), free_pool(prefix), extra_env=extra, cli=True)


class Api:
    def __init__(self, srv: ServerProcess):
        self.srv = srv
        self.h = {"Authorization": f"Bearer {srv.token()}"}

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.srv.api + path, headers=self.h, timeout=15)

    def post(self, path: str, body: Any = None) -> httpx.Response:
        return httpx.post(self.srv.api + path, headers=self.h, json=body, timeout=30)

    def job(self, ref: str) -> dict[str, Any]:
        r = self.get(f"/jobs/{ref}")
        r.raise_for_status()
        j: dict[str, Any] = r.json()
        return j

    def wait(self, ref: str, statuses: set[str], timeout: float = 180) -> dict[str, Any]:
        return wait_for_value(
            lambda: self.job(ref),
            lambda j: j["status"] in statuses,
            timeout=timeout,
            interval=0.2,
            what=f"job {ref} to be {' or '.join(sorted(statuses))}",
            context=lambda: self.srv.log()[-3000:],
        )

    def submit_counter(self, name: str) -> str:
        r = self.post(
            "/jobs",
            {"name": name, "image": "python", "script": COUNTER, "mem": "0.25", "cpu": "0.25"},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


def printed(tmp: Path, ref: str) -> list[str]:
    """The job's stdout as the control plane keeps it (read on the host)."""
    path = tmp / "jobs" / ref / "logs" / "stdout.log"
    return path.read_text().split() if path.exists() else []


def counted(tmp: Path, ref: str) -> int:
    out = [x for x in printed(tmp, ref) if x.isdigit()]
    return int(out[-1]) if out else 0


def finish(api: Api, tmp: Path, ref: str) -> dict[str, Any]:
    (tmp / "jobs" / ref / "home" / "stop").write_text("")  # the job's $HOME
    return api.wait(ref, {"Completed", "FailToComplete"}, timeout=120)


def stop_server(srv: ServerProcess) -> None:
    """Stop it, then remove what `outgrow up` leaves for the next start (the bridge)."""
    srv.stop()
    settings = make_settings(srv.tmp, srv.prefix, address_pool=srv.pool)
    LocalProvider(settings).teardown()
    left = leftovers(srv.prefix)
    assert left == [], left


def test_batch_job_lifecycle_on_postgresql(tmp_path: Path, cluster: pgmod.PgCluster) -> None:
    url = cluster.create_database()
    srv = server(tmp_path, url)
    srv.start()
    try:
        api = Api(srv)
        ref = api.submit_counter("etl")
        first = api.wait(ref, {"Executing"})["instance"]
        wait_until(lambda: counted(tmp_path, ref) >= 10, timeout=60, what="the job to print")

        r = api.post(f"/jobs/{ref}/migrate", {"mem": 0.5})
        assert r.status_code == 202, r.text
        moved = wait_for_value(
            lambda: api.job(ref),
            lambda j: (
                j["status"] == "Executing" and any(e["type"] == "migration" for e in j["events"])
            ),
            timeout=180,
            interval=0.2,
            what=f"job {ref} to move and run again",
            context=lambda: srv.log()[-3000:],
        )
        assert moved["instance"]["id"] != first["id"]
        assert moved["instance"]["memory_gib"] == 0.5
        at = counted(tmp_path, ref)
        wait_until(
            lambda: counted(tmp_path, ref) > at + 5,
            timeout=60,
            what="the moved job to print on",
        )

        done = finish(api, tmp_path, ref)
        assert done["status"] == "Completed" and done["exit_code"] == 0, done["status_reason"]
        # The log is kept on the host once the job's volume lets go of it (just after the end).
        out = wait_for_value(
            lambda: printed(tmp_path, ref),
            lambda out: bool(out) and out[-1] == "done",
            timeout=30,
            what="the ended job's kept log to end with 'done'",
        )
        numbers = [int(x) for x in out[:-1]]
        assert numbers == list(range(1, len(numbers) + 1)), "restarted or duplicated"

        # It is all in PostgreSQL (and there is no SQLite file beside it).
        assert not (tmp_path / "outgrow.db").exists()
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            with engine.connect() as conn:
                status = conn.execute(
                    text("SELECT status FROM jobs WHERE id = :id"), {"id": ref}
                ).scalar()
                kinds = conn.execute(
                    text("SELECT type, count(*) FROM events WHERE job_id = :id GROUP BY type"),
                    {"id": ref},
                ).all()
                samples = conn.execute(
                    text("SELECT count(*) FROM metrics WHERE job_id = :id"), {"id": ref}
                ).scalar()
        finally:
            engine.dispose()
        assert status == "Completed"
        assert dict(kinds)["migration"] == 1 and samples
    finally:
        stop_server(srv)


def test_up_gives_up_on_a_database_that_stays_down(tmp_path: Path) -> None:
    password = "s3cret-pw-xyz"
    port = free_port()  # nothing listens there: a PostgreSQL that is down
    url = f"postgresql://outgrow:{password}@127.0.0.1:{port}/outgrow"
    srv = server(tmp_path, url, OUTGROW_DATABASE_WAIT_S="2")
    t0 = time.monotonic()
    srv.start(wait=False)
    assert srv.proc.wait(60) == 1
    assert time.monotonic() - t0 >= 2  # it retried for the time it was given
    lines = srv.log().splitlines()
    shown = f"postgresql+psycopg://outgrow:***@127.0.0.1:{port}/outgrow"
    assert lines and all(ln.startswith("outgrow: ") for ln in lines), lines
    retries = [ln for ln in lines if "retrying" in ln]
    assert retries and all(shown in ln for ln in retries), lines
    assert lines[-1].startswith(f"outgrow: error: cannot reach the database {shown}: ")
    assert lines[-1].endswith("(gave up after 2 s; OUTGROW_DATABASE_WAIT_S)")
    assert "Traceback" not in srv.log() and password not in srv.log()
    assert leftovers(srv.prefix) == []  # it gave up before creating anything


def test_up_waits_for_a_database_that_starts_later(
    tmp_path: Path, cluster: pgmod.PgCluster
) -> None:
    url = cluster.create_database()
    cluster.stop()
    srv = server(tmp_path, url, OUTGROW_DATABASE_WAIT_S="120")
    srv.start(wait=False)
    try:
        wait_until(
            lambda: "retrying" in srv.log(),
            timeout=60,
            what="outgrow up to say it is waiting for the database",
            context=srv.log,
        )
        assert srv.proc.poll() is None
        cluster.start()
        srv.wait_healthy(timeout=60)
        assert Api(srv).get("/jobs").json() == []
        log = srv.log()
        assert "Traceback" not in log and cluster.password not in log
        assert f"outgrow:***@127.0.0.1:{cluster.port}/" in log
    finally:
        stop_server(srv)


def test_database_outage_mid_run(tmp_path: Path, cluster: pgmod.PgCluster) -> None:
    srv = server(tmp_path, cluster.create_database())
    srv.start()
    try:
        api = Api(srv)
        ref = api.submit_counter("survivor")
        inst = api.wait(ref, {"Executing"})["instance"]["id"]
        wait_until(
            lambda: len(api.get(f"/jobs/{ref}/metrics").json()["points"]) >= 2,
            timeout=60,
            what="the scheduler to store samples",
        )

        cluster.stop()
        down_at = time.time()
        r = api.get("/jobs")
        assert r.status_code == 503, r.text
        assert r.json() == {
            "error": "store_unavailable",
            "message": "the control plane's database is unavailable; try again shortly",
        }
        assert r.headers["retry-after"] == "5"
        for path in (f"/jobs/{ref}", f"/jobs/{ref}/events"):
            assert api.get(path).status_code == 503
        assert api.post(f"/jobs/{ref}/migrate", {"mem": 0.5}).status_code == 503
        metrics = httpx.get(f"http://127.0.0.1:{srv.port}/metrics", headers=api.h, timeout=15)
        assert metrics.status_code == 503 and metrics.json()["error"] == "store_unavailable"
        assert api.get("/health").status_code == 200  # the process itself is fine
        cli = subprocess.run(
            [sys.executable, "-m", "outgrow.cli", "ls"],
            env={**srv.env(), "OUTGROW_URL": srv.api.removesuffix("/api/v1"),
                 "OUTGROW_TOKEN": api.h["Authorization"].split()[1]},
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert cli.returncode == 1 and cli.stdout == ""
        assert cli.stderr == (
            "outgrow: error: the control plane's database is unavailable; try again shortly\n"
        )
        # the job runs on meanwhile
        at = counted(tmp_path, ref)
        wait_until(
            lambda: counted(tmp_path, ref) > at + 40,  # > 2 s of output
            timeout=60,
            what="the job to print on while the database is down",
        )

        cluster.start()
        up_at = time.time()
        back = wait_for_value(
            lambda: api.get(f"/jobs/{ref}"),
            lambda r: r.status_code == 200,
            timeout=60,
            what="the API to answer again",
        ).json()
        assert back["status"] == "Executing" and back["instance"]["id"] == inst
        # the scheduler resumes, and the samples of the outage were fetched again
        points = wait_for_value(
            lambda: api.get(f"/jobs/{ref}/metrics").json()["points"],
            lambda ps: any(p["t"] > up_at + 1 for p in ps),
            timeout=60,
            what="samples taken after the database came back",
        )
        during = [p["t"] for p in points if down_at + 1 < p["t"] < up_at - 1]
        assert len(during) >= int(up_at - down_at) - 4, (down_at, up_at, during)

        done = finish(api, tmp_path, ref)  # the scheduler notices the end: it is back
        assert done["status"] == "Completed" and done["exit_code"] == 0
        numbers = [int(x) for x in printed(tmp_path, ref)[:-1]]
        assert numbers == list(range(1, len(numbers) + 1))
        log = srv.log()
        assert "scheduler paused: the control plane's database is unavailable" in log
        assert "the database is back: the scheduler resumes" in log
        assert "Traceback" not in log, log[-5000:]
        assert cluster.password not in log
    finally:
        stop_server(srv)
