"""StableUrlProxy: the ASGI application behind ``/jobs/<id>/…`` and the control plane's
move hooks (see the package docstring for the design)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import anyio.to_thread
from starlette.types import ASGIApp, Receive, Scope, Send
from websockets.exceptions import InvalidStatus

from outgrow.controlplane.service import ControlPlane
from outgrow.domain.jobs import UserView
from outgrow.domain.states import TERMINAL_STATES
from outgrow.domain.states import JobState as S
from outgrow.errors import ConflictError, OutgrowError
from outgrow.proxy import http
from outgrow.proxy.errors import ProxyError, refuse, send_error
from outgrow.proxy.hub import HubRoutes, parse_hub, valid_host
from outgrow.proxy.jobs import JobEntry, Target, spawn
from outgrow.proxy.request import Authenticator, Identity, Incoming, parse, session_cookie
from outgrow.proxy.ws import WsBridge, open_upstream

log = logging.getLogger("outgrow.proxy")

HOLD_STATES = frozenset({S.FLOATING, S.SUSPENDING, S.SUSPENDED, S.RESUMING})
SERVING_STATES = frozenset({S.EXECUTING, S.FLOATING})  # unless the move hooks hold it
STARTING_STATES = frozenset({S.SUBMITTED, S.INITIALIZING, S.STARTING, S.NO_AVAILABLE_HOST})
RETRYABLE = frozenset({"GET", "HEAD", "OPTIONS"})
HOOK_TIMEOUT_S = 5.0
POLL_S = 1.0  # held requests re-check the job's state at least this often
RESUME_EVERY_S = 1.0
WATCH_EVERY_S = 1.0
# What a broken or vanished upstream raises (refused, reset, timed out, malformed answer).
UPSTREAM_ERRORS = (OSError, TimeoutError, EOFError, ValueError, asyncio.LimitOverrunError)


HUB_KEY = -1  # the target cache's key for pass-through (hub) lookups: no user's


class StableUrlProxy:
    """Serves ``/jobs/<id>/…`` and, when JupyterHub servers are enabled, the hub's
    ``/user/…`` (see ``ProxyRoute``); register it with ``plane.move_hooks.append(proxy)``."""

    def __init__(self, plane: ControlPlane):
        self.plane = plane
        self.hold_s = float(plane.settings.proxy_hold_seconds)
        self.hold_max = int(plane.settings.proxy_hold_max)
        self.auth = Authenticator(plane)
        self.jobs: dict[str, JobEntry] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.hub: HubRoutes | None = None  # JupyterHub servers, when enabled (hub.py)
        if plane.hub.enabled:
            self.hub = HubRoutes(plane.settings.jupyterhub_path, plane.hub.routes)

    # ---- ASGI -----------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return
        self.loop = asyncio.get_running_loop()
        req = parse(scope)
        if req is None and self.hub is not None and self.hub.serves(scope["path"]):
            await self._guarded(scope, send, self._hub(scope, receive, send))
            return
        if req is None:
            await send_error(scope, send, ProxyError(404, "not_found", "no such job"))
            return
        if isinstance(req, str):
            if scope["type"] == "http":
                await refuse(scope, send, 308, b"", [(b"location", req.encode("latin-1"))])
            else:
                await send_error(scope, send, ProxyError(404, "not_found", "no such path"))
            return
        await self._guarded(scope, send, self._jobs(req, scope, receive, send))

    async def _guarded(self, scope: Scope, send: Send, work: Coroutine[Any, Any, None]) -> None:
        """Run the request's handling; errors become the proxy's own answers."""
        try:
            await work
        except ProxyError as err:
            await send_error(scope, send, err)
        except OutgrowError as exc:
            await send_error(scope, send, ProxyError.of(exc))
        except Exception:
            path = (scope.get("raw_path") or b"").decode("latin-1")
            log.exception("proxy error on %s", path or scope.get("path"))
            with contextlib.suppress(Exception):  # fails if the answer had begun
                await send_error(scope, send, ProxyError(500, "internal", "proxy error"))

    async def _hub(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A JupyterHub server's request, passed through (hub.py)."""
        assert self.hub is not None
        req = parse_hub(scope)
        found = await self.hub.find(req.raw_path.decode("latin-1"))
        if found is None:
            raise ProxyError(404, "not_found", "no JupyterHub server at this path")
        if not valid_host(req):
            raise ProxyError(400, "bad_request", "invalid Host header")
        req.job_id, req.hub_prefix, owner = found
        who = Identity(owner, "hub", "")
        entry = self.jobs.setdefault(req.job_id, JobEntry(req.job_id))
        if req.kind == "http":
            await self._http(req, who, entry, receive, send)
        else:
            await self._websocket(scope, req, who, entry, receive, send)

    async def _jobs(self, req: Incoming, scope: Scope, receive: Receive, send: Send) -> None:
        """A ``/jobs/<id>/…`` request: outgrow's auth, the job's token injected."""
        who = await self.auth.identify(req)
        if who.via == "query" and req.kind == "http" and _is_navigation(req):
            # A browser opened a one-time link: keep the token in a cookie, not the URL.
            location = req.upstream_path.decode("latin-1")
            cookie = (b"set-cookie", session_cookie(req, who.token))
            await refuse(scope, send, 303, b"", [(b"location", location.encode()), cookie])
            return
        entry = self.jobs.get(req.job_id)
        if entry is None:  # only for jobs the user may see (NotFoundError otherwise)
            entry = JobEntry(req.job_id)
            await self.target(who.user, entry)
            entry = self.jobs.setdefault(req.job_id, entry)
        if req.kind == "http":
            await self._http(req, who, entry, receive, send)
        else:
            await self._websocket(scope, req, who, entry, receive, send)

    async def _http(
        self, req: Incoming, who: Identity, entry: JobEntry, receive: Receive, send: Send
    ) -> None:
        retryable = req.method in RETRYABLE and not http.has_body(req)
        extra = [(b"set-cookie", session_cookie(req, who.token))] if who.via == "query" else []
        hub = req.hub_prefix is not None
        while True:
            target = await self.ready(who.user, entry, hub)
            assert target.address is not None
            ex = http.Exchange()
            pool = entry.pool(target.address, target.port)
            task = asyncio.create_task(http.forward(req, receive, send, pool, target, extra, ex))
            entry.inflight.add(task)  # no await since ready(): a detach cannot miss it
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                task.cancel()
                raise
            finally:
                entry.inflight.discard(task)
            if ex.client_gone or ex.started:
                if not task.cancelled() and task.exception() is not None and not ex.client_gone:
                    log.info("answer from %s cut short: %s", entry.id, task.exception())
                return  # an answer cut by a move ends here: the client sees a short body
            if task.cancelled():  # the job is being checkpointed
                if retryable:
                    continue
                raise ProxyError(
                    503,
                    "moved",
                    "the job moved while this request was in flight; send it again",
                    retry_after=1,
                )
            exc = task.exception()
            if isinstance(exc, UPSTREAM_ERRORS):
                if entry.holding:
                    if retryable:
                        continue
                    raise ProxyError(
                        503, "moved", "the job is moving; send it again", retry_after=1
                    )
                raise ProxyError(502, "bad_gateway", f"cannot reach the job's server: {exc}")
            if exc is not None:
                raise exc
            return

    async def _websocket(
        self,
        scope: Scope,
        req: Incoming,
        who: Identity,
        entry: JobEntry,
        receive: Receive,
        send: Send,
    ) -> None:
        offered = list(scope.get("subprotocols") or [])
        while True:
            target = await self.ready(who.user, entry, req.hub_prefix is not None)
            task = asyncio.create_task(self._connect(req, who.user, entry, target, offered, send))
            entry.inflight.add(task)  # no await since ready(): a detach cannot miss it
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                task.cancel()
                raise
            finally:
                entry.inflight.discard(task)
            if task.cancelled():
                continue  # a checkpoint began while connecting: wait, connect again
            exc = task.exception()
            if isinstance(exc, InvalidStatus):  # e.g. 404 for an unknown kernel
                r = exc.response
                body = http.Masker(target.token).text(bytes(r.body or b""))
                ctype = (r.headers.get("Content-Type") or "text/plain").encode("latin-1")
                await refuse(scope, send, r.status_code, body, content_type=ctype)
                return
            if exc is not None:
                if entry.holding:
                    continue
                raise ProxyError(502, "bad_gateway", f"cannot reach the job's server: {exc}")
            bridge = task.result()
            # Registered as soon as it connected: if a checkpoint began since, the bridge is
            # already detached, and the client is held open until the job is back.
            await send({"type": "websocket.accept", "subprotocol": bridge.subprotocol})
            bridge.start()
            await bridge.run(receive)
            return

    async def _connect(
        self,
        req: Incoming,
        actor: UserView,
        entry: JobEntry,
        target: Target,
        offered: list[str],
        send: Send,
    ) -> WsBridge:
        up = await open_upstream(req, target, offered)
        bridge = WsBridge(self, entry, req, actor, send)
        bridge.attach(up, start=False)
        entry.bridges.add(bridge)
        return bridge

    # ---- where the job is, holding while it moves ----------------------------------
    async def target(self, actor: UserView, entry: JobEntry, hub: bool = False) -> Target:
        """Where the job is now, as ``actor`` may see it (``hub``: a JupyterHub server's,
        passed through: no token to inject)."""
        key = HUB_KEY if hub else actor.id
        hit = entry.cached(key)
        if hit is not None:
            return hit
        if hub:
            status, address, port, _ = await anyio.to_thread.run_sync(
                self.plane.hub.target, entry.id
            )
            token = ""
        else:
            status, address, port, token = await anyio.to_thread.run_sync(
                self.plane.proxy_target, actor, entry.id
            )
        t = Target(status, address, port, token, time.monotonic())
        entry.targets[key] = t
        return t

    async def ready(self, actor: UserView, entry: JobEntry, hub: bool = False) -> Target:
        """The job's target once it runs; holds while it moves, suspends or resumes."""
        deadline = time.monotonic() + self.hold_s
        held = False
        try:
            while True:
                changed = entry.changed
                t = await self.target(actor, entry, hub)
                # Floating before the checkpoint (the target is still being created): the
                # source serves on; before_checkpoint starts the holding (`entry.holding`).
                if t.status in SERVING_STATES and t.address and not entry.holding:
                    return t
                if not (entry.holding or t.status in HOLD_STATES):
                    raise _not_running(entry.id, t.status)
                if not held:
                    if entry.waiting >= self.hold_max:
                        raise ProxyError(
                            503,
                            "busy",
                            f"too many requests waiting for job {entry.id}",
                            retry_after=5,
                        )
                    entry.waiting += 1
                    held = True
                if t.status == S.SUSPENDED and not entry.holding:
                    await self.resume(actor, entry)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProxyError(
                        503,
                        "unavailable",
                        f"job {entry.id} is still {t.status} after {self.hold_s:g} s",
                        retry_after=5,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(left, POLL_S))
        finally:
            if held:
                entry.waiting -= 1

    async def resume(self, actor: UserView, entry: JobEntry) -> None:
        now = time.monotonic()
        if now - entry.resume_at < RESUME_EVERY_S:
            return
        entry.resume_at = now
        try:
            await anyio.to_thread.run_sync(self.plane.resume, actor, entry.id)
            log.info("job %s resumed by %s through its stable URL", entry.id, actor.name)
        except ConflictError:
            pass  # already resuming (or the suspend is still finishing: tried again later)
        entry.targets.clear()

    def client_activity(self, entry: JobEntry, actor: UserView, hub: bool = False) -> None:
        """A held websocket got a message: a suspended job is resumed for it."""
        if not entry.holding:
            spawn(self._wake(entry, actor, hub))

    async def _wake(self, entry: JobEntry, actor: UserView, hub: bool) -> None:
        if (await self.target(actor, entry, hub)).status == S.SUSPENDED and not entry.holding:
            await self.resume(actor, entry)

    # ---- move hooks (called from the control plane's worker threads) ---------------
    def before_checkpoint(self, job_id: str) -> None:
        self._call(job_id, self._detach(job_id), "close the upstream connections of")

    def after_move(self, job_id: str) -> None:
        self._call(job_id, self._reattach(job_id), "re-attach the connections of")

    def _call(self, job_id: str, coro: Coroutine[Any, Any, None], what: str) -> None:
        loop = self.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            coro.close()
            return  # the proxy never served anything: nothing is open
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is loop:
                return  # called on the loop itself: cannot block; it runs next
        try:
            fut.result(timeout=HOOK_TIMEOUT_S)
        except FutureTimeout:
            log.warning("could not %s job %s within %g s", what, job_id, HOOK_TIMEOUT_S)
        except Exception:
            log.exception("could not %s job %s", what, job_id)

    async def _detach(self, job_id: str) -> None:
        entry = self.jobs.setdefault(job_id, JobEntry(job_id))
        async with entry.move_lock:
            entry.holding = True
            entry.epoch += 1
            entry.targets.clear()
            for task in list(entry.inflight):
                task.cancel()
            await asyncio.gather(*(b.detach() for b in list(entry.bridges)))
            if entry.inflight:
                await asyncio.wait(set(entry.inflight), timeout=2)
            await entry.close_pool()

    async def _reattach(self, job_id: str) -> None:
        entry = self.jobs.setdefault(job_id, JobEntry(job_id))
        async with entry.move_lock:
            entry.holding = False
            entry.notify()
            await self._settle(entry)

    async def _settle(self, entry: JobEntry) -> None:
        """Re-attach or close the held websockets of a job according to its state now."""
        held = [b for b in entry.bridges if b.detached and not b.done]
        if not held:
            return
        try:
            t = await self.target(held[0].actor, entry, held[0].hub)
        except OutgrowError:
            t = Target("gone", None, 0, "", time.monotonic())
        if t.status == S.EXECUTING and t.address:
            await asyncio.gather(*(b.reattach(t) for b in held))
        elif t.status in HOLD_STATES:
            self._watch(entry)  # e.g. Suspended: kept open; a message resumes the job
            waiting = next((b for b in held if b.pending), None)
            if t.status == S.SUSPENDED and waiting is not None and not entry.holding:
                await self.resume(waiting.actor, entry)  # again until it is accepted
        else:
            for b in held:
                b.fail(1011, f"job {entry.id} is {t.status}"[:120])

    def _watch(self, entry: JobEntry) -> None:
        """Held websockets outlive the hooks (a suspended job): poll its state meanwhile."""
        if entry.watcher is not None and not entry.watcher.done():
            return

        async def watch() -> None:
            while any(b.detached and not b.done for b in entry.bridges):
                await asyncio.sleep(WATCH_EVERY_S)
                if not entry.holding:
                    async with entry.move_lock:
                        entry.targets.clear()
                        try:
                            await self._settle(entry)
                        except Exception:
                            log.exception("watching the held websockets of %s", entry.id)

        entry.watcher = asyncio.get_running_loop().create_task(watch())


class ProxyRoute:
    """ASGI middleware sending ``/jobs/…`` (and the hub's ``/user/…``, when enabled)
    straight to the proxy, before the API's middleware and route matching (which cost
    ~0.25 ms of CPU per request): ``app.add_middleware(ProxyRoute, proxy=proxy)``."""

    def __init__(self, app: ASGIApp, proxy: StableUrlProxy):
        self.app = app
        self.proxy = proxy
        self.hub = proxy.hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and (
            scope["path"].startswith("/jobs/")
            or (self.hub is not None and self.hub.serves(scope["path"]))
        ):
            await self.proxy(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _not_running(job_id: str, status: str) -> ProxyError:
    if status in STARTING_STATES:
        return ProxyError(503, "starting", f"job {job_id} is {status}", retry_after=5)
    if status in TERMINAL_STATES or status == S.CANCELLING:
        return ProxyError(409, "conflict", f"job {job_id} is {status}; it no longer runs")
    return ProxyError(503, "unavailable", f"job {job_id} is {status}", retry_after=5)


def _is_navigation(req: Incoming) -> bool:
    return req.method == "GET" and "text/html" in req.header(b"accept")
