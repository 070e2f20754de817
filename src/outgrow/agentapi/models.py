"""The agent API's bodies and answers (``/v1``), shared by the agent's server and its client.

One definition for both ends: the server declares them as request bodies and response
models, the client parses every answer into them, so a field renamed on one side fails at
once on the other (and mypy sees every use). Pure data: no I/O.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from outgrow.domain.images import ImageKind, ImageSpec
from outgrow.domain.storage import JobStorage, StorageKind, is_object_url

S3_URL = r"^s3://[^/]+/.+"
JOB_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$"


class AgentPhase(StrEnum):
    """Where the job of an instance is, as its agent sees it."""

    NONE = "none"  # no job on this instance
    PREPARING = "preparing"  # building or fetching the image
    STARTING = "starting"  # the tree runs; a Jupyter server does not answer yet
    RUNNING = "running"
    CHECKPOINTED = "checkpointed"  # dumped and frozen: commit() ends it, abort() resumes it
    EXITED = "exited"  # the job's process ended with code 0
    FAILED = "failed"  # it failed to start, exited non-zero or was killed
    STOPPED = "stopped"  # stopped on request, or moved away (commit)

    @property
    def live(self) -> bool:
        """The instance holds the job (it may not take another)."""
        return self in LIVE_PHASES

    @property
    def ended(self) -> bool:
        return self in ENDED_PHASES


LIVE_PHASES = frozenset(
    {AgentPhase.PREPARING, AgentPhase.STARTING, AgentPhase.RUNNING, AgentPhase.CHECKPOINTED}
)
ENDED_PHASES = frozenset({AgentPhase.EXITED, AgentPhase.FAILED, AgentPhase.STOPPED})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Health(_Model):
    status: str = "ok"
    instance_id: str
    address: str
    job_id: str | None = None
    cgroup_version: int
    version: str = ""
    # What this agent accepts beyond the previous release's API (an older peer says
    # nothing: callers fall back), e.g. "bundle" (bundle.py).
    features: list[str] = Field(default_factory=list)


class ImageBody(_Model):
    """An image spec on the wire (domain.images.ImageSpec.to_dict())."""

    name: str
    kind: ImageKind
    pip: list[str] = Field(default_factory=list)
    description: str = ""
    docs: str = ""
    default_port: int | None = None
    oci: dict[str, str] | None = None  # an OCI image: {"digest", "reference"} (agent/oci.py)

    @classmethod
    def of(cls, spec: ImageSpec) -> ImageBody:
        return cls.model_validate(spec.to_dict())

    def spec(self) -> ImageSpec:
        return ImageSpec.from_dict(self.model_dump())


class StartJob(_Model):
    job_id: str = Field(pattern=JOB_ID)
    kind: ImageKind
    image: ImageBody
    script: str = ""
    env: dict[str, str] = Field(default_factory=dict)
    port: int = Field(8888, ge=1, le=65535)
    jupyter_token: str = ""
    base_url: str = "/"
    evade_oom: bool = True


class JobStatus(_Model):
    phase: AgentPhase
    job_id: str | None = None
    message: str = ""
    exit_code: int | None = None
    kind: str | None = None
    pid: int | None = None
    started_at: float | None = None
    oom_stalled: bool = False
    reclaim_at: float | None = None
    reclaim_source: str = ""
    restored: bool = False
    # A storage move kept the images of the ended tree (orchestrator.migrate): the job can
    # be restored here if the move was cut (control plane restart).
    kept_checkpoint: bool = False
    image_progress: list[str] = Field(default_factory=list)
    image_progress_total: int = 0
    # What the job's root is made of: a move's target prepares it before the freeze.
    image: ImageBody | None = None


class MoveNote(_Model):
    """A move of the job as its user is told (the job's status file, docs/jupyterlab.md)."""

    at: float  # when it ended (epoch seconds); it tells one move from the next
    reason: str = Field("", max_length=500)
    from_type: str = Field("", max_length=100)
    to_type: str = Field("", max_length=100)
    downtime_s: float | None = None
    to_mem_bytes: int | None = None  # the new instance type's memory


class JobNote(_Model):
    """What the control plane tells the job of where it runs: its instance type and the
    last move. The agent keeps it with the job and writes it, with the cgroup's memory
    limit and use, into the job's status file (docs/jupyterlab.md)."""

    job_id: str = Field(pattern=JOB_ID)
    instance_type: str = Field("", max_length=100)
    last_move: MoveNote | None = None


class StopJob(_Model):
    grace_s: float = Field(5.0, ge=0, le=300)


class LogChunk(_Model):
    data: str
    offset: int
    size: int


class MetricsSample(_Model):
    t: float
    mem_used_bytes: int
    mem_rss_bytes: int
    mem_cache_bytes: int
    mem_swap_bytes: int
    mem_limit_bytes: int | None
    cpu_used_vcpus: float
    cpu_quota_vcpus: float | None
    cpu_throttled_ns: int
    mem_pressure_some_avg10: float | None = None
    mem_pressure_full_avg10: float | None = None
    oom_stalled: bool = False
    oom_kills: int = 0


class Metrics(_Model):
    samples: list[MetricsSample]
    now: MetricsSample | None = None


class ReclaimNotice(_Model):
    in_s: float = Field(30.0, ge=0, le=3600)
    source: str = Field("provider", max_length=40)


class ReclaimAnswer(_Model):
    reclaim_at: float | None


class CheckpointRequest(_Model):
    """Where the checkpoint goes: straight to a target agent (``target_url`` with its
    token and receive, pages to its page server when ``page_server_port``), into a
    directory on this host (``dest_dir``) or into object storage (``dest_url``)."""

    target_url: str | None = None
    target_token: str | None = None
    receive_id: str | None = None
    page_server_port: int | None = None
    dest_dir: str | None = None
    dest_url: str | None = Field(None, pattern=S3_URL)
    # Post-copy: the images go to the target's receive without the memory pages; this
    # agent's CRIU serves those from the stopped tree until the target has them all.
    lazy: bool = False

    @classmethod
    def into(cls, location: str) -> CheckpointRequest:
        """A checkpoint kept at ``location``: an object URL, or a directory."""
        if is_object_url(location):
            return cls(dest_url=location)
        return cls(dest_dir=location)


class CheckpointResult(_Model):
    freeze_s: float
    dump_s: float
    transfer_s: float
    local_bytes: int
    rss_bytes: int
    mem_used_bytes: int
    total_s: float
    images_dir: str
    mode: str = "plain"  # "postcopy": the pages are served from lazy_address:lazy_port
    lazy_address: str | None = None
    lazy_port: int | None = None


class CommitRequest(_Model):
    keep_images: bool = False


class ReceiveRequest(_Model):
    page_server: bool = True
    # The moving job's image: built, fetched or unpacked here before the ticket is given,
    # so never inside the downtime (the source is not frozen yet).
    image: ImageBody | None = None


class ReceiveTicket(_Model):
    receive_id: str
    page_server_port: int | None = None


class Uploaded(_Model):
    name: str
    bytes: int


class UploadedBundle(_Model):
    files: int
    bytes: int


class RestoreRequest(_Model):
    """Restore from a receive (a migration), a directory (a suspend on this host), an
    s3:// URL (a suspend on a cloud) or this instance's own kept checkpoint."""

    receive_id: str | None = None
    source_dir: str | None = None
    source_url: str | None = Field(None, pattern=S3_URL)
    local_checkpoint: bool = False
    # Post-copy: the memory pages come from the source's CRIU at this address and port.
    lazy_address: str | None = None
    lazy_port: int | None = Field(None, ge=1, le=65535)

    @classmethod
    def out_of(cls, location: str) -> RestoreRequest:
        """A restore of the checkpoint kept at ``location`` (see CheckpointRequest.into)."""
        if is_object_url(location):
            return cls(source_url=location)
        return cls(source_dir=location)


class RestoreResult(_Model):
    restore_s: float
    images_bytes: int
    healthy_s: float
    pid: int
    lazy: bool = False  # post-copy: the pages are still arriving (drain)


class DrainResult(_Model):
    """The end of a post-copy restore's page transfer. ``ok`` false: the transfer broke,
    the restored job missed pages and was killed (the job is lost)."""

    ok: bool
    drain_s: float  # from the end of the restore to the last page
    pages: int  # pages copied in by the lazy-pages daemon
    message: str = ""


class StorageBody(_Model):
    kind: StorageKind = StorageKind.SHARED
    device: str = ""
    url: str = ""

    @classmethod
    def of(cls, storage: JobStorage) -> StorageBody:
        return cls(kind=storage.kind, device=storage.device, url=storage.url)

    def storage(self) -> JobStorage:
        return JobStorage(self.kind, self.device, self.url)


class StorageRequest(_Model):
    job_id: str = Field(pattern=JOB_ID)
    storage: StorageBody


class StorageResult(_Model):
    kind: StorageKind
    seconds: float
    bytes: int = 0
    formatted: bool = False


class Ok(_Model):
    ok: bool = True


class ErrorBody(_Model):
    """Every 4xx/5xx answer: ``error`` is the OutgrowError code the client raises again."""

    error: str
    message: str
    field: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)
