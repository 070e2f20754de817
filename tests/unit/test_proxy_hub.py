"""The proxy's JupyterHub pass-through (outgrow/proxy/hub.py): which path reaches which
job, and which of the client's headers go upstream."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from outgrow.domain.jobs import UserView
from outgrow.proxy.hub import (
    HubRoutes,
    Routes,
    http_headers,
    parse_hub,
    valid_host,
    ws_headers,
    ws_url,
)

HUB = UserView(id=7, name="jupyterhub", is_admin=False, created_at=datetime.now(UTC))
TABLE: Routes = {
    "/user/ann/": ("j-ann", HUB),
    "/user/ann/gpu/": ("j-ann-gpu", HUB),
    "/user/b%40x.org/": ("j-b", HUB),
}


def _find(path: str, table: Routes = TABLE) -> Any:
    routes = HubRoutes("/user/", lambda: dict(table))
    return asyncio.run(routes.find(path))


@pytest.mark.parametrize(
    ("path", "job"),
    [
        ("/user/ann/", "j-ann"),
        ("/user/ann", "j-ann"),  # the hub redirects it; it is still ann's
        ("/user/ann/lab/tree/x.ipynb", "j-ann"),
        ("/user/ann/api/kernels/1/channels", "j-ann"),
        ("/user/ann/gpu/api/status", "j-ann-gpu"),  # the longest prefix wins
        ("/user/ann/gpux/", "j-ann"),  # a path segment, not a string prefix
        ("/user/b%40x.org/lab", "j-b"),  # as the hub escapes names
        ("/user/annie/", None),
        ("/user/", None),
        ("/user/b@x.org/lab", None),  # not the prefix the hub registered
        ("/user/ann/../bob/", None),  # dot segments are refused
        ("/user/ann/%2E%2E/bob/", None),
        ("/user/ann/gpu/./x", None),
    ],
)
def test_paths_reach_the_job_of_the_longest_prefix(path: str, job: str | None) -> None:
    found = _find(path)
    assert (found[0] if found else None) == job


def test_a_new_prefix_is_found_at_once() -> None:
    table: Routes = {}
    routes = HubRoutes("/user/", lambda: dict(table))
    assert asyncio.run(routes.find("/user/new/")) is None
    table["/user/new/"] = ("j-new", HUB)
    routes.at -= 1  # what a spawn's first request sees a moment later
    assert asyncio.run(routes.find("/user/new/")) == ("j-new", "/user/new/", HUB)


def _scope(headers: list[tuple[bytes, bytes]], kind: str = "http") -> dict[str, Any]:
    return {
        "type": kind,
        "method": "GET",
        "path": "/user/ann/api/kernels",
        "raw_path": b"/user/ann/api/kernels",
        "query_string": b"token=hubtoken&x=1",
        "headers": headers,
        "scheme": "http",
        "server": ("127.0.0.1", 8610),
        "client": ("127.0.0.1", 5555),
    }


BROWSER = [
    (b"host", b"hub.example:8000"),
    (b"origin", b"http://hub.example:8000"),
    (b"cookie", b"jupyterhub-user-ann=abc; outgrow_session=og_secret; _xsrf=xyz"),
    (b"x-xsrftoken", b"xyz"),
    (b"connection", b"keep-alive, x-drop-me"),
    (b"x-drop-me", b"1"),
    (b"x-forwarded-for", b"10.0.0.1"),
    (b"x-forwarded-proto", b"https"),
    (b"content-length", b"0"),
]


def test_http_requests_pass_through_minus_outgrow_credentials() -> None:
    req = parse_hub(_scope([*BROWSER, (b"authorization", b"token og_outgrowtoken")]))
    assert req.query == b"token=hubtoken&x=1"  # a hub token in the query goes through
    sent = dict(http_headers(req))
    assert sent[b"host"] == b"hub.example:8000"  # the server checks Origin against it
    assert sent[b"origin"] == b"http://hub.example:8000"
    assert sent[b"cookie"] == b"jupyterhub-user-ann=abc; _xsrf=xyz"  # no outgrow_session
    assert b"authorization" not in sent  # an outgrow token never reaches a user's server
    assert sent[b"x-xsrftoken"] == b"xyz"
    assert sent[b"x-forwarded-for"] == b"10.0.0.1, 127.0.0.1"
    assert sent[b"x-forwarded-proto"] == b"https"  # what the hub's proxy said
    for dropped in (b"connection", b"x-drop-me", b"content-length"):
        assert dropped not in sent


def test_a_hub_token_in_authorization_goes_through() -> None:
    req = parse_hub(_scope([*BROWSER, (b"authorization", b"token 0123abcdef")]))
    assert dict(http_headers(req))[b"authorization"] == b"token 0123abcdef"
    req = parse_hub(_scope([*BROWSER, (b"authorization", b"Bearer h")], "websocket"))
    ws = {k.lower(): v for k, v in ws_headers(req)}  # names are case-insensitive
    assert ws["authorization"] == "Bearer h"
    assert ws["origin"] == "http://hub.example:8000"
    assert ws["cookie"] == "jupyterhub-user-ann=abc; _xsrf=xyz"
    assert "host" not in ws  # it comes from the URL:
    assert ws_url(req) == "ws://hub.example:8000/user/ann/api/kernels?token=hubtoken&x=1"


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("hub.example:8000", True),
        ("127.0.0.1:38123", True),
        ("[::1]:8000", True),
        ("hub.example", True),
        ("evil/path", False),
        ("a b", False),
        ("host:99999999", False),
    ],
)
def test_only_plain_host_headers_are_used(host: str, ok: bool) -> None:
    req = parse_hub(_scope([(b"host", host.encode())]))
    assert valid_host(req) is ok
