"""A small, real Jupyter kernel-protocol client over the server's websocket (tests only)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect


def create_kernel(base: str, token: str, client: httpx.Client | None = None) -> str:
    """A new kernel; with ``client`` (e.g. a browser-like client holding cookies) its
    own credentials are used and ``token`` is the XSRF token to send."""
    if client is not None:
        r = client.post(
            f"{base}api/kernels", headers={"X-XSRFToken": token}, json={"name": "python3"}
        )
        r.raise_for_status()
        return str(r.json()["id"])
    r = httpx.post(
        f"{base}api/kernels",
        headers={"Authorization": f"token {token}"},
        json={"name": "python3"},
        timeout=60,
    )
    r.raise_for_status()
    return str(r.json()["id"])


def list_kernels(base: str, token: str) -> list[str]:
    r = httpx.get(f"{base}api/kernels", headers={"Authorization": f"token {token}"}, timeout=10)
    r.raise_for_status()
    return [k["id"] for k in r.json()]


@dataclass
class CellOutput:
    text: str = ""
    result: str | None = None
    error: str | None = None
    done: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)


class KernelSession:
    """One client session on one kernel; ``session_id`` survives reconnects, so the server
    replays what it buffered while we were away."""

    def __init__(
        self,
        base: str,
        token: str,
        kernel_id: str,
        session_id: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        """``headers`` replace the token's Authorization header (e.g. a browser's Cookie
        and Origin)."""
        self.token = token
        self.headers = headers or {"Authorization": f"token {token}"}
        self.kernel_id = kernel_id
        self.session_id = session_id or uuid.uuid4().hex
        self.ws: ClientConnection | None = None
        self.connect(base)

    def connect(self, base: str) -> None:
        url = base.replace("http://", "ws://") + (
            f"api/kernels/{self.kernel_id}/channels?session_id={self.session_id}"
        )
        # Entered as a context manager (closed in close()), as websockets 17 expects.
        self.ws = connect(
            url,
            additional_headers=self.headers,
            max_size=None,
            open_timeout=30,
        ).__enter__()

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def execute(self, code: str) -> str:
        assert self.ws is not None
        msg_id = uuid.uuid4().hex
        self.ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "username": "test",
                        "session": self.session_id,
                        "msg_type": "execute_request",
                        "version": "5.3",
                        "date": "",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "channel": "shell",
                    "buffers": [],
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": True,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                }
            )
        )
        return msg_id

    def collect(
        self,
        msg_id: str,
        timeout: float,
        out: CellOutput | None = None,
        until: Callable[[CellOutput], bool] | None = None,
    ) -> CellOutput:
        """Read messages for ``msg_id`` until the kernel reports idle for it, or (with
        ``until``) until ``until(out)`` holds; pass ``out`` again to read on."""
        assert self.ws is not None
        out = out or CellOutput()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            out.messages.append(msg)
            t, c = msg["msg_type"], msg["content"]
            if t == "stream":
                out.text += c["text"]
            elif t == "execute_result":
                out.result = c["data"].get("text/plain")
            elif t == "error":
                out.error = f"{c['ename']}: {c['evalue']}"
            elif t == "status" and c["execution_state"] == "idle":
                out.done = True
                return out
            if until is not None and until(out):
                return out
        wanted = "not finished" if until is None else "did not get what was awaited"
        raise TimeoutError(f"cell {msg_id} {wanted} after {timeout} s; got {out.text[-500:]!r}")

    def run(self, code: str, timeout: float = 60) -> CellOutput:
        return self.collect(self.execute(code), timeout)
