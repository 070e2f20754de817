"""Typed settings. Every field can be set with an ``OUTGROW_<NAME>`` environment variable."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from outgrow.domain.jobs import check_url_prefix

# First path segments the control plane's own server uses (API, stable URLs, console).
RESERVED_PATHS = frozenset({"api", "jobs", "metrics", "static", ""})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTGROW_", extra="ignore")

    data_dir: Path = Field(
        Path("/var/lib/outgrow"),
        description="Control-plane state: database, job directories, checkpoints, instances.",
    )
    image_cache_dir: Path = Field(
        Path("/var/cache/outgrow/images"),
        description="Host-wide cache of built images (virtualenvs), keyed by content hash.",
    )
    image_upload_max_bytes: int = Field(
        16 * 1024**3,
        gt=0,
        description="Largest image archive `POST /api/v1/images/import` takes (bigger: 413).",
    )
    oci_insecure_registries: list[str] = Field(
        default_factory=list,
        description="Registries (host:port) pulled from over plain HTTP or unverified TLS, "
        'as JSON, e.g. ["127.0.0.1:5000"]. Every other registry is verified.',
    )
    criu_path: Path = Field(
        Path("/opt/outgrow/criu/sbin/criu"),
        description="CRIU binary (>= 4.2). `make setup` installs it here.",
    )
    provider: str = Field("local", description="Instance provider: 'local' (this host) or 'aws'.")
    resource_prefix: str = Field(
        "og",
        description="Prefix of every netns, link and cgroup the local provider creates "
        "(2-5 lowercase letters/digits), so leftovers can be found and removed.",
    )
    address_pool: str = Field(
        "198.18.0.0/16",
        description="IPv4 pool for local instance addresses (the first is the host bridge). "
        "Tests use 198.19.0.0/16, so they never collide with a running control plane.",
    )
    run_dir: Path = Field(
        Path("/run/outgrow"),
        description="Host-wide state of the local provider, shared by every control plane "
        "of this host: address pools per resource prefix and instance addresses with their "
        "owners (on tmpfs: it goes at reboot with the network namespaces).",
    )
    catalog_path: Path | None = Field(
        None, description="YAML instance-type catalog overriding the packaged one."
    )
    agent_port: int = Field(
        7070, description="TCP port the agent listens on at its instance address."
    )
    host_memory_reserve_gib: float = Field(
        2.0, description="Host memory kept free when placing local instances."
    )
    job_pids_max: int = Field(
        4096,
        ge=64,
        description="Most tasks (processes and threads) a job may have: a fork bomb stops "
        "there, the host and the agent stay responsive.",
    )
    job_nofile: int = Field(
        65536,
        ge=256,
        description="Open files per job process (RLIMIT_NOFILE; never above the host's).",
    )
    oom_headroom_mib: int = Field(
        64, description="Extra memory granted to an OOM-stalled job so CRIU can dump it."
    )
    host: str = Field("127.0.0.1", description="Control-plane listen address.")
    port: int = Field(8610, description="Control-plane listen port.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Control-plane log lines: human text or one JSON object per line."
    )
    log_level: str = Field("INFO", description="Control-plane log level (DEBUG, INFO, ...).")
    checkpoint_keep: int = Field(
        3,
        ge=1,
        le=100,
        description="Snapshots kept per job (periodic and manual): the oldest go beyond this.",
    )
    checkpoint_interval: float = Field(
        900.0,
        ge=0,
        description="Seconds between periodic snapshots of a Jupyter job that sets no "
        "checkpoint_interval of its own (0: off). Batch jobs are off unless they set one.",
    )
    metrics_retention_days: float = Field(
        7.0, gt=0, description="How long WaveWatcher samples are kept in the store."
    )
    admin_password: str | None = Field(
        None, description="Password of the 'admin' user created on first start (else generated)."
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default is SQLite (WAL) in the data dir. PostgreSQL: "
        "postgresql://user:password@host:5432/db (needs outgrow[postgres]).",
    )
    database_wait_s: float = Field(
        60.0,
        ge=0,
        description="How long `outgrow up` keeps retrying a database it cannot reach at "
        "start before it gives up (0: try once).",
    )
    proxy_hold_seconds: float = Field(
        120.0,
        description="How long the stable-URL proxy holds a request while its job migrates, "
        "suspends or resumes before answering 503.",
    )
    proxy_hold_max: int = Field(
        256, description="Most requests the stable-URL proxy holds per job (beyond: 503)."
    )
    local_job_storage: Literal["shared", "volume", "s3"] = Field(
        "shared",
        description="How local instances get a job's directory: 'shared' (one host "
        "directory), 'volume' (a per-job loop-device ext4 volume moved between instances "
        "like an EBS volume) or 's3' (a tar in S3, bucket OUTGROW_AWS_S3_BUCKET, needs "
        "outgrow[aws]). volume and s3 exist to exercise the cloud paths on one host.",
    )
    local_job_quota_gib: float = Field(
        10.0,
        ge=0,
        description="Disk quota of each job's directory in local 'shared' job storage: the "
        "directory is a sparse ext4 image of this size mounted on this host (0: no quota, "
        "a plain directory). What the job writes to its root counts too.",
    )
    local_volume_gib: float = Field(
        4.0,
        gt=0,
        description="Size of each job's volume in local 'volume' job storage (a sparse "
        "image file: only what is written takes space).",
    )

    jupyterhub_users: str = Field(
        "",
        description="Comma-separated outgrow user names (a JupyterHub's service account) "
        "allowed to create JupyterHub single-user servers: jobs of the "
        "jupyterhub-singleuser kind served under a hub prefix with the hub's own auth "
        "(docs/jupyterhub.md). Empty: nobody, and no hub path is served.",
    )
    jupyterhub_path: str = Field(
        "/user/",
        description="Where the hub's user servers live (c.JupyterHub.base_url + 'user/'): "
        "a hub job's prefix is this plus its user (and server) name, and the stable-URL "
        "proxy passes requests under it to those jobs only.",
    )

    @property
    def hub_users(self) -> frozenset[str]:
        return frozenset(u.strip() for u in self.jupyterhub_users.split(",") if u.strip())

    @field_validator("jupyterhub_path")
    @classmethod
    def _hub_path(cls, v: str) -> str:
        check_url_prefix(v)
        if v.split("/")[1] in RESERVED_PATHS:
            raise ValueError(f"must not be under outgrow's own /{v.split('/')[1]}/")
        return v

    @field_validator("resource_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not (2 <= len(v) <= 5 and v.isalnum() and v.islower()):
            raise ValueError("must be 2-5 lowercase letters or digits")
        return v

    @field_validator("address_pool")
    @classmethod
    def _pool(cls, v: str) -> str:
        net = ipaddress.ip_network(v, strict=True)
        if net.version != 4 or net.num_addresses < 8:
            raise ValueError("must be an IPv4 network with at least 8 addresses")
        return str(net)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
