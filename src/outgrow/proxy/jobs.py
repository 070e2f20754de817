"""Per-job state of the proxy: where the job is, who waits for it, what is open to it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from outgrow.domain.jobs import UserView
from outgrow.proxy.upstream import Pool

log = logging.getLogger("outgrow.proxy")

TARGET_TTL_S = 0.5  # status/address are re-read from the store at most this often per user


@dataclass(frozen=True)
class Target:
    status: str
    address: str | None
    port: int  # where the job's Jupyter server listens (its image's port)
    token: str  # the job's own Jupyter token: sent upstream, never to the client
    at: float

    @property
    def origin(self) -> str:
        return f"http://{self.address}:{self.port}"


class Bridge(Protocol):
    """A browser WebSocket bridged to the job (proxy/ws.py), as the rest of the proxy
    sees it across a move."""

    actor: UserView
    hub: bool  # a JupyterHub server's websocket, passed through (hub.py)
    detached: bool  # the job is moving: what the client sends is queued
    done: bool  # the client side is closed
    pending: deque[str | bytes]

    async def detach(self) -> None: ...
    async def reattach(self, target: Target) -> None: ...
    def fail(self, code: int, reason: str) -> None: ...


class Activity(Protocol):
    def client_activity(self, entry: JobEntry, actor: UserView, hub: bool = False) -> None:
        """A held websocket got a message (a suspended job is resumed for it)."""


@dataclass
class JobEntry:
    id: str
    holding: bool = False  # between before_checkpoint and after_move
    epoch: int = 0  # +1 at every detach: work begun in an older epoch is stale
    waiting: int = 0  # requests held right now
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    targets: dict[int, Target] = field(default_factory=dict)  # user id (-1: hub) → lookup
    bridges: set[Bridge] = field(default_factory=set)
    inflight: set[asyncio.Task[Any]] = field(default_factory=set)
    upstream: Pool | None = None
    move_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    resume_at: float = 0.0
    watcher: asyncio.Task[None] | None = None

    def notify(self) -> None:
        """Wake every held request: the job's state changed."""
        self.targets.clear()
        self.changed.set()
        self.changed = asyncio.Event()

    def cached(self, user_id: int) -> Target | None:
        t = self.targets.get(user_id)
        return t if t is not None and time.monotonic() - t.at < TARGET_TTL_S else None

    def pool(self, address: str, port: int) -> Pool:
        """One keep-alive pool per job and address: closing it closes every upstream HTTP
        connection of the job (CRIU must see no outside peers)."""
        if self.upstream is None or (self.upstream.host, self.upstream.port) != (address, port):
            old = self.upstream
            if old is not None:
                spawn(old.close())
            self.upstream = Pool(address, port)
        return self.upstream

    async def close_pool(self) -> None:
        pool, self.upstream = self.upstream, None
        if pool is not None:
            await pool.close()


_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> None:
    """Run ``coro`` in the background, keeping a reference until it ends."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_done)


def _done(task: asyncio.Task[Any]) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("proxy background task failed: %s", task.exception())
