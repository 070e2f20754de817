"""The console's login session: an HttpOnly, SameSite=Strict cookie holding an API token.

``POST /api/v1/session`` (``{"name", "password"}``) checks the password, creates a new API
token named ``console-<unix time>`` and sets it as the cookie ``outgrow_session``;
``DELETE /api/v1/session`` revokes that token and clears the cookie. Both need the header
``X-Outgrow-CSRF: 1`` (see :mod:`outgrow.api.deps` for the CSRF rules of cookie auth).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from outgrow.api.deps import SESSION_COOKIE, Plane, check_csrf, session_token
from outgrow.api.schemas import LoginBody
from outgrow.domain.jobs import UserView
from outgrow.errors import AuthError

router = APIRouter(prefix="/api/v1", tags=["console session"])
TOKEN_NAME = "console-"


def _set_cookie(request: Request, response: Response, value: str | None) -> None:
    """Set (or, with None, clear) the session cookie with the same attributes."""
    secure = request.url.scheme == "https"
    if value is None:
        response.delete_cookie(
            SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=secure
        )
    else:
        response.set_cookie(
            SESSION_COOKIE, value, path="/", httponly=True, samesite="strict", secure=secure
        )


@router.post("/session")
def create_session(body: LoginBody, request: Request, response: Response, cp: Plane) -> UserView:
    """Log in: sets the session cookie (a new API token) and returns the user."""
    check_csrf(request)
    user = cp.accounts.login(body.name, body.password)
    _, secret = cp.accounts.create_token(user, f"{TOKEN_NAME}{int(time.time())}")
    _set_cookie(request, response, secret)
    return user


@router.delete("/session", status_code=204)
def delete_session(request: Request, cp: Plane) -> Response:
    """Log out: revokes the session's token (if still valid) and clears the cookie."""
    check_csrf(request)
    secret = session_token(request)
    resp = Response(status_code=204)
    _set_cookie(request, resp, None)
    if not secret:
        return resp
    try:
        user = cp.accounts.authenticate(secret)
    except AuthError:
        return resp
    # The store keeps only a hash and the first characters of a token: find this one by its
    # prefix among the user's live console tokens.
    for tok in cp.accounts.list_tokens(user):
        if not tok.revoked and tok.name.startswith(TOKEN_NAME) and secret.startswith(tok.prefix):
            cp.accounts.revoke_token(user, tok.id)
    return resp
