"""One client WebSocket bridged to the job's Jupyter server, surviving moves of the job.

The client side (browser, JupyterLab, a gateway client) stays open for the bridge's whole
life. The upstream side is closed before each checkpoint (``detach``) and opened again at
the job's new address with the very same URL (``reattach``): the same ``session_id``
query parameter makes jupyter_server replay what the kernel sent while nobody was
connected (it buffers per session, and that buffer is part of the checkpoint).

Ordering and no loss:

* upstream → client: ``detach`` closes with a closing handshake and then waits for the
  reader to forward everything the server sent before its Close frame; what the kernel
  sends after that is buffered by jupyter_server and replayed after ``reattach``;
* client → upstream: a lock orders sends against ``detach``; a message that cannot be
  sent is queued, and ``reattach`` sends the queue, in order, before any new message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from starlette.types import Receive, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from outgrow.domain.jobs import UserView
from outgrow.proxy import hub
from outgrow.proxy.jobs import Activity, JobEntry, Target, spawn
from outgrow.proxy.request import Incoming

log = logging.getLogger("outgrow.proxy")

# The upstream connections' own logger: websockets logs every handshake header at DEBUG,
# and ours carry the job's Jupyter token (or, for a hub, the user's cookie). Never below
# INFO, whatever the root logger's level.
_UPSTREAM_LOG = logging.getLogger("outgrow.proxy.upstream")
_UPSTREAM_LOG.setLevel(logging.INFO)

MAX_QUEUED_MESSAGES = 10_000
MAX_QUEUED_BYTES = 64 * 1024 * 1024
_UNSENDABLE = frozenset({1005, 1006, 1015})  # reserved close codes, never on the wire


async def open_upstream(req: Incoming, target: Target, subprotocols: list[str]) -> ClientConnection:
    if req.hub_prefix is not None:  # passed through: the client's own headers and Host
        url, headers = hub.ws_url(req), hub.ws_headers(req)
    else:
        url = f"ws://{target.address}:{target.port}" + req.upstream_path.decode("latin-1")
        headers = [
            ("Authorization", f"token {target.token}"),
            ("X-Forwarded-For", req.client_ip),
            ("X-Forwarded-Proto", "wss" if req.scheme == "wss" else "ws"),
            ("X-Forwarded-Host", req.host),
        ]
    return await connect(
        url,
        host=target.address,  # where to connect, whatever host the URL names
        port=target.port,
        additional_headers=headers,
        subprotocols=[Subprotocol(p) for p in subprotocols] or None,
        compression=None,
        proxy=None,
        user_agent_header=None,
        max_size=None,
        open_timeout=15,
        close_timeout=2,
        ping_interval=20,
        ping_timeout=60,
        logger=_UPSTREAM_LOG,
    )


class WsBridge:
    def __init__(
        self, proxy: Activity, entry: JobEntry, req: Incoming, actor: UserView, send: Send
    ):
        self.proxy = proxy
        self.entry = entry
        self.req = req
        self.actor = actor
        self.hub = req.hub_prefix is not None
        self.send = send
        self.subprotocol: str | None = None
        self.upstream: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None
        self.detached = False  # the job is moving: queue what the client sends
        self.done = False  # the client side is closed (or being closed)
        self.pending: deque[str | bytes] = deque()
        self.pending_bytes = 0
        self.lock = asyncio.Lock()

    def attach(self, up: ClientConnection, start: bool = True) -> None:
        self.upstream = up
        self.subprotocol = up.subprotocol
        if start:
            self.start()

    def start(self) -> None:
        """Start forwarding upstream → client (once the client handshake is accepted)."""
        if self.upstream is not None and not self.detached and self.reader is None:
            self.reader = asyncio.create_task(self._pump(self.upstream))

    async def run(self, receive: Receive) -> None:
        """The client side: forward what it sends until it leaves."""
        try:
            while True:
                msg = await receive()
                if msg["type"] == "websocket.receive":
                    text = msg.get("text")
                    await self._to_upstream(text if text is not None else msg.get("bytes") or b"")
                elif msg["type"] == "websocket.disconnect":
                    return
        finally:
            self.done = True
            self.entry.bridges.discard(self)
            up, self.upstream = self.upstream, None
            if self.reader is not None:
                self.reader.cancel()
            if up is not None:
                with contextlib.suppress(Exception):
                    await up.close()

    async def _to_upstream(self, data: str | bytes) -> None:
        async with self.lock:
            up = self.upstream
            if up is None or self.detached:
                self._queue(data)
                return
            with contextlib.suppress(ConnectionClosed):  # it ended: the reader tells the client
                await up.send(data)

    def _queue(self, data: str | bytes) -> None:
        if self.done:
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if len(self.pending) > MAX_QUEUED_MESSAGES or self.pending_bytes > MAX_QUEUED_BYTES:
            self.pending.clear()
            self.pending_bytes = 0
            self.fail(1013, "too many messages queued while the job was unreachable")
            return
        self.proxy.client_activity(self.entry, self.actor, self.hub)

    async def _pump(self, up: ClientConnection) -> None:
        """Upstream → client, until the upstream closes."""
        try:
            async for data in up:
                if isinstance(data, str):
                    await self.send({"type": "websocket.send", "text": data})
                else:
                    await self.send({"type": "websocket.send", "bytes": data})
        except ConnectionClosed:
            pass
        except Exception as exc:  # the client is gone; run() cleans up
            log.debug("websocket to the client of %s failed: %s", self.entry.id, exc)
            return
        if self.detached or self.done:
            return
        # The job's server closed the socket on its own (kernel shut down, server stopped).
        code = up.close_code if up.close_code and up.close_code not in _UNSENDABLE else 1011
        self.fail(code, up.close_reason or "the job's server closed the connection")

    async def detach(self) -> None:
        """Close the upstream side before a checkpoint; returns once what the server sent
        before closing reached the client (or after 3 s)."""
        async with self.lock:
            self.detached = True
            up, self.upstream = self.upstream, None
        if up is not None:
            with contextlib.suppress(Exception):
                await up.close()
        if self.reader is not None:
            await asyncio.wait({self.reader}, timeout=3)

    async def reattach(self, target: Target) -> None:
        """Open the upstream side again at ``target``, send the queued messages in order."""
        if self.done:
            return
        wanted = [self.subprotocol] if self.subprotocol else []
        up: ClientConnection | None = None
        for delay in (0.0, 0.3, 0.6, 1.2):
            await asyncio.sleep(delay)
            try:
                up = await open_upstream(self.req, target, wanted)
                break
            except InvalidStatus as exc:
                status = exc.response.status_code
                self.fail(1011, f"the job's server refused the reconnect (HTTP {status})")
                return
            except (OSError, TimeoutError, ConnectionClosed) as exc:
                log.info("re-attaching a websocket of %s: %s", self.entry.id, exc)
        if up is None:
            self.fail(1011, "cannot reconnect to the job after it moved")
            return
        async with self.lock:
            if self.done:
                await up.close()
                return
            try:
                while self.pending:
                    await up.send(self.pending[0])
                    self.pending_bytes -= len(self.pending.popleft())
            except ConnectionClosed:
                self.fail(1011, "the job's server closed the connection after the move")
                return
            self.detached = False
            self.reader = None
            self.attach(up)

    def fail(self, code: int, reason: str) -> None:
        """Close the client side (what the move hooks do when the job is gone)."""
        if self.done:
            return
        self.done = True
        self.detached = True
        reason = reason.encode()[:120].decode(errors="ignore")

        async def close() -> None:
            with contextlib.suppress(Exception):
                await self.send({"type": "websocket.close", "code": code, "reason": reason})

        spawn(close())
