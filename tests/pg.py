"""A throwaway PostgreSQL cluster for tests: Debian's PostgreSQL 15 (``scripts/setup.sh``
installs it), ``initdb`` into a fresh temporary directory, ``pg_ctl`` on a random port of
127.0.0.1 (its unix socket in that directory too), run as the unprivileged ``postgres``
user when the tests run as root (PostgreSQL refuses to run as root), removed at the end.

Password authentication over TCP (scram-sha-256), as a control plane would connect; the
superuser ``outgrow`` owns every database a test creates. ``stop()``/``start()`` keep the
port, so a test can take the database away from a running control plane and bring it back.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

PG_BIN = Path(os.environ.get("OUTGROW_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
RUN_AS = "postgres"  # the Debian package's system user
USER = "outgrow"


def unavailable() -> str | None:
    """Why no cluster can be started here (None: it can)."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL not installed ({PG_BIN}/initdb missing); run `make setup`"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"no {RUN_AS!r} user to run PostgreSQL as (root may not); run `make setup`"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    def __init__(self) -> None:
        # Under /tmp, not pytest's tmp_path: that is 0700 root, which `postgres` cannot enter.
        self.dir = Path(tempfile.mkdtemp(prefix="outgrow-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            self._as = {"user": RUN_AS, "group": RUN_AS}
            shutil.chown(self.dir, RUN_AS, RUN_AS)

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PG_BIN / tool), *args],
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=120,
            **self._as,
        )

    def init(self) -> PgCluster:
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as:
            shutil.chown(pwfile, RUN_AS, RUN_AS)
        pwfile.chmod(0o600)
        r = self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",  # a throwaway cluster: no fsync of the new files
        )
        pwfile.unlink()
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr.strip() or r.stdout.strip()}")
        return self

    def start(self, port: int | None = None) -> PgCluster:
        """Start (``pg_ctl -w``: returns once it accepts connections); a random free port
        the first time, the same one again after :meth:`stop`."""
        tries = 1 if port or self.port else 3
        for _ in range(tries):
            self.port = port or self.port or _free_port()
            options = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 "
                f"-c unix_socket_directories={self.dir} -c fsync=off -c max_connections=60"
            )
            r = self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                "-o", options, "start",
            )  # fmt: skip
            if r.returncode == 0:
                return self
            if "already in use" not in self.log_tail() or tries == 1:
                break
            self.port = 0  # someone took the port meanwhile: another one
        raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()}\n{self.log_tail()}")

    def stop(self) -> None:
        """Fast shutdown: open sessions are cut, as when a database server goes away."""
        r = self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed: {r.stderr.strip()}\n{self.log_tail()}")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status").returncode == 0

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def url(self, database: str = "postgres", password: bool = True) -> str:
        """A SQLAlchemy URL as OUTGROW_DATABASE_URL takes it (no driver: outgrow adds it)."""
        secret = f":{self.password}" if password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=USER,
            password=self.password,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(sql.encode())

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = "og_" + secrets.token_hex(6)
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database of :meth:`create_database` (its sessions are cut)."""
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def destroy(self) -> None:
        if self.data.exists() and self.running():
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def cluster() -> PgCluster:
    """A new cluster, started (the caller destroys it)."""
    c = PgCluster()
    try:
        return c.init().start()
    except BaseException:
        c.destroy()
        raise
