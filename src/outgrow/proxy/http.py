"""Forwarding one HTTP request to the job's Jupyter server, streaming both bodies.

Request: method, path (percent-encoding kept) and query (minus ``token``) unchanged; the
client's credentials (Authorization, the ``outgrow_session`` cookie) are replaced by
``Authorization: token <the job's Jupyter token>``; hop-by-hop headers and Host are
dropped; ``X-Forwarded-For/-Proto/-Host`` are set; ``Accept-Encoding: identity`` so the
answer can be checked for the Jupyter token.

Answer: status and headers (minus hop-by-hop, Date and Server, which the proxy's server
sets, and jupyter_server's ``username-…`` login cookie, which names the instance address
and is useless through the proxy; ``_xsrf`` is kept); absolute ``Location`` headers that
point at the instance become paths; the Jupyter token is replaced by ``*`` (same length,
so Content-Length holds) in headers and in the body, as it streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.types import Receive, Send

from outgrow.proxy import hub
from outgrow.proxy.errors import Headers
from outgrow.proxy.jobs import Target
from outgrow.proxy.request import Incoming
from outgrow.proxy.upstream import Pool

HOP_BY_HOP = frozenset(
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
    }
)
REQUEST_DROP = HOP_BY_HOP | {
    b"host",
    b"content-length",  # the upstream client frames the body itself
    b"authorization",
    b"cookie",
    b"accept-encoding",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
RESPONSE_DROP = HOP_BY_HOP | {b"date", b"server"}
STREAMED = 1 << 20  # answers longer than this (or of unknown length) watch for the client


class Masker:
    """Replaces the Jupyter token by ``*`` in a byte stream, across chunk boundaries; holds
    back only a tail that could be the start of the token."""

    def __init__(self, token: str):
        self.token = token.encode()
        self.mask = b"*" * len(self.token)
        self.tail = b""
        self.chars = frozenset(self.token)
        self.prefixes = [self.token[:k] for k in range(len(self.token) - 1, 0, -1)]

    def feed(self, chunk: bytes) -> bytes:
        if not self.token or not chunk:
            return chunk
        buf = self.tail + chunk if self.tail else chunk
        if self.token in buf:
            buf = buf.replace(self.token, self.mask)
        keep = 0
        if buf[-1] in self.chars:  # else no token can start in the tail
            keep = next((len(p) for p in self.prefixes if buf.endswith(p)), 0)
        self.tail = buf[len(buf) - keep :] if keep else b""
        return buf[: len(buf) - keep] if keep else buf

    def flush(self) -> bytes:
        tail, self.tail = self.tail, b""
        return tail

    def text(self, value: bytes) -> bytes:
        return value.replace(self.token, self.mask) if self.token else value


def upstream_headers(req: Incoming, target: Target) -> Headers:
    if req.hub_prefix is not None:  # a JupyterHub server's request: passed through
        return hub.http_headers(req)
    out: Headers = []
    connection_listed = {
        v.strip().lower().encode()
        for k, val in req.headers
        if k == b"connection"
        for v in val.decode("latin-1").split(",")
    }
    forwarded_for = ""
    for k, v in req.headers:
        if k == b"x-forwarded-for":
            forwarded_for = v.decode("latin-1")
        if k in REQUEST_DROP or k in connection_listed:
            continue
        out.append((k, v))
    if req.other_cookies:
        out.append((b"cookie", "; ".join(req.other_cookies).encode("latin-1")))
    chain = f"{forwarded_for}, {req.client_ip}" if forwarded_for else req.client_ip
    out += [
        (b"authorization", f"token {target.token}".encode()),
        (b"accept-encoding", b"identity"),
        (b"x-forwarded-for", chain.encode("latin-1")),
        (b"x-forwarded-proto", req.scheme.encode()),
        (b"x-forwarded-host", req.host.encode("latin-1")),
    ]
    return out


def client_headers(raw: Headers, target: Target, masker: Masker) -> Headers:
    out: Headers = []
    origin = target.origin.encode()
    for k, v in raw:
        k = k.lower()
        if k in RESPONSE_DROP:
            continue
        if k == b"set-cookie" and v.lstrip().startswith(b"username-"):
            continue
        if k == b"location" and v.startswith(origin):
            v = v[len(origin) :] or b"/"
        out.append((k, masker.text(v)))
    return out


@dataclass
class Exchange:
    """What one forwarding attempt got to: the proxy decides from this how to end it."""

    started: bool = False  # the answer's status line went to the client
    finished: bool = False  # the last byte is being sent
    client_gone: bool = False


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ConnectionResetError("client went away while sending the body")
        chunk = msg.get("body", b"")
        if chunk:
            yield chunk
        if not msg.get("more_body", False):
            return


def body_length(req: Incoming) -> tuple[bool, int | None]:
    """(has a body, its Content-Length or None for chunked)."""
    length: int | None = None
    chunked = False
    for k, v in req.headers:
        if k == b"transfer-encoding":
            chunked = True
        elif k == b"content-length" and v.strip():
            length = int(v)
    if chunked:
        return True, None
    return (length is not None and length > 0), length


def has_body(req: Incoming) -> bool:
    return body_length(req)[0]


async def forward(
    req: Incoming,
    receive: Receive,
    send: Send,
    pool: Pool,
    target: Target,
    extra: Headers,
    ex: Exchange,
) -> None:
    upload, length = body_length(req)
    resp = await pool.request(
        req.method,
        req.upstream_path,
        upstream_headers(req, target),
        _body(receive) if upload else None,
        length,
    )
    watch = None
    if resp.framing in ("chunked", "eof") or resp.length > STREAMED:
        # A long answer: stop streaming it if the client leaves (small ones just finish).
        me = asyncio.current_task()
        assert me is not None
        watch = asyncio.create_task(_watch_disconnect(receive, me, ex))
    try:
        masker = Masker(target.token)
        headers = client_headers(resp.headers, target, masker) + extra
        ex.started = True
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        # A body of known length: one chunk of look-ahead, so the last one goes with the
        # end of the answer (one ASGI message less for the usual small answer).
        ahead = resp.framing == "length"
        last = b""
        async for chunk in resp.body():
            out = masker.feed(chunk)
            if ahead:
                out, last = last, out
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
        ex.finished = True
        end = last + masker.flush()
        await send({"type": "http.response.body", "body": end, "more_body": False})
    finally:
        if watch is not None:
            watch.cancel()
        resp.release()


async def _watch_disconnect(receive: Receive, task: asyncio.Task[None], ex: Exchange) -> None:
    """After the request body is read, the next ASGI message is the client leaving: stop
    streaming an answer nobody reads."""
    msg = await receive()
    if msg["type"] == "http.disconnect" and not ex.finished and not task.done():
        ex.client_gone = True
        task.cancel()
