"""Settings of the aws provider: ``OUTGROW_AWS_*`` environment variables.

Enable the provider with ``OUTGROW_PROVIDER=aws``; see ``docs/aws.md`` for what each
setting means for the account (VPC, subnet, IAM) and the costs.
"""

from __future__ import annotations

import ipaddress
import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from outgrow.transfer.s3 import S3Connection

# Debian's own public SSM parameter for its latest bookworm (12) AMI.
DEFAULT_AMI_SSM_PARAMETER = "/aws/service/debian/release/bookworm/latest/amd64"
_CLUSTER = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
MIN_VOLUME_GIB = {"gp3": 1, "gp2": 1, "io2": 4, "st1": 125}  # EBS's smallest size per type


def _split(v: object) -> object:
    """``"r5*, m*"`` or ``["r5*", "m*"]`` → a list (env vars are comma-separated)."""
    if isinstance(v, str):
        return [p.strip() for p in v.split(",") if p.strip()]
    return v


class AwsSettings(S3Connection):
    model_config = SettingsConfigDict(env_prefix="OUTGROW_AWS_", extra="ignore")

    subnet_id: str | None = Field(
        None, description="Subnet every instance is launched in (required to create instances)."
    )
    vpc_id: str | None = Field(
        None, description="VPC of the security groups (default: the subnet's VPC)."
    )
    ami_id: str | None = Field(None, description="AMI of the instances (wins over the parameter).")
    ami_ssm_parameter: str = Field(
        DEFAULT_AMI_SSM_PARAMETER,
        description="SSM parameter holding the AMI id when ami_id is not set.",
    )
    architecture: Literal["x86_64", "arm64"] = Field(
        "x86_64", description="CPU architecture of the AMI; only such instance types are used."
    )
    key_name: str | None = Field(None, description="EC2 key pair for SSH (optional).")
    instance_profile: str | None = Field(
        None, description="IAM instance profile name or ARN given to every instance (optional)."
    )
    associate_public_ip: bool = Field(
        False, description="Give instances a public IPv4 address (else private only)."
    )
    agent_address: Literal["private", "public"] = Field(
        "private",
        description="Which instance address the control plane uses to reach agents.",
    )
    s3_bucket: str | None = Field(
        None,
        description="Bucket for suspend checkpoints, job directories (job_storage=s3), the "
        "transfer fallback and wheels; given to the agents (instance-profile credentials).",
    )
    s3_prefix: str = Field("outgrow", description="Key prefix of everything outgrow writes.")
    transfer_expire_days: int = Field(
        1, ge=1, description="Lifecycle expiry of transfer (fallback) checkpoints in S3."
    )
    cluster: str = Field(
        "outgrow",
        description="Value of the outgrow:cluster tag: one control plane's instances, "
        "found again by it after a restart.",
    )
    allow_types: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Instance-type patterns to offer, e.g. 'r5*,m6i.*' (empty: all priced).",
    )
    deny_types: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Instance-type patterns never to offer, e.g. 't3.*'."
    )
    price_table: Path | None = Field(
        None, description="YAML on-demand price table overriding the packaged one."
    )
    agent_package: str | None = Field(
        None,
        description="Pinned pip requirement (outgrow==X.Y.Z) installed on instances from "
        "the package index when no wheel URL is set; one of the two is required.",
    )
    agent_wheel_url: str | None = Field(
        None, description="outgrow wheel for instances: s3://bucket/key.whl or https://….whl."
    )
    agent_wheel_sha256: str | None = Field(
        None, description="sha256 of that wheel; checked on the instance before installing."
    )
    agent_port: int = Field(7070, ge=1, le=65535, description="TCP port of the agent.")
    control_plane_cidr: str | None = Field(
        None,
        description="Where the control plane reaches agents and job ports from "
        "(default: the VPC's CIDR, i.e. a control plane inside the VPC).",
    )
    agent_health_timeout_s: float = Field(
        900.0,
        gt=0,
        description="How long create_instance waits for the new agent (boot, packages, "
        "CRIU build) before it terminates the instance and fails.",
    )
    root_volume_gib: int = Field(30, ge=8, description="Size of the root EBS volume (gp3).")
    memory_reserve_mib: int = Field(
        768, ge=0, description="Memory kept outside the job's cgroup (agent, system)."
    )
    presign_expiry_s: int = Field(
        6 * 3600, ge=300, description="Validity of the presigned wheel URL in the user-data."
    )
    spot_max_price: str | None = Field(
        None, description="Highest spot price (USD/h) to pay; default: the on-demand price."
    )
    job_storage: Literal["ebs", "s3"] = Field(
        "ebs",
        description="Where a job's directory lives while the job moves: 'ebs', its own EBS "
        "volume detached from the source and attached to the target (same AZ: every "
        "instance is in the one subnet); 's3', a tar in S3_BUCKET (any AZ).",
    )
    job_volume_gib: int = Field(
        20,
        ge=1,
        le=16384,
        description="Size of a job's EBS volume (job_storage=ebs), created on first use.",
    )
    job_volume_type: Literal["gp3", "gp2", "io2", "st1"] = Field(
        "gp3",
        description="EBS type of a job's volume (io2: 3000 IOPS at most 500/GiB; "
        "st1 needs at least 125 GiB, io2 at least 4).",
    )

    @field_validator("allow_types", "deny_types", mode="before")
    @classmethod
    def _patterns(cls, v: object) -> object:
        return _split(v)

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, v: str) -> str:
        if not _CLUSTER.match(v):
            raise ValueError("must be 1-32 lowercase letters, digits or '-'")
        return v

    @field_validator("control_plane_cidr")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        return None if v is None else str(ipaddress.ip_network(v.strip(), strict=False))

    @field_validator("agent_wheel_sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", v):
            raise ValueError("must be 64 hex digits")
        return v.lower() if v else v

    @model_validator(mode="after")
    def _wheel(self) -> AwsSettings:
        url = self.agent_wheel_url
        if url is not None:
            if not (url.startswith(("s3://", "https://"))) or not url.endswith(".whl"):
                raise ValueError("agent_wheel_url must be s3://… or https://… ending in .whl")
            if url.startswith("s3://") and "/" not in url[5:]:
                raise ValueError("agent_wheel_url s3://BUCKET/KEY.whl needs a key")
        return self

    @model_validator(mode="after")
    def _job_volume(self) -> AwsSettings:
        least = MIN_VOLUME_GIB[self.job_volume_type]
        if self.job_volume_gib < least:
            raise ValueError(
                f"job_volume_gib must be at least {least} for job_volume_type "
                f"{self.job_volume_type}"
            )
        return self

    def type_allowed(self, name: str) -> bool:
        """Allow/deny with shell wildcards (``r5*``, ``m*``, ``c5.?large``); deny wins."""
        if any(fnmatchcase(name, p) for p in self.deny_types):
            return False
        return not self.allow_types or any(fnmatchcase(name, p) for p in self.allow_types)
