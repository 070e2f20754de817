"""The agent's versioned HTTP API (``/v1``), token-authenticated.

Errors are JSON ``{"error": code, "message": ...}`` with a 4xx/5xx status; the client
turns them back into AgentError with the same message.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from outgrow import __version__
from outgrow.agent.runtime import JobLaunch
from outgrow.agent.service import Agent, image_spec_from
from outgrow.domain.storage import JobStorage
from outgrow.errors import (
    AuthError,
    ConflictError,
    NotFoundError,
    OutgrowError,
    ValidationError,
)

log = logging.getLogger("outgrow.agent")

_STATUS = {AuthError: 401, NotFoundError: 404, ConflictError: 409, ValidationError: 422}


class ImageBody(BaseModel):
    name: str
    kind: str
    pip: list[str] = Field(default_factory=list)
    description: str = ""
    docs: str = ""
    default_port: int | None = None


class StartBody(BaseModel):
    job_id: str
    kind: str
    image: ImageBody
    script: str = ""
    env: dict[str, str] = Field(default_factory=dict)
    port: int = 8888
    jupyter_token: str = ""
    base_url: str = "/"
    evade_oom: bool = True


class StopBody(BaseModel):
    grace_s: float = Field(5.0, ge=0, le=300)


class CheckpointBody(BaseModel):
    target_url: str | None = None
    target_token: str | None = None
    receive_id: str | None = None
    page_server_port: int | None = None
    dest_dir: str | None = None
    dest_url: str | None = Field(None, pattern=r"^s3://[^/]+/.+")


class ReceiveBody(BaseModel):
    page_server: bool = True


class ReclaimBody(BaseModel):
    in_s: float = Field(30.0, ge=0, le=3600)
    source: str = Field("provider", max_length=40)


class RestoreBody(BaseModel):
    receive_id: str | None = None
    source_dir: str | None = None
    source_url: str | None = Field(None, pattern=r"^s3://[^/]+/.+")
    local_checkpoint: bool = False


class CommitBody(BaseModel):
    keep_images: bool = False


class StorageBody(BaseModel):
    job_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$")
    storage: dict[str, str]


def _storage(d: dict[str, str]) -> JobStorage:
    try:
        return JobStorage.from_dict(d)
    except ValueError as exc:
        raise ValidationError(f"bad storage kind {d.get('kind')!r}", field="storage") from exc


def create_app(agent: Agent, token: str) -> FastAPI:
    app = FastAPI(title="outgrow agent", version=__version__, docs_url=None, redoc_url=None)

    def auth(authorization: str = Header("")) -> None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() not in ("bearer", "token") or not hmac.compare_digest(value, token):
            raise AuthError("missing or invalid agent token")

    @app.exception_handler(OutgrowError)
    async def _err(_: Request, exc: OutgrowError) -> JSONResponse:
        status = next((s for t, s in _STATUS.items() if isinstance(exc, t)), 500)
        if status >= 500:
            log.error("%s: %s\n%s", type(exc).__name__, exc, exc.detail or "")
        body: dict[str, Any] = exc.to_dict()
        if exc.detail:
            body["detail"] = exc.detail[-4000:]
        return JSONResponse(body, status_code=status)

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        # Unauthenticated liveness carries nothing secret: ids and versions only.
        return {**agent.health(), "version": __version__}

    deps = [Depends(auth)]

    @app.post("/v1/job", dependencies=deps)
    def start(body: StartBody) -> dict[str, Any]:
        image = image_spec_from(body.image.model_dump())
        launch = JobLaunch(
            job_id=body.job_id,
            kind=body.kind,  # type: ignore[arg-type]
            python_bin_dir="",
            script=body.script,
            env=body.env,
            port=body.port,
            jupyter_token=body.jupyter_token,
            base_url=body.base_url,
            evade_oom=body.evade_oom,
        )
        if body.kind != image.kind:
            raise ValidationError(
                f"job kind {body.kind} does not match image kind {image.kind}", field="kind"
            )
        return agent.start_job(launch, image)

    @app.get("/v1/job", dependencies=deps)
    def status() -> dict[str, Any]:
        return agent.job_status()

    @app.post("/v1/job/stop", dependencies=deps)
    def stop(body: StopBody) -> dict[str, Any]:
        return agent.stop_job(body.grace_s)

    @app.delete("/v1/job", dependencies=deps)
    def forget() -> dict[str, Any]:
        agent.forget_job()
        return {"ok": True}

    @app.get("/v1/job/logs", dependencies=deps)
    def logs(stream: str = "stdout", offset: int = 0) -> dict[str, Any]:
        return agent.logs(stream, offset)

    @app.post("/v1/reclaim-notice", dependencies=deps)
    def reclaim(body: ReclaimBody) -> dict[str, Any]:
        return agent.reclaim_notice(body.in_s, body.source)

    @app.get("/v1/metrics", dependencies=deps)
    def metrics(since: float = 0.0) -> dict[str, Any]:
        return {"samples": agent.metrics(since), "now": agent.sample()}

    @app.post("/v1/checkpoint", dependencies=deps)
    def checkpoint(body: CheckpointBody) -> dict[str, Any]:
        return agent.checkpoint(**body.model_dump())

    @app.post("/v1/checkpoint/abort", dependencies=deps)
    def abort() -> dict[str, Any]:
        return agent.abort()

    @app.post("/v1/checkpoint/commit", dependencies=deps)
    def commit(body: CommitBody | None = None) -> dict[str, Any]:
        return agent.commit(keep_images=body.keep_images if body else False)

    @app.delete("/v1/checkpoint", dependencies=deps)
    def discard() -> dict[str, Any]:
        agent.discard_images()
        return {"ok": True}

    @app.post("/v1/storage/mount", dependencies=deps)
    def mount(body: StorageBody) -> dict[str, Any]:
        return agent.mount_storage(body.job_id, _storage(body.storage))

    @app.post("/v1/storage/release", dependencies=deps)
    def release(body: StorageBody) -> dict[str, Any]:
        return agent.release_storage(body.job_id, _storage(body.storage))

    @app.post("/v1/receive", dependencies=deps)
    def receive(body: ReceiveBody) -> dict[str, Any]:
        return agent.prepare_receive(body.page_server)

    @app.put("/v1/receive/{rid}/files/{name}", dependencies=deps)
    async def upload(rid: str, name: str, request: Request) -> dict[str, Any]:
        path = agent.receive_path(rid, name)
        size = 0
        # Stream to disk chunk by chunk: checkpoint images can be gigabytes.
        f = await asyncio.to_thread(path.open, "wb")
        try:
            async for chunk in request.stream():
                size += len(chunk)
                await asyncio.to_thread(f.write, chunk)
        finally:
            await asyncio.to_thread(f.close)
        return {"name": name, "bytes": size}

    @app.delete("/v1/receive/{rid}", dependencies=deps)
    def drop(rid: str) -> dict[str, Any]:
        agent.drop_receive(rid)
        return {"ok": True}

    @app.post("/v1/restore", dependencies=deps)
    def restore(body: RestoreBody) -> dict[str, Any]:
        return agent.restore(**body.model_dump())

    return app
