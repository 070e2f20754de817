"""Auth and error mapping for the REST API.

Two ways to authenticate, checked in this order:

* ``Authorization: Bearer <token>`` (or ``token <token>``): the CLI, the SDK, scripts.
* The console's session cookie ``outgrow_session`` (HttpOnly, SameSite=Strict), set by
  ``POST /api/v1/session`` and revoked by ``DELETE /api/v1/session`` (outgrow/web/session.py);
  it holds an ordinary API token made for that login. The stable-URL proxy (``/jobs/<id>/``)
  may read the same cookie, so keep the name.

CSRF: a cookie is sent by the browser on its own, so a cookie-authenticated request that
is not GET/HEAD/OPTIONS must also carry the header ``X-Outgrow-CSRF: 1`` (answered 403
otherwise). A cross-site HTML form cannot set a custom header, and a cross-site ``fetch``
that sets one needs a CORS preflight, which this app never grants; SameSite=Strict is a
second, independent barrier. Bearer-token requests need no such header (nothing is sent
automatically). ``POST``/``DELETE /api/v1/session`` require the header too (no login CSRF).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from outgrow.controlplane.service import ControlPlane
from outgrow.domain.jobs import UserView
from outgrow.errors import OutgrowError
from outgrow.httpstatus import status_for, validation_message

log = logging.getLogger("outgrow.api")
RETRY_AFTER_S = 5


def cp(request: Request) -> ControlPlane:
    plane: ControlPlane = request.app.state.cp
    return plane


def bearer(authorization: str) -> str:
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    return ""


# ---- console session cookie (see the module docstring) ------------------------------------
SESSION_COOKIE = "outgrow_session"
CSRF_HEADER = "X-Outgrow-CSRF"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def check_csrf(request: Request) -> None:
    """403 unless a state-changing request carries ``X-Outgrow-CSRF: 1``."""
    if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
        raise StarletteHTTPException(
            status_code=403,
            detail=f"cookie-authenticated requests need the header {CSRF_HEADER}: 1",
        )


def session_token(request: Request) -> str:
    return request.cookies.get(SESSION_COOKIE, "").strip()


def current_user(request: Request, authorization: Annotated[str, Header()] = "") -> UserView:
    token = bearer(authorization)
    if not token:
        token = session_token(request)
        if token:
            check_csrf(request)
    return cp(request).accounts.authenticate(token)


User = Annotated[UserView, Depends(current_user)]
Plane = Annotated[ControlPlane, Depends(cp)]


async def outgrow_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OutgrowError)
    code = status_for(exc)
    if code >= 500:
        log.error("%s: %s %s", type(exc).__name__, exc, exc.detail or "")
    headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
    if code == 503:  # the database is away: the same request may work in a moment
        headers = {"Retry-After": str(RETRY_AFTER_S)}
    return JSONResponse(exc.to_dict(), status_code=code, headers=headers)


async def validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, field = validation_message(exc.errors())
    return JSONResponse({"error": "invalid", "message": message, "field": field}, status_code=422)


async def http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse({"error": "http", "message": str(exc.detail)}, status_code=exc.status_code)


async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    return JSONResponse(
        {"error": "internal", "message": "internal error; see the server log"}, status_code=500
    )
