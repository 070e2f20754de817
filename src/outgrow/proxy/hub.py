"""JupyterHub user servers through the proxy: a request under ``OUTGROW_JUPYTERHUB_PATH``
(``/user/<name>/…``) goes to the live hub job whose prefix it starts with, *passed
through*: the job's ``jupyterhub-singleuser`` checks the hub's OAuth cookie or token
itself, so the proxy asks for no outgrow credentials and adds none (docs/jupyterhub.md;
who may create such jobs and with which prefix: controlplane/hub.py).

What passing through means here, and what it still does not let through:

* the path, the query (a hub ``?token=`` too), Host, Origin, Cookie and Authorization go
  upstream as the client sent them, so the single-user server's own Origin/Host, XSRF
  and OAuth checks see what they would behind configurable-http-proxy alone;
* except outgrow's own credentials: the ``outgrow_session`` cookie and an
  ``Authorization`` carrying an outgrow API token (``og_…``) are dropped, so a browser
  logged in to the console never hands its token to a user's server;
* nothing else of the control plane is reachable this way: a path that names no live hub
  job (or a dot segment) is 404, and hub jobs are not served under ``/jobs/<id>/``;
* moves, suspends and resumes are held exactly as for ``/jobs/`` (core.py); a request
  to a suspended hub job resumes it on behalf of the job's owner (the hub's account).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import anyio.to_thread
from starlette.types import Scope

from outgrow.domain.jobs import UserView
from outgrow.proxy.errors import Headers
from outgrow.proxy.request import Incoming, incoming

ROUTES_TTL_S = 1.0  # the prefix table is re-read at most this often…
MISS_TTL_S = 0.2  # …or this often when a path names no prefix it knows (a new server)
OUTGROW_TOKEN_PREFIX = "og_"
_HOST = re.compile(r"[A-Za-z0-9.-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")
DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",  # the upstream client frames the body itself
        b"expect",
        b"cookie",  # rebuilt without outgrow's own
        b"authorization",  # kept unless it is an outgrow token
        b"x-forwarded-for",  # extended with the client's address
    }
)


Routes = dict[str, tuple[str, UserView]]  # prefix → (job id, the job's owner)


class HubRoutes:
    """Which prefix is which job: ``load()``'s table (the control plane's
    ``hub.routes``, read in a thread), cached briefly."""

    def __init__(self, path: str, load: Callable[[], Routes]):
        self.path = path
        self.load = load
        self.table: Routes = {}
        self.at = 0.0

    def serves(self, path: str) -> bool:
        return path.startswith(self.path)

    async def find(self, raw_path: str) -> tuple[str, str, UserView] | None:
        """(job id, prefix, owner) of the live hub job serving ``raw_path``, or None."""
        age = time.monotonic() - self.at
        if age > ROUTES_TTL_S:
            await self._load()
        found = self._match(raw_path)
        if found is None and age > MISS_TTL_S:
            await self._load()
            found = self._match(raw_path)
        return found

    async def _load(self) -> None:
        self.table = await anyio.to_thread.run_sync(self.load)
        self.at = time.monotonic()

    def _match(self, raw_path: str) -> tuple[str, str, UserView] | None:
        rest = raw_path[len(self.path) :].split("/")
        if any(s.lower().replace("%2e", ".") in (".", "..") for s in rest):
            return None
        # /user/<name>/<server>/… before /user/<name>/…; /user/<name> (no slash) too.
        for n in (2, 1):
            prefix = self.path + "".join(s + "/" for s in rest[:n])
            if len(rest) >= n and (raw_path + "/").startswith(prefix) and prefix in self.table:
                job_id, owner = self.table[prefix]
                return job_id, prefix, owner
        return None


def parse_hub(scope: Scope) -> Incoming:
    """The request, to be passed through as it came (``job_id`` is set once routed)."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    req = incoming(scope, raw.split(b"?", 1)[0], "")
    req.query = scope.get("query_string", b"")
    return req


def valid_host(req: Incoming) -> bool:
    return bool(_HOST.fullmatch(req.host))


def client_credential(req: Incoming) -> bytes | None:
    """The client's Authorization header unless it carries an outgrow token."""
    value = req.header(b"authorization")
    token = value.strip().partition(" ")[2].strip()
    if not value or token.startswith(OUTGROW_TOKEN_PREFIX):
        return None
    return value.encode("latin-1")


def forwarded_for(req: Incoming) -> str:
    chain = req.header(b"x-forwarded-for")
    return f"{chain}, {req.client_ip}" if chain else req.client_ip


def http_headers(req: Incoming) -> Headers:
    """The request's headers for the job's server: the client's own, Host included
    (see the module docstring), minus hop-by-hop ones and outgrow's credentials."""
    listed = {
        v.strip().lower().encode()
        for k, val in req.headers
        if k == b"connection"
        for v in val.decode("latin-1").split(",")
    }
    out: Headers = [(k, v) for k, v in req.headers if k not in DROP and k not in listed]
    if req.other_cookies:
        out.append((b"cookie", "; ".join(req.other_cookies).encode("latin-1")))
    credential = client_credential(req)
    if credential is not None:
        out.append((b"authorization", credential))
    out.append((b"x-forwarded-for", forwarded_for(req).encode("latin-1")))
    if not req.header(b"x-forwarded-proto"):
        out.append((b"x-forwarded-proto", req.scheme.encode()))
    if not req.header(b"x-forwarded-host"):
        out.append((b"x-forwarded-host", req.host.encode("latin-1")))
    return out


def ws_headers(req: Incoming) -> list[tuple[str, str]]:
    """The WebSocket handshake's headers for the job's server (the websockets client makes
    the Sec-WebSocket-* ones itself; Host comes from the URL, see ``ws_url``)."""
    keep = (b"origin", b"user-agent", b"x-forwarded-proto", b"x-forwarded-host")
    out = [(k.decode(), v.decode("latin-1")) for k, v in req.headers if k in keep]
    if req.other_cookies:
        out.append(("Cookie", "; ".join(req.other_cookies)))
    credential = client_credential(req)
    if credential is not None:
        out.append(("Authorization", credential.decode("latin-1")))
    out.append(("X-Forwarded-For", forwarded_for(req)))
    if not req.header(b"x-forwarded-proto"):
        out.append(("X-Forwarded-Proto", "wss" if req.scheme == "wss" else "ws"))
    if not req.header(b"x-forwarded-host"):
        out.append(("X-Forwarded-Host", req.host))
    return out


def ws_url(req: Incoming) -> str:
    """The URL with the client's own Host (the connection itself goes to the job's address):
    the single-user server compares a WebSocket's Origin with its Host."""
    return f"ws://{req.host}{req.upstream_path.decode('latin-1')}"
