"""One control plane per data dir: ``outgrow up`` holds ``<data_dir>/control-plane.lock``
(``fcntl.flock``, with its pid inside) for as long as it runs.

A second ``outgrow up`` on the same data dir would share its database and instances and
sweep them as its own; it refuses instead, naming the first. ``outgrow cleanup`` refuses
too while a control plane runs there: its instances are not leftovers. (Control planes
with *different* data dirs run side by side on one host: see providers/local/hoststate.py.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from outgrow.errors import ConflictError

LOCK_NAME = "control-plane.lock"


class DataDirLock:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def _pid_in_file(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            return str(int(self.path.read_text().strip()))
        return "unknown"

    def holder(self) -> str | None:
        """The pid of the control plane running on the data dir, None when none does."""
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self._pid_in_file()
        finally:
            os.close(fd)  # also drops a lock we got
        return None

    def acquire(self) -> None:
        """Hold the lock (until release or exit); ConflictError naming the holder."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConflictError(
                f"another control plane (pid {self._pid_in_file()}) already runs on data dir "
                f"{self.data_dir}: stop it first, or use another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def refuse_missing_database(data_dir: Path, db_path: Path) -> None:
    """ConflictError if the SQLite database is gone while instances of an earlier run are
    still in the data dir: a control plane on a fresh database would take them for
    orphans and delete them, with the jobs running on them. A first start has none."""
    if db_path.exists():
        return
    d = data_dir / "instances"
    n = sum(1 for i in d.iterdir() if (i / "instance.json").exists()) if d.is_dir() else 0
    if n:
        raise ConflictError(
            f"the database {db_path} is missing, but {n} instance(s) of an earlier run remain "
            f"in {d}: refusing to start on an empty database, which would delete them as "
            "leftovers. Restore the database, or remove them with `outgrow cleanup`."
        )
