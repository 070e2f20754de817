"""Jobs as users see them: the submitted spec and the read views of the control plane.

These pydantic models are the contract between layers: the store returns them, the
control-plane service takes and returns them, the API serialises them, the SDK parses
them. No ORM rows or HTTP objects cross a layer.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from outgrow.domain.policy import (
    MigratePolicy,
    VmPolicy,
    format_migrate_policy,
    format_vm_policy,
    parse_cpu_range,
    parse_mem_range,
    parse_migrate_policy,
    parse_vm_policy,
)
from outgrow.domain.snapshots import parse_interval
from outgrow.errors import ValidationError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def check_name(value: str, what: str = "name") -> str:
    if not NAME_RE.match(value):
        raise ValueError(
            f"{what} must be 1-63 letters, digits, '_', '.', '-' and start with a letter or digit"
        )
    return value


# One path segment as it appears in a URL (RFC 3986 pchar, percent-encoded as JupyterHub
# escapes user and server names).
_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%-]+")


def check_url_prefix(value: str) -> str:
    """A URL path prefix such as ``/user/ann%40x/``: starts and ends with ``/``, one or more
    segments of URL path characters, no ``.``/``..`` segment, at most 255 characters."""
    segments = value[1:-1].split("/")
    if (
        len(value) > 255
        or not value.startswith("/")
        or not value.endswith("/")
        or value == "/"
        or not all(
            _SEGMENT.fullmatch(s) and s.lower().replace("%2e", ".") not in (".", "..")
            for s in segments
        )
    ):
        raise ValueError(f"{value!r} is not a URL path prefix like /user/<name>/")
    return value


class JobSpec(BaseModel):
    """What a user submits (CLI flags, YAML job file, console form, template content).

    Policies are kept as their canonical bracket strings (the seed's syntax) so a spec
    round-trips through templates, YAML and the command line unchanged.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    image: str
    script: str = ""
    cpu: str = "1"  # "-c 2" or "-c 2:8" (vCPUs)
    mem: str = "1"  # "-m 4" or "-m 4:64" (GiB)
    instance_type: str | None = None  # overrides cpu/mem when set
    migrate_policy: str = "[]"  # "[mem.upperBoundRatio=90,evadeOOM=true]"
    vm_policy: str = "[]"  # "[spotFirst=true,retryLimit=3,retryInterval=600s]"
    env: dict[str, str] = Field(default_factory=dict)
    publish: list[str] = Field(default_factory=list)  # "8888:8888" (HOSTPORT:JOBPORT)
    allow_cidr: list[str] = Field(default_factory=list)
    idle_timeout_s: float | None = None  # Jupyter auto-suspend; None = image default
    # OCI images: run the image's own Jupyter ("lab", "server") with outgrow's token and
    # base URL; None runs the script, else the image's Entrypoint/Cmd.
    jupyter: Literal["lab", "server"] | None = None
    # A JupyterHub user's server: the hub's service prefix (/user/<name>/) the job is served
    # under, with the hub's auth (docs/jupyterhub.md). Only for the jupyterhub-singleuser
    # kind, from accounts in OUTGROW_JUPYTERHUB_USERS (controlplane/hub.py checks both).
    hub_prefix: str | None = None
    # Periodic snapshots while Executing, in seconds (0: off; None: the default for the
    # kind: OUTGROW_CHECKPOINT_INTERVAL for Jupyter jobs, off for batch). "15m", "off"
    # are taken too (domain/snapshots.py).
    checkpoint_interval: float | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, v: str) -> str:
        parse_cpu_range(v)
        return str(v)

    @field_validator("mem")
    @classmethod
    def _mem(cls, v: str) -> str:
        parse_mem_range(v)
        return str(v)

    @field_validator("migrate_policy")
    @classmethod
    def _mp(cls, v: str) -> str:
        return format_migrate_policy(parse_migrate_policy(v))

    @field_validator("vm_policy")
    @classmethod
    def _vp(cls, v: str) -> str:
        return format_vm_policy(parse_vm_policy(v))

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                raise ValueError(f"invalid environment variable name {k!r}")
        return v

    @field_validator("publish")
    @classmethod
    def _publish(cls, v: list[str]) -> list[str]:
        for item in v:
            m = re.match(r"^(\d{1,5}):(\d{1,5})$", item)
            if not m or not all(1 <= int(p) <= 65535 for p in m.groups()):
                raise ValueError(f"publish {item!r} must be HOSTPORT:JOBPORT (1-65535)")
        return v

    @field_validator("allow_cidr")
    @classmethod
    def _cidr(cls, v: list[str]) -> list[str]:
        out = []
        for item in v:
            try:
                out.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError as exc:
                raise ValueError(f"allow_cidr {item!r} is not a CIDR range") from exc
        return out

    @field_validator("idle_timeout_s")
    @classmethod
    def _idle(cls, v: float | None) -> float | None:
        if v is not None and v < 0:
            raise ValueError("idle_timeout_s must be >= 0 (0 disables auto-suspend)")
        return v

    @field_validator("checkpoint_interval", mode="before")
    @classmethod
    def _checkpoint_interval(cls, v: object) -> float | None:
        if v is None or isinstance(v, str | int | float):
            try:
                return parse_interval(v)
            except ValidationError as exc:
                raise ValueError(exc.message.removeprefix("checkpoint_interval: ")) from exc
        raise ValueError("checkpoint_interval must be a duration (15m, 900) or off")

    @field_validator("hub_prefix")
    @classmethod
    def _hub_prefix(cls, v: str | None) -> str | None:
        if v is not None:
            check_url_prefix(v)
        return v

    @model_validator(mode="after")
    def _ranges(self) -> JobSpec:
        cpu, mem = parse_cpu_range(self.cpu), parse_mem_range(self.mem)
        if cpu.min <= 0 or mem.min <= 0:
            raise ValueError("cpu and mem must be > 0")
        return self

    def migrate(self) -> MigratePolicy:
        return parse_migrate_policy(self.migrate_policy)

    def vm(self) -> VmPolicy:
        return parse_vm_policy(self.vm_policy)


def spec_from_mapping(data: dict[str, Any]) -> JobSpec:
    """Build a JobSpec from a YAML/JSON mapping, accepting the seed's spellings too
    (``migratePolicy``/``vmPolicy``/``instanceType``, policies as mappings)."""
    aliases = {
        "migratePolicy": "migrate_policy",
        "vmPolicy": "vm_policy",
        "instanceType": "instance_type",
        "allowCidr": "allow_cidr",
        "idleTimeout": "idle_timeout_s",
        "hubPrefix": "hub_prefix",
        "checkpointInterval": "checkpoint_interval",
    }
    d = {aliases.get(k, k): v for k, v in data.items()}
    if isinstance(d.get("migrate_policy"), dict):
        d["migrate_policy"] = format_migrate_policy(MigratePolicy.from_mapping(d["migrate_policy"]))
    if isinstance(d.get("vm_policy"), dict):
        d["vm_policy"] = format_vm_policy(VmPolicy.from_mapping(d["vm_policy"]))
    for k in ("cpu", "mem"):
        if isinstance(d.get(k), int | float):
            d[k] = f"{d[k]:g}"
    try:
        return JobSpec(**d)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        message, loc = first_error_field(exc)
        raise ValidationError(message, field=loc or None) from exc


def first_error_field(exc: Exception) -> tuple[str, str]:
    """The first validation error as ("field: message", "field")."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        errs = errors()
        if errs:
            e = errs[0]
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "__root__")
            msg = str(e.get("msg", "")).removeprefix("Value error, ")
            return (f"{loc}: {msg}" if loc else msg), loc
    return str(exc), ""


def first_error(exc: Exception) -> str:
    return first_error_field(exc)[0]


class InstanceView(BaseModel):
    id: str
    type: str
    vcpus: float
    memory_gib: float
    spot: bool
    address: str | None
    price_per_hour: float
    started_at: datetime
    ended_at: datetime | None = None
    status: Literal["starting", "normal", "migrated-from", "reclaimed", "released", "failed"]
    cost_usd: float = 0.0


class EventView(BaseModel):
    id: int
    type: str  # "state" | "migration" | "policy" | "info" | "error"
    time: datetime
    reason: str
    from_state: str | None = None
    to_state: str | None = None
    from_type: str | None = None  # migrations
    to_type: str | None = None
    downtime_s: float | None = None
    checkpoint_bytes: int | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class JobView(BaseModel):
    id: str
    name: str
    owner: str
    status: str  # a JobState value
    status_reason: str = ""
    image: str
    spec: JobSpec
    run: int  # 1 for the first run; restart adds one
    instance: InstanceView | None = None
    instances: list[InstanceView] = Field(default_factory=list)
    url: str | None = None  # stable URL (Jupyter kinds)
    cost_usd: float = 0.0
    submitted_at: datetime
    updated_at: datetime
    exit_code: int | None = None
    events: list[EventView] = Field(default_factory=list)
    # The user actions legal now (domain.states.ACTIONS: "migrate", "modify", "suspend",
    # "resume", "cancel", "restart", "open"), so clients need not mirror the state machine.
    actions: list[str] = Field(default_factory=list)
    security_group: list[dict[str, Any]] = []  # inbound rules, in order (domain/security.py)
    # Seconds between periodic snapshots that apply to the job (its own, or the default
    # for its kind); 0: off.
    checkpoint_interval_s: float = 0.0


class UserView(BaseModel):
    id: int
    name: str
    is_admin: bool
    created_at: datetime


class TokenView(BaseModel):
    id: int
    name: str
    prefix: str  # first characters, to recognise a token
    created_at: datetime
    last_used_at: datetime | None = None
    revoked: bool = False


class TemplateView(BaseModel):
    id: int
    name: str
    owner: str
    spec: JobSpec
    created_at: datetime


class ImageView(BaseModel):
    name: str
    kind: str
    pip: list[str]
    description: str = ""
    docs: str = ""
    default_port: int | None = None
    builtin: bool = False
    base: str | None = None
    owner: str | None = None
    # OCI images (format "oci"): what the host cache knows of them (domain/oci.py)
    format: Literal["venv", "oci"] = "venv"
    oci: dict[str, str] | None = None  # {"digest", "reference"}
    size_bytes: int | None = None
    config: dict[str, Any] | None = None  # OciConfig.to_dict(): entrypoint, cmd, env, ...
    labels: dict[str, str] = Field(default_factory=dict)
    facts: dict[str, Any] | None = None  # RootfsFacts.to_dict(), once unpacked somewhere
    jupyter: list[str] = Field(default_factory=list)  # the --jupyter modes it can serve
    cached: list[str] = Field(default_factory=list)  # where it is cached, for people

    @property
    def digest(self) -> str | None:
        return self.oci["digest"] if self.oci else None


class MetricPoint(BaseModel):
    t: float
    instance_id: str
    mem_used_bytes: int
    mem_cache_bytes: int
    mem_swap_bytes: int
    mem_limit_bytes: int | None
    cpu_used_vcpus: float
    cpu_quota_vcpus: float | None
