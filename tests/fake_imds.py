"""``FakeImds``: a FAKE of the EC2 instance metadata service, for tests.

The real IMDS only exists at ``http://169.254.169.254`` on an EC2 instance; this host is
not one, and no AWS mock (moto included) serves it over HTTP. So the tests run this small
stand-in instead, on a loopback port. It imitates only what ``outgrow`` relies on, the way
AWS documents it for an instance launched with ``HttpTokens=required`` (IMDSv2 only):

* ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds: 1..21600`` →
  a session token (the TTL is echoed in the same header); a missing or out-of-range TTL
  is 400, a request carrying ``X-Forwarded-For`` is 403 (IMDS refuses proxied requests);
* ``GET /latest/<path>`` without a token, with an unknown, revoked or expired one → 401;
* ``meta-data/spot/instance-action`` and ``meta-data/events/recommendations/rebalance``
  are 404 until the test sets them (any other path too, unless set);
* every request is recorded (:attr:`FakeImds.requests`); ``outage`` drops every
  connection without an answer, like a metadata service that is briefly gone, and
  ``refuse_tokens`` answers 401 to every GET.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

ACTION = "meta-data/spot/instance-action"
REBALANCE = "meta-data/events/recommendations/rebalance"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


def iso(at: float) -> str:
    """IMDS's timestamp format (``2026-11-25T20:12:00Z``, whole seconds, UTC)."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    status: int
    token: str | None  # the token the request carried (GET), or the one issued (PUT)
    ttl: str | None  # the TTL header of a PUT
    at: float


class FakeImds:
    """A fake of EC2's instance metadata service (IMDSv2 only), see the module doc."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._docs: dict[str, str] = {"meta-data/local-ipv4": "10.0.0.12"}
        self._tokens: dict[str, float] = {}  # token → monotonic expiry
        self.requests: list[Seen] = []
        self.outage = False  # drop every connection without an answer
        self.refuse_tokens = False  # every GET is a 401, whatever token it carries
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self, status: int, body: str = "", **headers: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k.replace("_", "-"), v)
                self.end_headers()
                self.wfile.write(data)

            def _drop(self) -> bool:
                if fake.outage:
                    self.close_connection = True
                    return True
                return False

            def do_PUT(self) -> None:
                if self._drop():
                    return
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                ttl = self.headers.get(TTL_HEADER)
                token: str | None = None
                if self.path != "/latest/api/token":
                    status = 404
                elif self.headers.get("X-Forwarded-For"):
                    status = 403
                elif ttl is None or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                    status = 400
                else:
                    status = 200
                    token = secrets.token_urlsafe(32)
                    with fake._lock:
                        fake._tokens[token] = time.monotonic() + int(ttl)
                fake._record("PUT", self.path, status, token, ttl)
                if token is not None and ttl is not None:
                    self._answer(200, token, **{TTL_HEADER: ttl})
                else:
                    self._answer(status)

            def do_GET(self) -> None:
                if self._drop():
                    return
                token = self.headers.get(TOKEN_HEADER)
                path = self.path.removeprefix("/latest/")
                with fake._lock:
                    expiry = fake._tokens.get(token or "")
                    valid = expiry is not None and time.monotonic() < expiry
                    valid = valid and not fake.refuse_tokens
                    doc = fake._docs.get(path)
                if not valid:
                    status, body = 401, ""
                elif doc is None or not self.path.startswith("/latest/"):
                    status, body = 404, ""
                else:
                    status, body = 200, doc
                fake._record("GET", self.path, status, token, None)
                self._answer(status, body)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-imds", daemon=True
        )

    # ---- lifecycle ----------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- what the test controls ---------------------------------------------------
    def _record(
        self, method: str, path: str, status: int, token: str | None, ttl: str | None
    ) -> None:
        with self._lock:
            self.requests.append(Seen(method, path, status, token, ttl, time.time()))

    def set(self, path: str, text: str) -> None:
        with self._lock:
            self._docs[path] = text

    def clear(self, path: str) -> None:
        with self._lock:
            self._docs.pop(path, None)

    def set_instance_action(self, action: str, at: float) -> None:
        self.set(ACTION, json.dumps({"action": action, "time": iso(at)}))

    def set_rebalance(self, notice_at: float) -> None:
        self.set(REBALANCE, json.dumps({"noticeTime": iso(notice_at)}))

    def revoke_tokens(self) -> None:
        """Forget every issued token (their next use is a 401)."""
        with self._lock:
            self._tokens.clear()

    def seen(self, method: str | None = None, status: int | None = None) -> list[Seen]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and (status is None or r.status == status)
            ]
