"""A small HTTP/1.1 client for the proxy's upstream leg: one keep-alive pool per job.

Why not httpx: on this path httpx/httpcore cost ~1-3 ms per request (and httpcore retries
a failing ``import sniffio`` on every request when sniffio is not installed), which alone
would break the latency target (≤ 1.2× direct). The upstream is always a jupyter_server
(Tornado) at ``<instance address>:8888`` on the host bridge, so a plain asyncio-streams
client covers it: Content-Length, chunked and read-until-close bodies, both directions
streamed, connections reused when the answer says they may be.

``Pool.close()`` closes every connection, idle or busy: that is how a job's HTTP peers
disappear before a checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 300.0  # a Jupyter request may legitimately take long (kernel start)
HEAD_LIMIT = 256 * 1024
MAX_IDLE = 16
Headers = list[tuple[bytes, bytes]]


class UpstreamClosed(ConnectionError):
    """The connection ended before a complete answer head arrived."""


@dataclass(eq=False)
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()


@dataclass(eq=False)
class Response:
    status: int
    headers: Headers
    conn: Conn
    pool: Pool
    framing: str  # "none", "length", "chunked" or "eof"
    length: int = 0
    keep_alive: bool = True
    done: bool = field(default=False)

    async def body(self) -> AsyncIterator[bytes]:
        r = self.conn.reader
        if self.framing == "length":
            left = self.length
            while left:
                chunk = await _read(r, min(left, 65536))
                left -= len(chunk)
                yield chunk
        elif self.framing == "chunked":
            while True:
                line = await _readline(r)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while (await _readline(r)).strip():  # trailers: dropped
                        pass
                    break
                while size:
                    chunk = await _read(r, min(size, 65536))
                    size -= len(chunk)
                    yield chunk
                await _readline(r)
        elif self.framing == "eof":
            while True:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    chunk = await r.read(65536)
                if not chunk:
                    break
                yield chunk
        self.done = True

    def release(self) -> None:
        """Give the connection back (reused only after a complete answer)."""
        self.pool.release(self.conn, self.done and self.keep_alive)


async def _read(r: asyncio.StreamReader, n: int) -> bytes:
    async with asyncio.timeout(READ_TIMEOUT_S):
        chunk = await r.read(n)
    if not chunk:
        raise UpstreamClosed("the job's server closed the connection mid-answer")
    return chunk


async def _readline(r: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(READ_TIMEOUT_S):
        return await r.readuntil(b"\r\n")


class Pool:
    def __init__(self, host: str, port: int):
        self.host = host
        self.port = port
        self.idle: list[Conn] = []
        self.busy: set[Conn] = set()
        self.closed = False

    async def _acquire(self) -> Conn:
        while self.idle:
            conn = self.idle.pop()
            if conn.usable():
                conn.reused = True
                self.busy.add(conn)
                return conn
            conn.close()
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=HEAD_LIMIT)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Conn(reader, writer)
        self.busy.add(conn)
        if self.closed:  # closed while we connected: this connection must not live on
            self.release(conn, False)
            raise UpstreamClosed("the job's connections were closed")
        return conn

    def release(self, conn: Conn, reusable: bool) -> None:
        self.busy.discard(conn)
        if reusable and not self.closed and conn.usable() and len(self.idle) < MAX_IDLE:
            self.idle.append(conn)
        else:
            conn.close()

    async def close(self) -> None:
        self.closed = True
        conns = self.idle + list(self.busy)
        self.idle.clear()
        self.busy.clear()
        for c in conns:
            c.close()
        for c in conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.writer.wait_closed(), 1.0)

    async def request(
        self,
        method: str,
        target: bytes,
        headers: Headers,
        body: AsyncIterator[bytes] | None = None,
        length: int | None = None,
    ) -> Response:
        """Send a request; returns once the answer's head arrived (read ``body()`` next,
        then ``release()``). A body of unknown ``length`` goes chunked. A request without
        a body that meets a stale keep-alive connection is sent again on a new one."""
        while True:
            conn = await self._acquire()
            try:
                return await self._exchange(conn, method, target, headers, body, length)
            except (UpstreamClosed, ConnectionResetError, BrokenPipeError):
                self.release(conn, False)
                if not (conn.reused and body is None):
                    raise
            except BaseException:
                self.release(conn, False)
                raise

    async def _exchange(
        self,
        conn: Conn,
        method: str,
        target: bytes,
        headers: Headers,
        body: AsyncIterator[bytes] | None,
        length: int | None,
    ) -> Response:
        w = conn.writer
        head = [method.encode() + b" " + target + b" HTTP/1.1"]
        if not any(k == b"host" for k, _ in headers):  # the caller's Host wins (hub.py)
            head.append(b"host: %s:%d" % (self.host.encode(), self.port))
        head += [k + b": " + v for k, v in headers]
        if length is not None:  # also "content-length: 0" when the client said so
            head.append(b"content-length: %d" % length)
        elif body is not None:
            head.append(b"transfer-encoding: chunked")
        w.write(b"\r\n".join(head) + b"\r\n\r\n")
        if body is not None:
            async for chunk in body:
                if length is None:
                    w.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    w.write(chunk)
                await w.drain()
            if length is None:
                w.write(b"0\r\n\r\n")
        await w.drain()
        while True:
            try:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    raw = await conn.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                raise UpstreamClosed("the job's server closed the connection") from exc
            lines = raw.split(b"\r\n")
            version, _, rest = lines[0].partition(b" ")
            status = int(rest[:3])
            if 100 <= status < 200:
                continue  # interim answer (100 Continue): the real one follows
            break
        out: Headers = []
        length_h, chunked, close = None, False, version != b"HTTP/1.1"
        for line in lines[1:]:
            if not line:
                continue
            k, _, v = line.partition(b":")
            k, v = k.strip().lower(), v.strip()
            if k == b"content-length":
                length_h = int(v)
            elif k == b"transfer-encoding":
                chunked = b"chunked" in v.lower()
            elif k == b"connection":
                close = close or b"close" in v.lower()
            out.append((k, v))
        resp = Response(status, out, conn, self, "eof", keep_alive=not close)
        if method == "HEAD" or status in (204, 304):
            resp.framing = "none"
        elif chunked:
            resp.framing = "chunked"
        elif length_h is not None:
            resp.framing, resp.length = "length", length_h
        else:
            resp.keep_alive = False
        if resp.framing == "none" or (resp.framing == "length" and resp.length == 0):
            resp.done = True
        return resp
