"""Answers the proxy gives itself (not forwarded from the job): JSON errors for HTTP and for
refused WebSocket handshakes, in the API's error shape ``{"error", "message"}``."""

from __future__ import annotations

import json

from starlette.types import Scope, Send

from outgrow.errors import OutgrowError
from outgrow.httpstatus import status_for

Headers = list[tuple[bytes, bytes]]


class ProxyError(Exception):
    """An answer of the proxy itself: status, error code, one-line message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: int | None = None,
        headers: Headers | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers: Headers = list(headers or [])
        if retry_after is not None:
            self.headers.append((b"retry-after", str(retry_after).encode()))

    @classmethod
    def of(cls, exc: OutgrowError) -> ProxyError:
        status = status_for(exc)
        headers = [(b"www-authenticate", b"Bearer")] if status == 401 else None
        if status == 503:  # the database is away: say so, and when to try again
            return cls(status, exc.code, exc.message, retry_after=5)
        message = exc.message if status < 500 else "internal error; see the server log"
        return cls(status, exc.code if status < 500 else "internal", message, headers=headers)


def unauthorized() -> ProxyError:
    return ProxyError(
        401,
        "unauthorized",
        "missing or invalid API token: send 'Authorization: token <API token>' "
        "(or Bearer), or open the URL once with ?token=<API token>",
        headers=[(b"www-authenticate", b"Bearer")],
    )


def json_body(code: str, message: str) -> bytes:
    return json.dumps({"error": code, "message": message}).encode()


async def send_http(
    send: Send, status: int, body: bytes, headers: Headers, content_type: bytes
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def refuse(
    scope: Scope,
    send: Send,
    status: int,
    body: bytes,
    headers: Headers | None = None,
    content_type: bytes = b"application/json",
) -> None:
    """Answer an HTTP request, or refuse a WebSocket handshake with a real HTTP answer
    (ASGI ``websocket.http.response`` extension; a bare close where it is missing)."""
    headers = headers or []
    if scope["type"] == "http":
        await send_http(send, status, body, headers, content_type)
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
        return
    await send({"type": "websocket.close", "code": 1013 if status == 503 else 1008})


async def send_error(scope: Scope, send: Send, err: ProxyError) -> None:
    await refuse(scope, send, err.status, json_body(err.code, err.message), err.headers)
