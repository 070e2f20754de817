"""The control plane and the agents of running instances are not always the same release
(instances outlive an upgrade): the typed client ignores answer fields it does not know
and leaves unset request fields out. The peer here is a fake agent of a *newer* release
on loopback (a canned answer), named as such; the real agent is tested in tests/root."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from outgrow.agentapi.client import AgentClient
from outgrow.agentapi.models import AgentPhase, ImageBody, ReceiveRequest


class NewerAgent(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, object]]] = []

    def _answer(self, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer({"phase": "running", "job_id": "j1", "a_field_of_next_release": [1, 2]})

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        NewerAgent.received.append(json.loads(self.rfile.read(n) or b"{}"))
        self._answer({"receive_id": "r1", "page_server_port": None, "also_new": True})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def newer_agent() -> Iterator[str]:
    NewerAgent.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), NewerAgent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_answer_fields_of_a_newer_agent_are_ignored(newer_agent: str) -> None:
    with AgentClient(newer_agent, "t") as a:
        st = a.job()
    assert st.phase == AgentPhase.RUNNING and st.job_id == "j1"


def test_unset_request_fields_are_not_sent(newer_agent: str) -> None:
    with AgentClient(newer_agent, "t") as a:
        rx = a.prepare_receive(page_server=False)
        assert rx.receive_id == "r1"
        a.prepare_receive(page_server=True, image=ImageBody(name="python", kind="python"))
    # an older agent would refuse a field it does not know: unset ones are left out
    assert NewerAgent.received[0] == {"page_server": False}
    assert NewerAgent.received[1] == {"image": {"name": "python", "kind": "python"}}
    # and what is left out is exactly the default the agent fills in again
    assert ReceiveRequest.model_validate(NewerAgent.received[1]).page_server is True


class OlderAgent(BaseHTTPRequestHandler):
    """FAKE agent of the *previous* release: no ``features`` in its health, no bundle
    route; it records each file PUT to it."""

    puts: ClassVar[list[tuple[str, bytes]]] = []

    def _answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # /v1/health
        self._answer(200, {"instance_id": "i1", "address": "a", "cgroup_version": 2})

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        out = b""
        while size := int(self.rfile.readline().split(b";")[0], 16):
            out += self.rfile.read(size)
            self.rfile.readline()
        self.rfile.readline()
        return out

    def do_PUT(self) -> None:
        body = self._body()
        if "/files/" not in self.path:
            self._answer(404, {"detail": "Not Found"})
            return
        OlderAgent.puts.append((self.path.rsplit("/", 1)[1], body))
        self._answer(200, {"name": self.path.rsplit("/", 1)[1], "bytes": len(body)})

    def log_message(self, *args: object) -> None:
        pass


def test_images_go_one_file_at_a_time_to_an_agent_without_bundles(tmp_path: Path) -> None:
    OlderAgent.puts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), OlderAgent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    files = []
    for i, size in enumerate([0, 10, 3000]):
        f = tmp_path / f"core-{i}.img"
        f.write_bytes(bytes([i]) * size)
        files.append(f)
    try:
        with AgentClient(f"http://127.0.0.1:{server.server_address[1]}", "t") as a:
            assert a.upload_all("r1", files) == 3
    finally:
        server.shutdown()
        server.server_close()
    assert OlderAgent.puts == [(f.name, f.read_bytes()) for f in files]
