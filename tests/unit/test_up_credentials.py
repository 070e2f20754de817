"""`outgrow up` points the CLI at itself, but never takes it from another control plane."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from outgrow.server import _save_credentials


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("OUTGROW_URL", raising=False)
    monkeypatch.delenv("OUTGROW_TOKEN", raising=False)
    return tmp_path / "outgrow" / "credentials.json"


def test_first_control_plane_writes_them(config: Path) -> None:
    line = _save_credentials("http://127.0.0.1:8611", "og_a")
    assert line == f"  CLI credentials written to {config}\n"
    assert json.loads(config.read_text()) == {"url": "http://127.0.0.1:8611", "token": "og_a"}
    assert config.stat().st_mode & 0o777 == 0o600


@pytest.fixture
def first() -> Iterator[str]:
    """A control plane's health route answering on loopback (a real HTTP server)."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/api/v1/health"
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}' if ok else b"")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_second_control_plane_keeps_a_live_first_ones(config: Path, first: str) -> None:
    _save_credentials(first, "og_a")
    line = _save_credentials("http://127.0.0.1:1", "og_b")
    assert json.loads(config.read_text()) == {"url": first, "token": "og_a"}
    assert "CLI credentials kept" in line and first in line
    assert "outgrow login http://127.0.0.1:1" in line


def test_a_dead_control_plane_s_are_replaced(config: Path) -> None:
    _save_credentials("http://127.0.0.1:1", "og_dead")  # nothing listens on port 1
    line = _save_credentials("http://127.0.0.1:8612", "og_b")
    assert line == f"  CLI credentials written to {config}\n"
    assert json.loads(config.read_text())["token"] == "og_b"


def test_the_same_control_plane_anew_replaces_them(config: Path) -> None:
    _save_credentials("http://127.0.0.1:8611", "og_old")
    _save_credentials("http://127.0.0.1:8611", "og_new")
    assert json.loads(config.read_text())["token"] == "og_new"


def test_unreadable_ones_are_replaced(config: Path) -> None:
    config.parent.mkdir(parents=True)
    config.write_text("{not json")
    _save_credentials("http://127.0.0.1:8611", "og_a")
    assert json.loads(config.read_text())["token"] == "og_a"
