"""The REST API: ``/api/v1`` routes, ``/metrics`` and health, with outgrow's error
answers. ``outgrow.server.create_app`` puts the stable-URL proxy and the console beside it."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from outgrow import __version__
from outgrow.api import deps
from outgrow.api.deps import Plane, User
from outgrow.api.schemas import (
    IMAGE_NAME,
    ImageBody,
    LoginBody,
    MigrateBody,
    ModifyBody,
    PullBody,
    ReclaimBody,
    RestoreBody,
    TemplateBody,
    TemplateSubmit,
    TokenBody,
    UserBody,
)
from outgrow.controlplane.prometheus import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from outgrow.controlplane.service import ControlPlane
from outgrow.domain.jobs import (
    EventView,
    ImageView,
    JobView,
    TemplateView,
    TokenView,
    UserView,
    spec_from_mapping,
)
from outgrow.domain.snapshots import SnapshotResult, SnapshotView
from outgrow.errors import OutgrowError, TooLargeError, ValidationError

JobRef = Annotated[str, "job id or name"]


def create_api(plane: ControlPlane) -> FastAPI:
    app = FastAPI(
        title="outgrow",
        version=__version__,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.cp = plane
    app.add_exception_handler(OutgrowError, deps.outgrow_error)
    app.add_exception_handler(RequestValidationError, deps.validation_error)
    app.add_exception_handler(StarletteHTTPException, deps.http_error)
    app.add_exception_handler(Exception, deps.unexpected_error)
    api = APIRouter(prefix="/api/v1")

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @api.post("/login")
    def login(body: LoginBody, cp: Plane) -> dict[str, str]:
        user = cp.accounts.login(body.name, body.password)
        _, secret = cp.accounts.create_token(user, f"login-{int(time.time())}")
        return {"token": secret}

    @api.get("/me")
    def me(user: User) -> UserView:
        return user

    @api.post("/users", status_code=201)
    def add_user(body: UserBody, user: User, cp: Plane) -> UserView:
        return cp.accounts.create_user(user, body.name, body.password, body.is_admin)

    @api.get("/tokens")
    def tokens(user: User, cp: Plane) -> list[TokenView]:
        return cp.accounts.list_tokens(user)

    @api.post("/tokens", status_code=201)
    def new_token(body: TokenBody, user: User, cp: Plane) -> dict[str, Any]:
        view, secret = cp.accounts.create_token(user, body.name)
        return {"token": secret, **view.model_dump(mode="json")}

    @api.delete("/tokens/{token_id}", status_code=204)
    def revoke(token_id: int, user: User, cp: Plane) -> Response:
        cp.accounts.revoke_token(user, token_id)
        return Response(status_code=204)

    @api.post("/instances/{instance_id}/reclaim", status_code=202)
    def reclaim(instance_id: str, body: ReclaimBody, user: User, cp: Plane) -> dict[str, Any]:
        return cp.reclaim_instance(user, instance_id, body.in_s)

    @api.get("/instance-types")
    def instance_types(user: User, cp: Plane) -> list[dict[str, Any]]:
        return cp.instance_types()

    @api.get("/images")
    def images(user: User, cp: Plane) -> list[ImageView]:
        return cp.images.list()

    @api.post("/images", status_code=201)
    def add_image(body: ImageBody, user: User, cp: Plane) -> ImageView:
        return cp.images.add(user, body.name, body.pip, body.base, body.description)

    @api.post("/images/import", status_code=201)
    async def import_image(
        request: Request,
        user: User,
        cp: Plane,
        name: Annotated[str, Query(pattern=IMAGE_NAME, description="the library name")],
    ) -> ImageView:
        """The body is the archive itself (OCI archive, docker/podman save), streamed to a
        file in the data dir, imported into the host cache and registered as ``name``."""
        limit = cp.settings.image_upload_max_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise TooLargeError(f"the archive is over the upload limit of {limit} bytes")
        uploads = cp.settings.data_dir / "uploads"
        uploads.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="image-", suffix=".tar", dir=uploads)
        try:
            size = 0
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise TooLargeError(
                            f"the archive is over the upload limit of {limit} bytes"
                        )
                    f.write(chunk)
            if size == 0:
                raise ValidationError("empty body: send the image archive", field="body")
            path = Path(tmp)
            return await run_in_threadpool(cp.images.import_archive, user, path, name)
        finally:
            Path(tmp).unlink(missing_ok=True)

    @api.post("/images/pull", status_code=201)
    def pull_image(body: PullBody, user: User, cp: Plane) -> ImageView:
        return cp.images.pull(user, body.reference, body.name)

    @api.delete("/images/{name}", status_code=204)
    def rm_image(name: str, user: User, cp: Plane) -> Response:
        cp.images.remove(user, name)
        return Response(status_code=204)

    @api.post("/jobs", status_code=201)
    def submit(
        user: User,
        cp: Plane,
        body: Annotated[dict[str, Any], Body(description="a JobSpec, or {template, overrides}")],
    ) -> JobView:
        if "template" in body:
            t = TemplateSubmit(**body)
            return cp.submit_template(user, t.template, t.overrides)
        return cp.submit(user, spec_from_mapping(body))

    @api.get("/jobs")
    def jobs(
        user: User, cp: Plane, status: Annotated[list[str] | None, Query()] = None
    ) -> list[JobView]:
        return cp.list_jobs(user, status)

    @api.get("/jobs/{ref}")
    def job(ref: JobRef, user: User, cp: Plane) -> JobView:
        return cp.get_job(user, ref)

    @api.patch("/jobs/{ref}")
    def modify(ref: JobRef, body: ModifyBody, user: User, cp: Plane) -> JobView:
        return cp.modify(
            user,
            ref,
            body.migrate_policy,
            body.vm_policy,
            body.idle_timeout_s,
            body.checkpoint_interval,
        )

    @api.delete("/jobs/{ref}", status_code=204)
    def delete_job(ref: JobRef, user: User, cp: Plane) -> Response:
        """Hide a job that has ended (409 otherwise); its name can be used again."""
        cp.delete(user, ref)
        return Response(status_code=204)

    @api.post("/jobs/{ref}/migrate", status_code=202)
    def migrate(ref: JobRef, body: MigrateBody, user: User, cp: Plane) -> JobView:
        return cp.migrate(user, ref, body.instance_type, body.cpu, body.mem, body.mode)

    @api.post("/jobs/{ref}/open")
    def open_link(ref: JobRef, user: User, cp: Plane) -> dict[str, Any]:
        """A one-time browser link to the job's stable URL (good once, for 2 minutes)."""
        return cp.open_link(user, ref)

    @api.post("/jobs/{ref}/suspend", status_code=202)
    def suspend(ref: JobRef, user: User, cp: Plane) -> JobView:
        return cp.suspend(user, ref)

    @api.post("/jobs/{ref}/snapshots", status_code=201)
    def snapshot(ref: JobRef, user: User, cp: Plane) -> SnapshotResult:
        """Take a snapshot of the running job now (answers once it is stored)."""
        return cp.snapshot(user, ref)

    @api.get("/jobs/{ref}/snapshots")
    def snapshots(ref: JobRef, user: User, cp: Plane) -> list[SnapshotView]:
        """The job's snapshots, oldest first."""
        return cp.list_snapshots(user, ref)

    @api.post("/jobs/{ref}/restore")
    def restore(ref: JobRef, body: RestoreBody, user: User, cp: Plane) -> JobView:
        """Roll the running job back to a snapshot on a fresh instance (answers once it
        runs from it; on failure, 4xx/5xx and the job runs on as it was)."""
        return cp.restore(user, ref, body.snapshot)

    @api.post("/jobs/{ref}/resume", status_code=202)
    def resume(ref: JobRef, user: User, cp: Plane) -> JobView:
        return cp.resume(user, ref)

    @api.post("/jobs/{ref}/cancel", status_code=202)
    def cancel(ref: JobRef, user: User, cp: Plane) -> JobView:
        return cp.cancel(user, ref)

    @api.post("/jobs/{ref}/restart", status_code=202)
    def restart(ref: JobRef, user: User, cp: Plane) -> JobView:
        return cp.restart(user, ref)

    @api.get("/jobs/{ref}/logs")
    def logs(
        ref: JobRef,
        user: User,
        cp: Plane,
        stream: str = "stdout",
        offset: Annotated[int, Query(ge=0, le=2**53)] = 0,
    ) -> dict[str, Any]:
        return cp.logs(user, ref, stream, offset)

    @api.get("/jobs/{ref}/events")
    def events(
        ref: JobRef, user: User, cp: Plane, since: Annotated[int, Query(ge=0, le=2**53)] = 0
    ) -> list[EventView]:
        return cp.events(user, ref, since)

    @api.get("/jobs/{ref}/metrics")
    def metrics(
        ref: JobRef,
        user: User,
        cp: Plane,
        t_from: Annotated[float | None, Query(alias="from", ge=0, le=1e11)] = None,
        t_to: Annotated[float | None, Query(alias="to", ge=0, le=1e11)] = None,
        step: Annotated[float | None, Query(gt=0, le=1e7)] = None,
    ) -> dict[str, Any]:
        return cp.metrics(user, ref, t_from, t_to, step)

    @api.post("/jobs/{ref}/template", status_code=201)
    def save_template(ref: JobRef, body: TemplateBody, user: User, cp: Plane) -> TemplateView:
        return cp.save_template(user, ref, body.name)

    @api.get("/templates")
    def templates(user: User, cp: Plane) -> list[TemplateView]:
        return cp.accounts.list_templates(user)

    @api.get("/templates/{name}")
    def template(name: str, user: User, cp: Plane) -> TemplateView:
        return cp.accounts.get_template(user, name)

    @api.delete("/templates/{name}", status_code=204)
    def rm_template(name: str, user: User, cp: Plane) -> Response:
        cp.accounts.delete_template(user, name)
        return Response(status_code=204)

    app.include_router(api)

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus(user: User, cp: Plane) -> Response:
        return Response(cp.views.prometheus(), media_type=PROMETHEUS_CONTENT_TYPE)

    return app
