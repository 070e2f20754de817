"""A database that is away reads the same on every HTTP server of outgrow: 503, its code
and message, and when to try again (the REST API's answer is checked for real in
tests/root/test_postgres_control_plane.py); SQLite's own bugs stay bugs."""

from __future__ import annotations

import sqlite3

from sqlalchemy.exc import OperationalError

from outgrow.errors import StoreUnavailable, error_class
from outgrow.httpstatus import status_for
from outgrow.proxy.errors import ProxyError
from outgrow.store.base import is_unavailable, store_unavailable


def test_status_and_proxy_answer() -> None:
    exc = StoreUnavailable("the control plane's database is unavailable; try again shortly")
    assert status_for(exc) == 503 and error_class("store_unavailable") is StoreUnavailable
    answer = ProxyError.of(exc)
    assert (answer.status, answer.code, answer.message) == (503, "store_unavailable", exc.message)
    assert (b"retry-after", b"5") in answer.headers


def test_which_errors_mean_unavailable() -> None:
    def op(message: str) -> OperationalError:
        return OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))

    assert is_unavailable(op("database is locked"), "sqlite")
    assert is_unavailable(op("database or disk is full"), "sqlite")  # 503 until space is freed
    assert not is_unavailable(op("no such table: jobs"), "sqlite")  # a bug, not an outage
    assert is_unavailable(op("connection refused"), "postgresql")
    exc = store_unavailable("postgresql+psycopg://u:secret@db:5432/og", op("refused"), where=True)
    assert exc.message == "cannot reach the database postgresql+psycopg://u:***@db:5432/og: refused"
    assert "secret" not in exc.message and "secret" not in (exc.detail or "")
