"""The agent's versioned HTTP API (``/v1``), token-authenticated.

Bodies and answers are the models of :mod:`outgrow.agentapi.models`, the same ones the
client parses. Errors are :class:`~outgrow.agentapi.models.ErrorBody` with the status of
:func:`outgrow.httpstatus.status_for`; the client raises the same error class again.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from outgrow.agent.service import Agent
from outgrow.agentapi.bundle import Unbundler
from outgrow.agentapi.models import (
    CheckpointRequest,
    CheckpointResult,
    CommitRequest,
    DrainResult,
    ErrorBody,
    Health,
    JobNote,
    JobStatus,
    LogChunk,
    Metrics,
    Ok,
    ReceiveRequest,
    ReceiveTicket,
    ReclaimAnswer,
    ReclaimNotice,
    RestoreRequest,
    RestoreResult,
    StartJob,
    StopJob,
    StorageRequest,
    StorageResult,
    Uploaded,
    UploadedBundle,
)
from outgrow.errors import AuthError, OutgrowError
from outgrow.httpstatus import status_for, validation_message

log = logging.getLogger("outgrow.agent")
UPLOAD_BATCH = 4 << 20  # bytes written at once when receiving a checkpoint image


def create_app(agent: Agent, token: str) -> FastAPI:
    app = FastAPI(title="outgrow agent", docs_url=None, redoc_url=None)

    def auth(authorization: str = Header("")) -> None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() not in ("bearer", "token") or not hmac.compare_digest(value, token):
            raise AuthError("missing or invalid agent token")

    @app.exception_handler(OutgrowError)
    async def _err(_: Request, exc: OutgrowError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            log.error("%s: %s\n%s", type(exc).__name__, exc, exc.detail or "")
        body = ErrorBody(
            error=exc.code,
            message=exc.message,
            field=exc.field,
            detail=exc.detail[-4000:] if exc.detail else None,
        )
        return JSONResponse(body.as_dict(), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = validation_message(exc.errors())
        body = ErrorBody(error="invalid", message=message, field=field or None)
        return JSONResponse(body.as_dict(), status_code=422)

    @app.get("/v1/health")
    def health() -> Health:
        # Unauthenticated liveness carries nothing secret: ids and versions only.
        return agent.health()

    deps = [Depends(auth)]
    moves = agent.moves

    @app.post("/v1/job", dependencies=deps)
    def start(body: StartJob) -> JobStatus:
        return agent.start_job(body)

    @app.get("/v1/job", dependencies=deps)
    def status() -> JobStatus:
        return agent.job_status()

    @app.post("/v1/job/stop", dependencies=deps)
    def stop(body: StopJob) -> JobStatus:
        return agent.stop_job(body.grace_s)

    @app.post("/v1/job/note", dependencies=deps)
    def note(body: JobNote) -> JobStatus:
        return agent.note_job(body)

    @app.delete("/v1/job", dependencies=deps)
    def forget() -> Ok:
        agent.forget_job()
        return Ok()

    @app.get("/v1/job/logs", dependencies=deps)
    def logs(stream: str = "stdout", offset: int = 0) -> LogChunk:
        return agent.logs(stream, offset)

    @app.post("/v1/reclaim-notice", dependencies=deps)
    def reclaim(body: ReclaimNotice) -> ReclaimAnswer:
        return agent.reclaim_notice(body.in_s, body.source)

    @app.get("/v1/metrics", dependencies=deps)
    def metrics(since: float = 0.0) -> Metrics:
        return Metrics(samples=agent.sampler.since(since), now=agent.sampler.sample())

    @app.post("/v1/checkpoint", dependencies=deps)
    def checkpoint(body: CheckpointRequest) -> CheckpointResult:
        return moves.checkpoint(body)

    @app.post("/v1/snapshot", dependencies=deps)
    def snapshot(body: CheckpointRequest) -> CheckpointResult:
        return moves.snapshot(body)

    @app.post("/v1/checkpoint/abort", dependencies=deps)
    def abort() -> JobStatus:
        return moves.abort()

    @app.post("/v1/checkpoint/commit", dependencies=deps)
    def commit(body: CommitRequest | None = None) -> JobStatus:
        return moves.commit(keep_images=body.keep_images if body else False)

    @app.delete("/v1/checkpoint", dependencies=deps)
    def discard() -> Ok:
        moves.discard_images()
        return Ok()

    @app.post("/v1/storage/mount", dependencies=deps)
    def mount(body: StorageRequest) -> StorageResult:
        return agent.mount_storage(body.job_id, body.storage.storage())

    @app.post("/v1/storage/release", dependencies=deps)
    def release(body: StorageRequest) -> StorageResult:
        return agent.release_storage(body.job_id, body.storage.storage())

    @app.post("/v1/receive", dependencies=deps)
    def receive(body: ReceiveRequest) -> ReceiveTicket:
        return moves.prepare_receive(
            body.page_server, body.image.model_dump() if body.image else None
        )

    @app.put("/v1/receive/{rid}/files/{name}", dependencies=deps)
    async def upload(rid: str, name: str, request: Request) -> Uploaded:
        path = moves.receive_path(rid, name)
        f = await asyncio.to_thread(path.open, "wb")
        try:
            size = await _stream_into(request, f.write)
        finally:
            await asyncio.to_thread(f.close)
        return Uploaded(name=name, bytes=size)

    @app.put("/v1/receive/{rid}/bundle", dependencies=deps)
    async def upload_bundle(rid: str, request: Request) -> UploadedBundle:
        """Every image file of a checkpoint in one body (agentapi/bundle.py)."""
        u = Unbundler(lambda name: moves.receive_path(rid, name))
        try:
            await _stream_into(request, u.feed)
            u.finish()
        finally:
            await asyncio.to_thread(u.close)
        return UploadedBundle(files=u.files, bytes=u.bytes)

    @app.delete("/v1/receive/{rid}", dependencies=deps)
    def drop(rid: str) -> Ok:
        moves.drop_receive(rid)
        return Ok()

    @app.post("/v1/restore", dependencies=deps)
    def restore(body: RestoreRequest) -> RestoreResult:
        return moves.restore(body)

    @app.post("/v1/restore/drain", dependencies=deps)
    def drain() -> DrainResult:
        return moves.drain()

    return app


async def _stream_into(request: Request, write: Callable[[bytes], object]) -> int:
    """Hand the request's body to ``write`` (blocking: run in a thread) in ~4 MiB batches,
    not per received chunk (64 KiB): a thread hop each made a move's image transfer, which
    is inside the job's downtime, run at a fraction of the link's rate. Checkpoint images
    can be gigabytes: never held whole. Returns the body's size."""
    size = held = 0
    batch: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        batch.append(chunk)
        held += len(chunk)
        if held >= UPLOAD_BATCH:
            await asyncio.to_thread(write, b"".join(batch))
            batch, held = [], 0
    if batch:
        await asyncio.to_thread(write, b"".join(batch))
    return size
