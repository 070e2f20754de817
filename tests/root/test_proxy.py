"""The stable-URL proxy, for real: a control plane served by uvicorn, a jupyter-server job
on the local provider, real migrations, suspend and resume, all through
``http://127.0.0.1:<port>/jobs/<id>/``."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import re
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from jupyter_ws import CellOutput, KernelSession, create_kernel, list_kernels
from outgrow.controlplane.service import ControlPlane
from outgrow.domain.jobs import JobSpec, UserView
from outgrow.errors import AuthError
from outgrow.providers.local.provider import LocalProvider
from outgrow.proxy import StableUrlProxy
from outgrow.server import create_app
from outgrow.store import Store
from waiting import wait_for_value, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "proxy.py"
    spec = importlib.util.spec_from_file_location("bench_proxy", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    sys.path.insert(0, str(path.parent))  # its sibling imports, as when run from there
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(path.parent))
    return mod


bench = _bench()


@dataclass
class Env:
    plane: ControlPlane
    proxy: StableUrlProxy
    admin: UserView
    token: str  # the admin's outgrow API token
    url: str  # http://127.0.0.1:<port>
    job_id: str

    @property
    def base(self) -> str:
        return f"{self.url}/jobs/{self.job_id}/"

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def view(self) -> Any:
        return self.plane.get_job(self.admin, self.job_id)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from conftest import leftovers, make_settings, unique_prefix

    prefix = unique_prefix()
    tmp = tmp_path_factory.mktemp("proxy")
    settings = make_settings(tmp, prefix)
    store = Store.open(f"sqlite:///{tmp}/outgrow.db")
    provider = LocalProvider(settings)
    plane = ControlPlane(settings, store, provider)
    boot = plane.accounts.bootstrap("pw-123456")
    assert boot is not None
    token = boot[1]
    plane.start()
    try:
        app = create_app(plane)
        with bench.serve(app) as url:
            admin = plane.accounts.authenticate(token)
            job = plane.submit(admin, JobSpec(name="nb", image="jupyter-server", mem="1", cpu="1"))
            bench.wait_status(plane, admin, job.id, "Executing", 600)
            yield Env(plane, app.state.proxy, admin, token, url, job.id)
    finally:
        plane.stop()
        provider.teardown()
        store.close()
    assert leftovers(prefix) == []


def wait_moved(env: Env, type_name: str, timeout: float = 180) -> Any:
    return wait_for_value(
        env.view,
        lambda v: v.status == "Executing" and v.instance and v.instance.type == type_name,
        timeout=timeout,
        interval=0.1,
        what=f"job {env.job_id} Executing on {type_name}",
    )


COUNTER = (
    "import time\nfor i in range(120):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.1)\n"
)


def test_websocket_stays_open_across_a_migration(env: Env) -> None:
    kid = create_kernel(env.base, env.token)
    ks = KernelSession(env.base, env.token, kid)
    assert ks.run("x = 41; x").result == "41"
    before = env.view().instance
    assert before is not None

    msg_id = ks.execute(COUNTER)
    out = CellOutput()
    t0 = time.monotonic()
    migrated_at = moved_at = None
    queued: list[str] = []
    while not out.done:
        # ConnectionClosed here would fail the test: the client socket must never close.
        with contextlib.suppress(TimeoutError):
            ks.collect(msg_id, timeout=0.02, out=out)
        entry = env.proxy.jobs.get(env.job_id)
        if not queued and entry is not None and entry.holding:
            # Upstream closed for the checkpoint: these wait in the proxy, in order.
            queued = [ks.execute("z = 1"), ks.execute("z = z * 10 + 2; z")]
        now = time.monotonic()
        if migrated_at is None and "tick 30" in out.text:  # mid-cell
            env.plane.migrate(env.admin, env.job_id, instance_type="lc.large")
            migrated_at = now
        if migrated_at is not None and moved_at is None:
            v = env.view()
            if v.status == "Executing" and v.instance and v.instance.type == "lc.large":
                moved_at = now
        assert now - t0 < 120, f"cell not done; got {out.text[-300:]!r}"
    done_at = time.monotonic()
    after = wait_moved(env, "lc.large")
    assert moved_at is not None and moved_at < done_at, "the move did not happen mid-cell"
    ticks = [int(n) for n in re.findall(r"tick (\d+)", out.text)]
    assert ticks == list(range(120)), "every line exactly once, in order"
    assert out.error is None
    assert after.instance is not None and after.instance.address != before.address
    moves = [e for e in env.plane.events(env.admin, env.job_id) if e.type == "migration"]
    assert moves and moves[-1].to_type == "lc.large"
    print(
        f"\nmigration mid-cell: {before.address} → {after.instance.address}, downtime "
        f"{moves[-1].downtime_s} s, cell {done_at - t0:.1f} s"
    )
    assert queued, "never saw the job's upstream connections closed"
    assert ks.collect(queued[0], timeout=60).error is None
    assert ks.collect(queued[1], timeout=60).result == "12"  # sent while held, in order
    # Same socket, same kernel, state intact.
    assert ks.run("x + 1").result == "42"
    assert list_kernels(env.base, env.token) == [kid]
    ks.close()


def test_http_is_held_during_a_migration_and_a_suspended_job_resumes(env: Env) -> None:
    client = httpx.Client(headers=env.auth(), timeout=180, trust_env=False)
    assert client.get(env.base + "api/status").status_code == 200
    kid = list_kernels(env.base, env.token)[0] if list_kernels(env.base, env.token) else None
    kid = kid or create_kernel(env.base, env.token)
    ks = KernelSession(env.base, env.token, kid)
    assert ks.run("y = 6; y").result == "6"

    target = "lc.medium"
    env.plane.migrate(env.admin, env.job_id, instance_type=target)
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def get() -> None:
        t = time.monotonic()
        r = client.get(env.base + "api/status")
        with lock:
            results.append((r.status_code, time.monotonic() - t))

    statuses = set()
    with ThreadPoolExecutor(16) as pool:
        futures = []

        def request_and_look() -> Any:
            """One more GET through the proxy (every 50 ms while the job moves)."""
            v = env.view()
            statuses.add(v.status)
            futures.append(pool.submit(get))
            return v

        wait_for_value(
            request_and_look,
            lambda v: v.status == "Executing" and v.instance and v.instance.type == target,
            timeout=180,
            what=f"job {env.job_id} Executing on {target}",
        )
        for f in futures:
            f.result()
    codes = [c for c, _ in results]
    slowest = max(d for _, d in results)
    print(f"\n{len(codes)} requests during the move, slowest {slowest:.2f} s; saw {statuses}")
    assert "Floating" in statuses
    assert codes and all(c == 200 for c in codes), codes
    assert slowest > 0.05, "no request was held"

    # Suspend: the kernel websocket stays open (held); a GET of the stable URL resumes.
    env.plane.suspend(env.admin, env.job_id)
    bench.wait_status(env.plane, env.admin, env.job_id, "Suspended", 180)
    assert env.view().instance is None
    t = time.monotonic()
    r = client.get(env.base + "api/status")
    assert r.status_code == 200, r.text
    print(f"GET on the suspended job: 200 after {time.monotonic() - t:.2f} s (resume)")
    v = env.view()
    assert v.status == "Executing" and v.instance is not None
    assert ks.run("y * 7").result == "42"  # the same websocket, re-attached

    # Suspended again: this time a message on the held websocket resumes the job.
    env.plane.suspend(env.admin, env.job_id)
    bench.wait_status(env.plane, env.admin, env.job_id, "Suspended", 180)
    t = time.monotonic()
    assert ks.run("y * 10", timeout=180).result == "60"
    print(f"a message on the held websocket resumed the job: {time.monotonic() - t:.2f} s")
    assert env.view().status == "Executing"
    ks.close()
    client.close()


def test_auth_and_the_jupyter_token_never_leaks(env: Env) -> None:
    jtoken = env.plane.store.get_job(env.job_id).jupyter_token  # type: ignore[union-attr]
    assert len(jtoken) >= 32
    base = env.base
    seen: list[httpx.Response] = []

    def get(path: str, **kw: Any) -> httpx.Response:
        r = httpx.get(base + path, timeout=60, trust_env=False, **kw)
        seen.append(r)
        return r

    # No credentials / wrong credentials: 401 JSON.
    for kw in ({}, {"headers": {"Authorization": "token og_wrong"}}, {"params": {"token": "x"}}):
        r = get("api/status", **kw)
        assert r.status_code == 401
        assert r.json()["error"] == "unauthorized" and r.json()["message"]
    # Another user cannot see the admin's job: 404, like the API.
    env.plane.accounts.create_user(env.admin, "bob", "password-1")
    bob = env.plane.accounts.login("bob", "password-1")
    _, bob_token = env.plane.accounts.create_token(bob, "t")
    r = get("api/status", headers={"Authorization": f"Bearer {bob_token}"})
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = httpx.get(
        f"{env.url}/api/v1/jobs/{env.job_id}", headers={"Authorization": f"token {bob_token}"}
    )
    assert r.status_code == 404
    with pytest.raises(InvalidStatus) as err:
        connect(
            base.replace("http", "ws") + "api/events/subscribe",
            additional_headers={"Authorization": f"token {bob_token}"},
        )
    assert err.value.response.status_code == 404

    # The admin: header, Bearer, one-time ?token= link → cookie.
    ok = {"Authorization": f"token {env.token}"}
    assert get("api/status", headers=ok).status_code == 200
    assert get("api/kernels", headers={"Authorization": f"Bearer {env.token}"}).is_success
    assert get("api/contents", headers=ok).status_code == 200
    nf = get("api/no/such/thing", headers=ok)
    assert nf.status_code == 404
    assert get("", headers=ok).status_code in (200, 302)
    link = get("tree", params={"token": env.token}, headers={"Accept": "text/html"})
    assert link.status_code == 303 and "token" not in link.headers["location"]
    cookie = link.headers["set-cookie"]
    assert "outgrow_session=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert f"Path=/jobs/{env.job_id}/" in cookie
    session = {"outgrow_session": env.token}
    assert get("api/status", cookies=session).status_code == 200
    # The cookie alone does not let another site change things (CSRF).
    r = httpx.post(
        base + "api/kernels",
        cookies=session,
        headers={"Origin": "http://evil.example"},
        json={"name": "python3"},
        trust_env=False,
    )
    assert r.status_code == 403
    # A websocket to an unknown kernel: the server's 404, passed through.
    with pytest.raises(InvalidStatus) as err:
        connect(
            base.replace("http", "ws") + "api/kernels/nope/channels?session_id=s",
            additional_headers=ok,
        )
    assert err.value.response.status_code == 404
    assert jtoken.encode() not in (err.value.response.body or b"")

    for r in seen:
        assert jtoken not in r.text, r.request.url
        for k, v in r.headers.multi_items():
            assert jtoken not in v, (r.request.url, k)
        assert "username-" not in r.headers.get("set-cookie", "")


def test_overhead_against_direct_access(env: Env) -> None:
    v = env.view()
    assert v.instance is not None
    result = bench.measure(
        env.base,
        f"http://{v.instance.address}:8888/jobs/{env.job_id}/",
        env.token,
        env.plane.proxy_target(env.admin, env.job_id)[3],
        requests=300,
        messages=2000,
        big=32,
        repeat=2,
    )
    print("\n" + "\n".join(bench.problems(result) or ["design targets for the proxy met"]))
    assert result["latency"]["proxy"]["n"] >= 300


class _FakePlane:
    """Just what the proxy asks of a control plane, for a job on a fake upstream."""

    def __init__(self, hold_max: int, port: int = 0):
        self.settings = type("S", (), {"proxy_hold_seconds": 30.0, "proxy_hold_max": hold_max})
        self.user = UserView(id=1, name="u", is_admin=False, created_at=datetime.now(UTC))
        self.accounts = self  # authenticate() is an account's question
        self.hub = type("H", (), {"enabled": False})  # no JupyterHub servers
        self.port = port

    def authenticate(self, token: str) -> UserView:
        if token != "good":
            raise AuthError("bad token")
        return self.user

    def proxy_target(self, actor: UserView, job_id: str) -> tuple[str, str | None, int, str]:
        return "Executing", "127.0.0.1", self.port, "the-jupyter-token"


class _SlowUpstream:
    """A fake job server (ASGI) answering ``<method> <path>``; a ``…/slow`` request stays
    in flight (counted in ``slow``) until the test sets ``release``."""

    def __init__(self) -> None:
        self.slow = 0
        self.release = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["path"].endswith("/slow"):
            self.slow += 1
            await asyncio.to_thread(self.release.wait, 60)
        body = f"{scope['method']} {scope['path']}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def test_requests_in_flight_at_a_checkpoint() -> None:
    """Without a real job: what happens to requests caught by before_checkpoint."""
    from starlette.applications import Starlette

    from outgrow.proxy import ProxyRoute

    plane = _FakePlane(hold_max=4)
    proxy = StableUrlProxy(plane)  # type: ignore[arg-type]
    app = Starlette()
    app.add_middleware(ProxyRoute, proxy=proxy)
    upstream = _SlowUpstream()
    with bench.serve(upstream) as up, bench.serve(app) as url:
        plane.port = int(up.rsplit(":", 1)[1])
        base = f"{url}/jobs/jx/"
        c = httpx.Client(headers={"Authorization": "token good"}, timeout=60, trust_env=False)
        assert c.get(base + "fast").text == "GET /jobs/jx/fast"
        with ThreadPoolExecutor(8) as pool:
            get = pool.submit(c.get, base + "slow")
            post = pool.submit(c.post, base + "slow", content=b"data")
            wait_until(
                lambda: upstream.slow == 2,
                timeout=30,
                what="both /slow requests in flight at the upstream",
            )
            t = time.monotonic()
            proxy.before_checkpoint("jx")  # from this (non-loop) thread, like a worker
            assert time.monotonic() - t < 5
            upstream.release.set()  # too late for the cut exchanges; the re-sent GET is fast
            held = [pool.submit(c.get, base + "fast") for _ in range(3)]
            wait_until(
                lambda: proxy.jobs["jx"].waiting == 4,
                timeout=30,
                what="the re-sent GET /slow and the 3 new GETs held by the proxy",
            )
            proxy.after_move("jx")
            r = get.result()
            assert r.status_code == 200 and r.text == "GET /jobs/jx/slow"  # sent again
            r = post.result()
            assert r.status_code == 503 and r.json()["error"] == "moved"
            assert r.headers["retry-after"] == "1"
            assert [f.result().status_code for f in held] == [200, 200, 200]

            # At most hold_max (4) requests wait per job; the others are told to retry.
            proxy.before_checkpoint("jx")
            held = [pool.submit(c.get, base + "fast") for _ in range(6)]
            wait_until(
                lambda: proxy.jobs["jx"].waiting == 4 and sum(f.done() for f in held) == 2,
                timeout=30,
                what="4 GETs held by the proxy and 2 answered at once",
            )
            proxy.after_move("jx")
            answers = [f.result() for f in held]
        assert sorted(r.status_code for r in answers) == [200] * 4 + [503] * 2
        busy = next(r for r in answers if r.status_code == 503)
        assert busy.json()["error"] == "busy" and busy.headers["retry-after"]
        c.close()
