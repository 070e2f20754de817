"""Typed HTTP client of the agent API, used by the control plane and by peer agents.

Every answer is parsed into its model (``agentapi.models``). An error answer is raised
again as the outgrow error of the same code (a ConflictError on the agent is a
ConflictError here, with the agent's detail); an agent that cannot be reached, answers
too late or breaks the protocol is an :class:`~outgrow.errors.AgentError`.

:class:`AgentApi` is the protocol callers depend on, so tests can hand in fakes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from outgrow.agentapi import bundle
from outgrow.agentapi.models import (
    CheckpointRequest,
    CheckpointResult,
    CommitRequest,
    DrainResult,
    ErrorBody,
    Health,
    ImageBody,
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
    StorageBody,
    StorageRequest,
    StorageResult,
    Uploaded,
    UploadedBundle,
)
from outgrow.domain.storage import JobStorage
from outgrow.errors import AgentError, AuthError, OutgrowError, error_class

CONNECT_TIMEOUT = 5.0  # seconds; agents are one network hop away
LONG_S = 900.0  # a checkpoint, restore or storage move of a big job
M = TypeVar("M", bound=BaseModel)


class AgentApi(Protocol):
    """What callers of an agent use (AgentClient, or a fake in tests)."""

    url: str

    def __enter__(self) -> Self: ...

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def health(self, timeout: float = 3.0) -> Health: ...
    def start_job(self, body: StartJob) -> JobStatus: ...
    def job(self) -> JobStatus: ...
    def stop_job(self, grace_s: float = 5.0) -> JobStatus: ...
    def note_job(self, note: JobNote) -> JobStatus: ...
    def forget_job(self) -> Ok: ...
    def logs(self, stream: str = "stdout", offset: int = 0) -> LogChunk: ...
    def reclaim_notice(self, in_s: float, source: str = "provider") -> ReclaimAnswer: ...
    def metrics(self, since: float = 0.0) -> Metrics: ...
    def checkpoint(self, req: CheckpointRequest, timeout: float = LONG_S) -> CheckpointResult: ...
    def snapshot(self, req: CheckpointRequest, timeout: float = LONG_S) -> CheckpointResult: ...
    def abort(self) -> JobStatus: ...
    def commit(self, keep_images: bool = False) -> JobStatus: ...
    def discard_images(self) -> Ok: ...
    def mount_storage(
        self, job_id: str, storage: JobStorage, timeout: float = LONG_S
    ) -> StorageResult: ...
    def release_storage(
        self, job_id: str, storage: JobStorage, timeout: float = LONG_S
    ) -> StorageResult: ...
    def prepare_receive(
        self, page_server: bool = True, image: ImageBody | None = None
    ) -> ReceiveTicket: ...
    def drop_receive(self, rid: str) -> Ok: ...
    def upload(self, rid: str, path: Path) -> Uploaded: ...
    def upload_all(self, rid: str, paths: list[Path]) -> int: ...
    def restore(self, req: RestoreRequest, timeout: float = LONG_S) -> RestoreResult: ...
    def drain(self, timeout: float = LONG_S) -> DrainResult: ...


def remote_error(status: int, body: Any, url: str) -> OutgrowError:
    """The error an agent's error answer stands for."""
    try:
        err = ErrorBody.model_validate(body)
    except ValidationError:
        return AgentError(f"agent at {url} answered {status}", detail=str(body)[:300])
    cls = error_class(err.error)
    if cls is None or cls is AuthError:
        # A refused agent token is our misconfiguration, not the user's credentials.
        return AgentError(f"agent at {url}: {err.message}", detail=err.detail)
    return cls(err.message, detail=err.detail, field=err.field)


class AgentClient:
    def __init__(self, url: str, token: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT),
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(
        self,
        model: type[M],
        method: str,
        path: str,
        *,
        body: BaseModel | None = None,
        timeout: float | None = None,
        **kw: Any,
    ) -> M:
        if body is not None:
            # Defaults are left out: an agent of the previous release (instances outlive a
            # control plane upgrade) accepts a request whose new fields are unset.
            kw["json"] = body.model_dump(mode="json", exclude_defaults=True)
        try:
            # A long call may wait long for its answer, never long for a connection: an
            # unreachable peer (a dropped SYN) must fail in seconds, not after 900.
            limit = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT) if timeout else None
            r = self._http.request(method, path, timeout=limit or httpx.USE_CLIENT_DEFAULT, **kw)
        except httpx.TimeoutException as exc:
            raise AgentError(f"agent at {self.url} did not answer {method} {path} in time") from exc
        except httpx.HTTPError as exc:
            raise AgentError(f"agent at {self.url} unreachable: {exc}") from exc
        try:
            data = r.json()
        except ValueError:
            data = r.text[:300]
        if r.status_code >= 400:
            raise remote_error(r.status_code, data, self.url)
        if isinstance(data, dict):  # fields a newer agent added are not this one's business
            data = {k: v for k, v in data.items() if k in model.model_fields}
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise AgentError(
                f"agent at {self.url} gave an unexpected answer to {method} {path}",
                detail=str(exc),
            ) from exc

    def health(self, timeout: float = 3.0) -> Health:
        return self._call(Health, "GET", "/v1/health", timeout=timeout)

    def start_job(self, body: StartJob) -> JobStatus:
        return self._call(JobStatus, "POST", "/v1/job", body=body)

    def job(self) -> JobStatus:
        return self._call(JobStatus, "GET", "/v1/job")

    def stop_job(self, grace_s: float = 5.0) -> JobStatus:
        req = StopJob(grace_s=grace_s)
        return self._call(JobStatus, "POST", "/v1/job/stop", body=req, timeout=grace_s + 30)

    def forget_job(self) -> Ok:
        return self._call(Ok, "DELETE", "/v1/job")

    def note_job(self, note: JobNote) -> JobStatus:
        """Tell the job where it runs (its instance type, its last move)."""
        return self._call(JobStatus, "POST", "/v1/job/note", body=note)

    def logs(self, stream: str = "stdout", offset: int = 0) -> LogChunk:
        params = {"stream": stream, "offset": offset}
        return self._call(LogChunk, "GET", "/v1/job/logs", params=params)

    def reclaim_notice(self, in_s: float, source: str = "provider") -> ReclaimAnswer:
        body = ReclaimNotice(in_s=in_s, source=source)
        return self._call(ReclaimAnswer, "POST", "/v1/reclaim-notice", body=body)

    def metrics(self, since: float = 0.0) -> Metrics:
        return self._call(Metrics, "GET", "/v1/metrics", params={"since": since})

    def checkpoint(self, req: CheckpointRequest, timeout: float = LONG_S) -> CheckpointResult:
        return self._call(CheckpointResult, "POST", "/v1/checkpoint", body=req, timeout=timeout)

    def snapshot(self, req: CheckpointRequest, timeout: float = LONG_S) -> CheckpointResult:
        """A checkpoint the job runs on from (frozen for the dump only)."""
        return self._call(CheckpointResult, "POST", "/v1/snapshot", body=req, timeout=timeout)

    def abort(self) -> JobStatus:
        return self._call(JobStatus, "POST", "/v1/checkpoint/abort", timeout=60)

    def commit(self, keep_images: bool = False) -> JobStatus:
        body = CommitRequest(keep_images=keep_images)
        return self._call(JobStatus, "POST", "/v1/checkpoint/commit", body=body)

    def discard_images(self) -> Ok:
        return self._call(Ok, "DELETE", "/v1/checkpoint")

    def mount_storage(
        self, job_id: str, storage: JobStorage, timeout: float = LONG_S
    ) -> StorageResult:
        body = StorageRequest(job_id=job_id, storage=StorageBody.of(storage))
        return self._call(StorageResult, "POST", "/v1/storage/mount", body=body, timeout=timeout)

    def release_storage(
        self, job_id: str, storage: JobStorage, timeout: float = LONG_S
    ) -> StorageResult:
        body = StorageRequest(job_id=job_id, storage=StorageBody.of(storage))
        path = "/v1/storage/release"
        return self._call(StorageResult, "POST", path, body=body, timeout=timeout)

    def prepare_receive(
        self, page_server: bool = True, image: ImageBody | None = None
    ) -> ReceiveTicket:
        body = ReceiveRequest(page_server=page_server, image=image)
        # Preparing an image may fetch and unpack it: minutes, not seconds.
        timeout = LONG_S if image is not None else None
        return self._call(ReceiveTicket, "POST", "/v1/receive", body=body, timeout=timeout)

    def drop_receive(self, rid: str) -> Ok:
        return self._call(Ok, "DELETE", f"/v1/receive/{rid}")

    def upload(self, rid: str, path: Path) -> Uploaded:
        def chunks() -> Iterator[bytes]:
            with path.open("rb") as f:
                while data := f.read(1 << 20):
                    yield data

        url = f"/v1/receive/{rid}/files/{path.name}"
        return self._call(Uploaded, "PUT", url, content=chunks(), timeout=LONG_S)

    def upload_all(self, rid: str, paths: list[Path]) -> int:
        """Send image files to a receive: one bundle (bundle.py) when the agent takes
        it, else one PUT per file (an agent of the previous release). Returns the files
        sent."""
        if bundle.FEATURE in self.health().features:
            url = f"/v1/receive/{rid}/bundle"
            sent = self._call(
                UploadedBundle, "PUT", url, content=bundle.frames(paths), timeout=LONG_S
            )
            if sent.files != len(paths):
                raise AgentError(
                    f"agent at {self.url} took {sent.files} of {len(paths)} image files"
                )
            return sent.files
        for p in paths:
            self.upload(rid, p)
        return len(paths)

    def restore(self, req: RestoreRequest, timeout: float = LONG_S) -> RestoreResult:
        return self._call(RestoreResult, "POST", "/v1/restore", body=req, timeout=timeout)

    def drain(self, timeout: float = LONG_S) -> DrainResult:
        """Wait until a post-copy restore has every page (or its transfer broke)."""
        return self._call(DrainResult, "POST", "/v1/restore/drain", timeout=timeout)
