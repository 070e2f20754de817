"""The Python SDK of the control plane (sync, httpx): what the CLI and scripts use.

    from outgrow.client import Client
    with Client() as c:                       # URL and token from the credentials file
        job = c.submit({"name": "nb", "image": "jupyter-lab", "mem": "2"})
        job = c.wait(job.id, {"Executing"})
        print(job.url)

Every method returns the pydantic views of ``outgrow.domain.jobs``. Errors follow httpx's
split (the server answered with an error / the request never got an answer), rooted in
OutgrowError and mapped onto ``outgrow.errors`` so callers can catch either::

    OutgrowError
    ├── APIError                     an error answer (status_code, remote_code, field)
    │   ├── APIAuthError             401/403   (also an outgrow.errors.AuthError)
    │   ├── APINotFoundError         404       (also a NotFoundError)
    │   ├── APIConflictError         409       (also a ConflictError)
    │   │   └── APICapacityError     409 "no_capacity" (also a CapacityError)
    │   └── APIValidationError       422       (also a ValidationError)
    └── TransportError               no answer
        ├── ConnectError             cannot connect ("is `outgrow up` running?")
        └── TimeoutException         no answer in time
    WaitTimeout (OutgrowError)       wait() gave up
    JobFailed (OutgrowError)         wait() saw the job reach a state it did not wait for
"""

from __future__ import annotations

import os
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter

from outgrow import credentials
from outgrow.domain.jobs import (
    EventView,
    ImageView,
    JobSpec,
    JobView,
    TemplateView,
    TokenView,
    UserView,
)
from outgrow.domain.oci import suggest_name
from outgrow.domain.snapshots import SnapshotResult, SnapshotView
from outgrow.domain.states import TERMINAL_STATES
from outgrow.errors import (
    AuthError,
    CapacityError,
    ConflictError,
    NotFoundError,
    OutgrowError,
    ValidationError,
)

M = TypeVar("M", bound=BaseModel)
TERMINAL: frozenset[str] = frozenset(s.value for s in TERMINAL_STATES)


# ---- errors ---------------------------------------------------------------------------------


class APIError(OutgrowError):
    """The control plane answered with an error status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        remote_code: str | None = None,
        field: str | None = None,
        detail: str | None = None,
    ):
        super().__init__(message, detail=detail, field=field)
        self.status_code = status_code
        self.remote_code = remote_code


class APIAuthError(APIError, AuthError):
    pass


class APINotFoundError(APIError, NotFoundError):
    pass


class APIConflictError(APIError, ConflictError):
    pass


class APICapacityError(APIConflictError, CapacityError):
    pass


class APIValidationError(APIError, ValidationError):
    pass


class TransportError(OutgrowError):
    """The request got no answer from the control plane."""


class ConnectError(TransportError):
    pass


class TimeoutException(TransportError):
    pass


class WaitTimeout(OutgrowError):
    """``Client.wait`` gave up before the job reached a wanted status."""


class JobFailed(OutgrowError):
    """``Client.wait`` saw the job reach a status it was not waiting for (e.g. failed)."""

    def __init__(self, message: str, job: JobView | None = None):
        super().__init__(message, field="status")
        self.job = job


_BY_STATUS: dict[int, type[APIError]] = {
    401: APIAuthError,
    403: APIAuthError,
    404: APINotFoundError,
    409: APIConflictError,
    422: APIValidationError,
}


def error_from_response(resp: httpx.Response) -> APIError:
    """The exception for an error answer: its class from the HTTP status, its message and
    field from the API's JSON error body ``{"error", "message", "field"}``."""
    code = resp.status_code
    remote: str | None = None
    field: str | None = None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        message = body["message"]
        remote = body.get("error") if isinstance(body.get("error"), str) else None
        field = body["field"] if isinstance(body.get("field"), str) and body["field"] else None
    elif isinstance(body, dict) and isinstance(body.get("detail"), str):
        message = body["detail"]
    else:
        text = " ".join(resp.text.split())[:200]
        message = f"HTTP {code} {resp.reason_phrase}" + (f": {text}" if text else "")
    cls = _BY_STATUS.get(code, APIError)
    if code == 409 and remote == "no_capacity":
        cls = APICapacityError
    return cls(message, status_code=code, remote_code=remote, field=field)


def _unreachable(url: str, exc: httpx.TransportError) -> TransportError:
    why = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return TimeoutException(f"the control plane at {url} did not answer in time: {why}")
    return ConnectError(f"cannot reach the control plane at {url}: {why}; is `outgrow up` running?")


# ---- the client -----------------------------------------------------------------------------


class Client:
    """A connection to one control plane. ``url``/``token`` default to the credentials file
    (``outgrow.credentials``; ``OUTGROW_URL``/``OUTGROW_TOKEN`` override it)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 30,
        *,
        transport: httpx.BaseTransport | None = None,
    ):
        if url is None or token is None:
            try:
                creds = credentials.load()
            except AuthError:
                if url is None:
                    raise
                creds = None  # a URL alone: only health() and login work
            if creds is not None:
                url = url or creds.url
                token = token if token is not None else creds.token
        assert url is not None
        self.url = url.rstrip("/")
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url + "/api/v1",
            headers=headers,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- plumbing -----------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc
        if resp.status_code >= 400:
            raise error_from_response(resp)
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as exc:
            raise OutgrowError(
                f"the control plane at {self.url} answered {path} with non-JSON data"
            ) from exc

    def _model(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        return model.model_validate(self._json(method, path, **kwargs))

    def _models(self, model: type[M], method: str, path: str, **kwargs: Any) -> list[M]:
        return TypeAdapter(list[model]).validate_python(  # type: ignore[valid-type]
            self._json(method, path, **kwargs)
        )

    @staticmethod
    def _job(ref: str) -> str:
        return "/jobs/" + quote(str(ref), safe="")

    # ---- accounts -----------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        data: dict[str, Any] = self._json("GET", "/health")
        return data

    @classmethod
    def login(cls, name: str, password: str, url: str | None = None, timeout: float = 30) -> str:
        """Exchange a user name and password for a new API token (``login-<time>``)."""
        if url is None:
            url = credentials.load().url
        with cls(url, token="", timeout=timeout) as c:
            data = c._json("POST", "/login", json={"name": name, "password": password})
        return str(data["token"])

    def me(self) -> UserView:
        return self._model(UserView, "GET", "/me")

    def create_user(self, name: str, password: str, is_admin: bool = False) -> UserView:
        body = {"name": name, "password": password, "is_admin": is_admin}
        return self._model(UserView, "POST", "/users", json=body)

    def tokens(self) -> list[TokenView]:
        return self._models(TokenView, "GET", "/tokens")

    def create_token(self, name: str) -> tuple[TokenView, str]:
        """A new API token: its view and its secret (shown only now)."""
        data = self._json("POST", "/tokens", json={"name": name})
        secret = data.pop("token")
        return TokenView.model_validate(data), str(secret)

    def revoke_token(self, token_id: int) -> None:
        self._json("DELETE", f"/tokens/{int(token_id)}")

    def open_link(self, ref: str) -> dict[str, Any]:
        """A one-time browser link to the job's stable URL."""
        data: dict[str, Any] = self._json("POST", f"/jobs/{ref}/open")
        return data

    def reclaim_instance(self, instance_id: str, in_s: float = 30.0) -> dict[str, Any]:
        """Admin: announce a spot reclaim of an instance (see ``outgrow instance reclaim``)."""
        data: dict[str, Any] = self._json(
            "POST", f"/instances/{instance_id}/reclaim", json={"in_s": in_s}
        )
        return data

    # ---- catalog and images -------------------------------------------------------------
    def instance_types(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._json("GET", "/instance-types")
        return data

    def images(self) -> list[ImageView]:
        return self._models(ImageView, "GET", "/images")

    def add_image(
        self, name: str, pip: str, base: str | None = None, description: str = ""
    ) -> ImageView:
        body = {"name": name, "pip": pip, "base": base, "description": description}
        return self._model(ImageView, "POST", "/images", json=body)

    def remove_image(self, name: str, timeout: float = 300) -> None:
        # an OCI image's rootfs (hundreds of MiB) is deleted before the answer
        self._json("DELETE", "/images/" + quote(name, safe=""), timeout=timeout)

    def import_image(
        self, path: str | Path, name: str | None = None, timeout: float = 3600
    ) -> ImageView:
        """Upload an image archive (OCI archive, ``docker save``/``podman save``) or an OCI
        layout directory (tarred on the fly: an OCI archive is that tar) and register it
        as ``name`` (default: from the file name). The server verifies and unpacks it."""
        path = Path(path)
        if not path.exists():
            raise ValidationError(f"no such file or directory: {path}", field="path")
        name = name or suggest_name(path.name)
        body = _tar_stream(path) if path.is_dir() else _file_stream(path)
        headers = {"Content-Type": "application/x-tar"}
        if path.is_file():
            headers["Content-Length"] = str(path.stat().st_size)
        return self._model(
            ImageView,
            "POST",
            "/images/import",
            params={"name": name},
            content=body,
            headers=headers,
            timeout=timeout,
        )

    def pull_image(
        self, reference: str, name: str | None = None, timeout: float = 3600
    ) -> ImageView:
        """Have the control plane pull ``reference`` from its registry."""
        body = {"reference": reference, "name": name}
        return self._model(ImageView, "POST", "/images/pull", json=body, timeout=timeout)

    # ---- jobs ---------------------------------------------------------------------------
    def submit(self, spec: dict[str, Any] | JobSpec) -> JobView:
        body = spec.model_dump(mode="json") if isinstance(spec, JobSpec) else dict(spec)
        return self._model(JobView, "POST", "/jobs", json=body)

    def submit_template(self, name: str, overrides: dict[str, Any] | None = None) -> JobView:
        body = {"template": name, "overrides": overrides or {}}
        return self._model(JobView, "POST", "/jobs", json=body)

    def jobs(self, status: str | Iterable[str] | None = None) -> list[JobView]:
        statuses = [status] if isinstance(status, str) else list(status or [])
        return self._models(JobView, "GET", "/jobs", params={"status": statuses})

    def job(self, ref: str) -> JobView:
        return self._model(JobView, "GET", self._job(ref))

    def migrate(
        self,
        ref: str,
        instance_type: str | None = None,
        cpu: float | None = None,
        mem: float | None = None,
        mode: str | None = None,
    ) -> JobView:
        """``mode``: plain, postcopy or auto for this move (default: the job's moveMode)."""
        body = {"instance_type": instance_type, "cpu": cpu, "mem": mem, "mode": mode}
        body = {k: v for k, v in body.items() if v is not None}
        return self._model(JobView, "POST", self._job(ref) + "/migrate", json=body)

    def modify(
        self,
        ref: str,
        migrate_policy: str | None = None,
        vm_policy: str | None = None,
        idle_timeout_s: float | None = None,
        checkpoint_interval: float | str | None = None,
    ) -> JobView:
        body = {
            "migrate_policy": migrate_policy,
            "vm_policy": vm_policy,
            "idle_timeout_s": idle_timeout_s,
            "checkpoint_interval": checkpoint_interval,
        }
        body = {k: v for k, v in body.items() if v is not None}
        return self._model(JobView, "PATCH", self._job(ref), json=body)

    def _action(self, ref: str, action: str) -> JobView:
        return self._model(JobView, "POST", f"{self._job(ref)}/{action}")

    def suspend(self, ref: str) -> JobView:
        return self._action(ref, "suspend")

    def resume(self, ref: str) -> JobView:
        return self._action(ref, "resume")

    def cancel(self, ref: str) -> JobView:
        return self._action(ref, "cancel")

    def snapshot(self, ref: str, timeout: float = 1800) -> SnapshotResult:
        """Take a snapshot of the running job now; returns once it is stored."""
        path = self._job(ref) + "/snapshots"
        return self._model(SnapshotResult, "POST", path, timeout=timeout)

    def snapshots(self, ref: str) -> list[SnapshotView]:
        """The job's snapshots, oldest first."""
        return self._models(SnapshotView, "GET", self._job(ref) + "/snapshots")

    def restore(self, ref: str, snapshot: str, timeout: float = 1800) -> JobView:
        """Roll the running job back to ``snapshot`` (on a fresh instance); returns once it
        runs from it. On failure (an error) the job runs on as it was."""
        path = self._job(ref) + "/restore"
        return self._model(JobView, "POST", path, json={"snapshot": snapshot}, timeout=timeout)

    def restart(self, ref: str) -> JobView:
        return self._action(ref, "restart")

    def delete(self, ref: str) -> None:
        """Hide a job that has ended (APIConflictError otherwise); its name is free again."""
        self._json("DELETE", self._job(ref))

    def logs(self, ref: str, stream: str = "stdout", offset: int = 0) -> dict[str, Any]:
        """``{"data", "offset", "size"}``: at most 256 KiB from ``offset``; ask again from
        the returned ``offset`` while it is below ``size``."""
        params: dict[str, Any] = {"stream": stream, "offset": offset}
        data: dict[str, Any] = self._json("GET", self._job(ref) + "/logs", params=params)
        return data

    def events(self, ref: str, since: int = 0) -> list[EventView]:
        return self._models(EventView, "GET", self._job(ref) + "/events", params={"since": since})

    def metrics(
        self,
        ref: str,
        t_from: float | None = None,
        t_to: float | None = None,
        step: float | None = None,
    ) -> dict[str, Any]:
        params = {"from": t_from, "to": t_to, "step": step}
        params = {k: v for k, v in params.items() if v is not None}
        data: dict[str, Any] = self._json("GET", self._job(ref) + "/metrics", params=params)
        return data

    # ---- templates ----------------------------------------------------------------------
    def save_template(self, ref: str, name: str) -> TemplateView:
        return self._model(TemplateView, "POST", self._job(ref) + "/template", json={"name": name})

    def templates(self) -> list[TemplateView]:
        return self._models(TemplateView, "GET", "/templates")

    def template(self, name: str) -> TemplateView:
        return self._model(TemplateView, "GET", "/templates/" + quote(name, safe=""))

    def delete_template(self, name: str) -> None:
        self._json("DELETE", "/templates/" + quote(name, safe=""))

    # ---- waiting ------------------------------------------------------------------------
    def wait(
        self,
        ref: str,
        statuses: Iterable[str],
        timeout: float = 600,
        on_change: Callable[[str, EventView | None], None] | None = None,
        *,
        fail_on: Iterable[str] | None = None,
        after_event: int | None = None,
    ) -> JobView:
        """Poll until the job reaches one of ``statuses`` (0.2 s, backing off to 2 s).

        ``on_change(status, event)`` is called for every status change, in order, from the
        job's event log (so a change between two polls is not missed). With
        ``after_event`` (an event id), only changes after that event count — use it after
        an action, whose job may still show the old status. Reaching a status of
        ``fail_on`` (default: the terminal ones not waited for) raises JobFailed.
        """
        want = set(statuses)
        bad = set(TERMINAL if fail_on is None else fail_on) - want
        deadline = time.monotonic() + timeout
        delay = 0.2
        job = self.job(ref)
        ref = job.id
        if after_event is None:
            if job.status in want:
                return job
            after_event = max((e.id for e in job.events), default=0)
            if on_change is not None:
                on_change(job.status, None)
            if job.status in bad:
                raise JobFailed(_failed(job, job.status, job.status_reason), job)
        last = after_event
        while True:
            for ev in self.events(ref, since=last):
                last = max(last, ev.id)
                if ev.type != "state" or ev.to_state is None:
                    continue
                if on_change is not None:
                    on_change(ev.to_state, ev)
                if ev.to_state in want:
                    return self.job(ref)
                if ev.to_state in bad:
                    job = self.job(ref)
                    raise JobFailed(_failed(job, ev.to_state, ev.reason), job)
            left = deadline - time.monotonic()
            if left <= 0:
                job = self.job(ref)
                raise WaitTimeout(
                    f"timed out after {timeout:g} s waiting for job {job.name} to be "
                    f"{' or '.join(sorted(want))} (it is {job.status})",
                    field="timeout",
                )
            time.sleep(min(delay, left))
            delay = min(delay * 1.5, 2.0)

    def last_event_id(self, ref: str) -> int:
        """The id of the job's newest event (0 if none): the ``after_event`` of a wait."""
        return max((e.id for e in self.events(ref)), default=0)


CHUNK = 1024 * 1024


def _file_stream(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _tar_stream(path: Path) -> Iterator[bytes]:
    """A directory as a tar, produced while it is sent (never the whole tar in memory or
    on disk): a thread writes it into a pipe this generator reads."""
    r, w = os.pipe()
    failed: list[BaseException] = []

    def write() -> None:
        try:
            with os.fdopen(w, "wb") as out, tarfile.open(fileobj=out, mode="w|") as tar:
                for p in sorted(path.rglob("*")):
                    tar.add(p, arcname=str(p.relative_to(path)), recursive=False)
        except BaseException as exc:  # reported by the reader
            failed.append(exc)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    with os.fdopen(r, "rb") as src:
        while chunk := src.read(CHUNK):
            yield chunk
    t.join()
    if failed:
        raise ValidationError(f"cannot read the layout {path}: {failed[0]}", field="path")


def _failed(job: JobView, status: str, reason: str) -> str:
    return f"job {job.name} is {status}" + (f": {reason}" if reason else "")
