"""Parsing an incoming ASGI request for the proxy, and who sent it (outgrow credentials).

Credentials, tried in this order, the first valid one wins:

1. ``Authorization: token <API token>`` or ``Bearer <API token>`` (CLI, SDK, a local
   ``jupyter server --gateway-url …/jobs/<id> --GatewayClient.auth_token=<API token>``);
2. ``?token=<API token>`` (a one-time link for a browser): the answer then sets the cookie
   below, and a browser navigation (GET, ``Accept: text/html``) is redirected to the same
   URL without the token, so it does not linger in the address bar, history or Referer;
3. the cookie ``outgrow_session`` (HttpOnly, SameSite=Lax, ``Path=/jobs/<id>/``) holding
   an API token. The console's login session will set the same cookie later.

An invalid candidate does not stop the search: JupyterLab may send its own (masked) token
in a header while the cookie is what authenticates the browser.

A request authenticated by the cookie alone is a browser's: it is refused (403) when it
changes something (not GET/HEAD/OPTIONS, or a WebSocket) with an ``Origin`` other than
the proxy's own host. That replaces jupyter_server's own XSRF check, which it skips for
the token-authenticated requests the proxy sends it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import anyio.to_thread
from starlette.types import Scope

from outgrow.controlplane.service import ControlPlane
from outgrow.domain.jobs import UserView
from outgrow.errors import AuthError
from outgrow.proxy.errors import Headers, ProxyError, unauthorized

SESSION_COOKIE = "outgrow_session"
AUTH_TTL_S = 5.0  # a revoked token stops working through the proxy within this time
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_CODE_PREFIX = "otp_"


@dataclass
class Incoming:
    """One request to ``/jobs/<job_id><rest>``, parsed once."""

    kind: str  # "http" or "websocket"
    method: str
    job_id: str
    raw_path: bytes  # the whole path as received (percent-encoding kept), no query
    query: bytes  # the query without any ``token`` parameter
    headers: Headers
    scheme: str
    host: str
    client_ip: str
    header_token: str = ""
    query_token: str = ""
    cookie_token: str = ""
    cookie_tokens: list[str] = field(default_factory=list)  # every outgrow_session value
    other_cookies: list[str] = field(default_factory=list)
    has_query_token: bool = False
    hub_prefix: str | None = None  # a JupyterHub server's request, passed through (hub.py)

    @property
    def upstream_path(self) -> bytes:
        return self.raw_path + (b"?" + self.query if self.query else b"")

    def header(self, name: bytes) -> str:
        for k, v in self.headers:
            if k == name:
                return v.decode("latin-1")
        return ""


@dataclass(frozen=True)
class Identity:
    user: UserView
    via: str  # "header", "query" or "cookie"
    token: str


def parse(scope: Scope) -> Incoming | str | None:
    """The parsed request; a str is a path to redirect to (``/jobs/<id>`` → ``/jobs/<id>/``);
    None when the path names no job."""
    root = scope.get("app_root_path", "") or ""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    raw = raw.split(b"?", 1)[0]
    rest = raw[len(root) :] if root and raw.startswith(root.encode()) else raw
    if not rest.startswith(b"/jobs/"):
        return None
    job_raw, slash, _ = rest[len(b"/jobs/") :].partition(b"/")
    job_id = unquote(job_raw.decode("latin-1"))
    if not _JOB_ID.fullmatch(job_id):
        return None
    qs: bytes = scope.get("query_string", b"")
    if not slash:
        return raw.decode("latin-1") + "/" + ("?" + qs.decode("latin-1") if qs else "")
    req = incoming(scope, raw, job_id)
    scheme, _, value = req.header(b"authorization").strip().partition(" ")
    if scheme.lower() in ("token", "bearer"):
        req.header_token = value.strip()
    kept = []
    for part in qs.split(b"&") if qs else []:
        name, _, val = part.partition(b"=")
        if unquote(name.decode("latin-1")) == "token":
            req.has_query_token = True
            req.query_token = req.query_token or unquote(val.decode("latin-1").replace("+", " "))
        else:
            kept.append(part)
    req.query = b"&".join(kept)
    return req


def incoming(scope: Scope, raw: bytes, job_id: str) -> Incoming:
    """The request's parts every kind of proxied request has (no credentials yet)."""
    server = scope.get("server") or ("", 0)
    client = scope.get("client") or ("", 0)
    req = Incoming(
        kind=scope["type"],
        method=scope.get("method", "GET").upper(),
        job_id=job_id,
        raw_path=raw,
        query=b"",
        headers=list(scope.get("headers", [])),
        scheme=scope.get("scheme", "http"),
        host="",
        client_ip=str(client[0] or ""),
    )
    req.host = req.header(b"host") or f"{server[0]}:{server[1]}"
    for k, v in req.headers:
        if k != b"cookie":
            continue
        for item in v.decode("latin-1").split(";"):
            cname, eq, cval = item.strip().partition("=")
            if cname == SESSION_COOKIE and eq:
                # Both the proxy's path-scoped cookie and the console's may be sent.
                req.cookie_tokens.append(cval.strip().strip('"'))
                req.cookie_token = req.cookie_token or req.cookie_tokens[-1]
            elif cname:
                req.other_cookies.append(item.strip())
    return req


class Authenticator:
    def __init__(self, plane: ControlPlane):
        self.plane = plane
        self._cache: dict[str, tuple[UserView, float]] = {}

    async def identify(self, req: Incoming) -> Identity:
        candidates = [("header", req.header_token), ("query", req.query_token)]
        candidates += [("cookie", t) for t in req.cookie_tokens]
        for via, token in candidates:
            if via == "query" and token.startswith(OPEN_CODE_PREFIX):
                # A one-time link from `outgrow open`: exchanged once for a browser token,
                # which the answer stores in the session cookie.
                try:
                    owner, browser_token = await anyio.to_thread.run_sync(
                        self.plane.accounts.redeem_open_code, token, req.job_id
                    )
                except AuthError:
                    continue
                return Identity(owner, via, browser_token)
            if token:
                user = await self.user(token)
                if user is not None:
                    if via == "cookie":
                        check_origin(req)
                    return Identity(user, via, token)
        raise unauthorized()

    async def user(self, token: str) -> UserView | None:
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            user = await anyio.to_thread.run_sync(self.plane.accounts.authenticate, token)
        except AuthError:
            self._cache.pop(token, None)
            return None
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[token] = (user, now + AUTH_TTL_S)
        return user


def check_origin(req: Incoming) -> None:
    """Cookie-authenticated browsers may only change things from the proxy's own origin."""
    if req.kind == "http" and req.method in SAFE_METHODS:
        return
    origin = req.header(b"origin")
    if not origin:
        return
    if origin == "null" or urlsplit(origin).netloc.lower() != req.host.lower():
        raise ProxyError(403, "forbidden", f"cross-origin request from {origin} refused")


def session_cookie(req: Incoming, token: str) -> bytes:
    path = req.raw_path.split(b"/jobs/", 1)[0].decode("latin-1") + f"/jobs/{req.job_id}/"
    secure = "; Secure" if req.scheme in ("https", "wss") else ""
    return f"{SESSION_COOKIE}={token}; Path={path}; HttpOnly; SameSite=Lax{secure}".encode()
