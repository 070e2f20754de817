"""HTTP client of the agent API, used by the control plane and by peer agents."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from outgrow.domain.storage import JobStorage
from outgrow.errors import AgentError

CONNECT_TIMEOUT = 5.0  # seconds; agents are one network hop away


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
        self, method: str, path: str, *, timeout: float | None = None, **kw: Any
    ) -> dict[str, Any]:
        try:
            # A long call may wait long for its answer, never long for a connection: an
            # unreachable peer (a dropped SYN) must fail in seconds, not after 900.
            limit = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT) if timeout else None
            r = self._http.request(method, path, timeout=limit or httpx.USE_CLIENT_DEFAULT, **kw)
        except httpx.TimeoutException as exc:
            raise AgentError(f"agent at {self.url} did not answer {method} {path} in time") from exc
        except httpx.HTTPError as exc:
            raise AgentError(f"agent at {self.url} unreachable: {exc}") from exc
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"message": r.text[:300]}
            raise AgentError(
                body.get("message", f"agent error {r.status_code}"),
                detail=body.get("detail"),
                remote_code=body.get("error"),
            )
        data: dict[str, Any] = r.json()
        return data

    def health(self, timeout: float = 3.0) -> dict[str, Any]:
        return self._call("GET", "/v1/health", timeout=timeout)

    def start_job(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/job", json=body)

    def job(self) -> dict[str, Any]:
        return self._call("GET", "/v1/job")

    def stop_job(self, grace_s: float = 5.0) -> dict[str, Any]:
        return self._call("POST", "/v1/job/stop", json={"grace_s": grace_s}, timeout=grace_s + 30)

    def forget_job(self) -> dict[str, Any]:
        return self._call("DELETE", "/v1/job")

    def logs(self, stream: str = "stdout", offset: int = 0) -> dict[str, Any]:
        return self._call("GET", "/v1/job/logs", params={"stream": stream, "offset": offset})

    def reclaim_notice(self, in_s: float, source: str = "provider") -> dict[str, Any]:
        return self._call("POST", "/v1/reclaim-notice", json={"in_s": in_s, "source": source})

    def metrics(self, since: float = 0.0) -> dict[str, Any]:
        return self._call("GET", "/v1/metrics", params={"since": since})

    def checkpoint(self, timeout: float = 900, **body: Any) -> dict[str, Any]:
        return self._call("POST", "/v1/checkpoint", json=body, timeout=timeout)

    def abort(self) -> dict[str, Any]:
        return self._call("POST", "/v1/checkpoint/abort", timeout=60)

    def commit(self, keep_images: bool = False) -> dict[str, Any]:
        return self._call("POST", "/v1/checkpoint/commit", json={"keep_images": keep_images})

    def discard_images(self) -> dict[str, Any]:
        return self._call("DELETE", "/v1/checkpoint")

    def mount_storage(
        self, job_id: str, storage: JobStorage, timeout: float = 900
    ) -> dict[str, Any]:
        body = {"job_id": job_id, "storage": storage.to_dict()}
        return self._call("POST", "/v1/storage/mount", json=body, timeout=timeout)

    def release_storage(
        self, job_id: str, storage: JobStorage, timeout: float = 900
    ) -> dict[str, Any]:
        body = {"job_id": job_id, "storage": storage.to_dict()}
        return self._call("POST", "/v1/storage/release", json=body, timeout=timeout)

    def prepare_receive(self, page_server: bool = True) -> dict[str, Any]:
        return self._call("POST", "/v1/receive", json={"page_server": page_server})

    def drop_receive(self, rid: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/receive/{rid}")

    def upload(self, rid: str, path: Path) -> dict[str, Any]:
        def chunks() -> Any:
            with path.open("rb") as f:
                while data := f.read(1 << 20):
                    yield data

        return self._call(
            "PUT", f"/v1/receive/{rid}/files/{path.name}", content=chunks(), timeout=900
        )

    def restore(self, timeout: float = 900, **body: Any) -> dict[str, Any]:
        return self._call("POST", "/v1/restore", json=body, timeout=timeout)
